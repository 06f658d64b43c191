"""Shared fixtures: the committed tiny base, and tiny models of other architectures built from configs."""
import os

import pytest
import torch

os.environ.setdefault("PEFTLAB_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_base():
    from peftlab import load_base

    return load_base("tiny")


@pytest.fixture
def fresh_base():
    from peftlab import load_base

    return load_base("tiny")
