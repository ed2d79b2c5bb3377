"""Fixtures of the videoqa tests (helpers live in videoqa_helpers.py)."""

import pytest
from videoqa_helpers import word_tokenizer


@pytest.fixture
def tokenizer():
    return word_tokenizer()
