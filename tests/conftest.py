"""Shared test setup: GPU-marked tests skip without CUDA; a seeded generator fixture; the
process's torch thread count restored after every test."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    """A fixed-seed CPU torch.Generator, so each test draws the same data every run."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _restore_threads():
    """`gcl-train --threads N` (and the benchmarks' --threads) call torch.set_num_threads for the
    whole process; put the count back after each test so one test's option does not slow the next."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
