"""A tiny synthetic world shared by the pretraining tests (written once per session)."""

import pytest

from streamformer.synthetic import WorldConfig, generate_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return generate_world(root, num_train=24, num_val=12, seed=0, config=WorldConfig(num_frames=24), progress=False)
