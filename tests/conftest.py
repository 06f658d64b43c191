"""Shared set-up: quick runs, a private cache, one torch thread per xdist worker; the tiny base as fixtures.

The suite runs in two pytest-xdist workers (``-n 2 --dist loadfile`` in pyproject.toml): each test
file runs on one worker, so the nbgrader pipeline grades each assignment once and the lectures run
one at a time, beside the other files' tests.
"""
import os
import tempfile

import pytest

os.environ.setdefault("PEFTLAB_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Task adapters that tests train (AdapterFusion) go to a cache of this process, not the course's results/.
os.environ.setdefault("PEFTLAB_CACHE", tempfile.mkdtemp(prefix="peftlab-test-cache-"))
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:  # workers share the cores: one thread each, and so for the notebook kernels they start
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS)

torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))


@pytest.fixture(scope="session")
def tiny_base():
    from peftlab import load_base

    return load_base("tiny")


@pytest.fixture
def fresh_base():
    from peftlab import load_base

    return load_base("tiny")
