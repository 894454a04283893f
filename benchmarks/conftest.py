import pytest
import torch

from pyganx.bench.timing import keep_freed_memory


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session", autouse=True)
def _steady_state_allocator():
    # As `pyganx bench`: time the kernels, not the OS's page faults on fresh memory.
    keep_freed_memory()
