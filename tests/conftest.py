import os

import pytest
import torch

# Tests must be reproducible and fast on a 2-core CI machine.
torch.set_default_dtype(torch.float32)

from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _seed_torch_per_test():
    """Seed torch's global generator before every test: gradcheck's random grad_outputs and any unseeded draw
    must not depend on which tests an xdist worker happened to run first."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Put torch's thread count back after every test. It is process-wide: a test that sets it (to reproduce a
    committed one-thread result) would otherwise change the speed and summation order of every later test on
    the same worker. A module-scoped fixture runs before this one, so it must restore the count itself."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def gen():
    """A seeded CPU generator (each test gets a fresh one)."""
    return torch.Generator().manual_seed(1234)
