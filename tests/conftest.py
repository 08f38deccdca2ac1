"""Shared test setup: GPU-marked tests skip without CUDA; a seeded generator fixture."""
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
