"""Fixtures shared by the OVIS tests."""

import pytest

from streamformer.synthetic import WorldConfig, generate_world
from streamformer.testing import tiny_model


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """A 64 px world (6 training, 3 held-out 16-frame videos) and a random 4-layer tiny backbone."""
    root = tmp_path_factory.mktemp("ovis")
    generate_world(root / "world", num_train=6, num_val=3, seed=0, config=WorldConfig(num_frames=16), progress=False)
    tiny_model(image_size=64, patch_size=8, num_hidden_layers=4, num_frames=8, lora_rank=4).save_pretrained(root / "backbone")
    return root
