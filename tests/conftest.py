"""Shared set-up: quick runs, a private cache, one torch thread per xdist worker; the tiny base as fixtures.

The suite runs in two pytest-xdist workers (``-n 2`` in pyproject.toml), scheduled by ``xdist_group``
below. Each test file is one group, so its module fixtures are built once, on one worker; the two slow
files are split finer (``SPLIT_BY``): the nbgrader pipeline by assignment (each assignment is graded once,
on one worker, and its checks run there) and the lectures one per group. The slow tests are queued
first, so the fast files fill the end of the run on whichever worker is free.
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


SPLIT_BY = {"tests/test_nbgrader.py": "test_", "tests/test_notebooks.py": "test_lecture_runs["}  # file -> tests split
SLOW_MARKS = ("nbgrader", "notebook")


def xdist_group(nodeid: str) -> str:
    """The group a test runs in: its file, or for a test of ``SPLIT_BY`` its file and its parameter, e.g.
    ``tests/test_nbgrader.py[a05]`` (every test of assignment a05, which grades it once) or one lecture."""
    path, _, name = nodeid.partition("::")
    if name.startswith(SPLIT_BY.get(path, "\0")) and name.endswith("]") and "[" in name:
        return f"{path}[{name[name.index('[') + 1:-1]}]"
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Slow tests first (stable otherwise), so the slow groups start at once and fast files fill the end."""
    items.sort(key=lambda item: not any(item.get_closest_marker(mark) for mark in SLOW_MARKS))


def pytest_xdist_make_scheduler(config, log):
    """Schedule by ``xdist_group``: a group's tests run on one worker, in order (pytest-xdist's own
    ``--dist loadgroup`` relies on a pytest internal that pytest 9 renamed, so it would group nothing)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return ByGroup(config, log)


@pytest.fixture(scope="session")
def tiny_base():
    from peftlab import load_base

    return load_base("tiny")


@pytest.fixture
def fresh_base():
    from peftlab import load_base

    return load_base("tiny")


# ---------------------------------------------------------------------------- tiny models from configs

def _tiny_vocab() -> int:
    import json

    from peftlab.models import BASE_DIR

    return json.loads((BASE_DIR / "config.json").read_text())["vocab_size"]


def tiny_llama(vocab_size: int | None = None, seed: int | None = None, **overrides):
    """A freshly initialised 2-layer Llama (grouped-query attention, biases on, tied head), no download. The
    default vocabulary is the tiny base's, so the course's tokenizer and tasks feed it; ``seed`` (if given)
    seeds the initialisation, ``overrides`` are LlamaConfig fields. Every test file builds its models here."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    options = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=vocab_size or _tiny_vocab(), max_position_embeddings=256,
                   attention_bias=True, mlp_bias=True, tie_word_embeddings=True)
    options.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**options))


def tiny_gpt2(vocab_size: int | None = None, seed: int | None = None, **overrides):
    """A freshly initialised 2-layer GPT-2 (``Conv1D`` layers, dropout off), no download."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if seed is not None:
        torch.manual_seed(seed)
    options = dict(vocab_size=vocab_size or _tiny_vocab(), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                   bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    options.update(overrides)
    return GPT2LMHeadModel(GPT2Config(**options))


def tiny_bert(vocab_size: int = 100, masked_lm: bool = True, **overrides):
    """A freshly initialised 2-layer BERT (an encoder: LoRA and adapters also apply to it), no download."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    options = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=64)
    options.update(overrides)
    return (BertForMaskedLM if masked_lm else BertModel)(BertConfig(**options))
