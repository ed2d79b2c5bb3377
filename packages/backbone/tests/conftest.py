"""Fixtures of the backbone tests (helpers live in backbone_helpers.py)."""

import pytest
import torch


@pytest.fixture
def video_tensor():
    return torch.randn(2, 7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
