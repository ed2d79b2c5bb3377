"""Shared fixtures of the OAD tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    # Tiny tensors: intra-op threads cost more than they save, and thrash on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
