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
