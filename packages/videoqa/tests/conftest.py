"""Fixtures of the videoqa tests (helpers live in videoqa_helpers.py)."""

import pytest
from videoqa_helpers import word_tokenizer

from streamformer.synthetic import WorldConfig, generate_world


@pytest.fixture
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A small synthetic world (3 s videos): 8 training and 12 held-out videos."""
    root = tmp_path_factory.mktemp("world")
    generate_world(root, num_train=8, num_val=12, seed=0, config=WorldConfig(num_frames=24), progress=False)
    return root
