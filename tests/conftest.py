"""Shared set-up: quick runs, a private cache, one torch thread per xdist worker; the test tiers and the order
the two workers run them in; the tiny base as fixtures.

Tiers: a test marked ``nbgrader``, ``notebook`` or ``slow``, or listed in ``HEAVY``, is slow; every other test is
marked ``fast`` here, so ``python -m pytest -m fast`` runs the package and contract tests (CONTRIBUTING.md,
"The test tiers").

Order: the suite runs in two pytest-xdist workers with ``--dist worksteal`` (pyproject.toml), which hands
each worker one contiguous share of the collected tests and lets an idle worker steal the tail of the
other's. So the tests are ordered as one lane per worker (``lanes``): the slow groups (``xdist_group``:
one nbgrader assignment, whose tests share one grading run; one lecture; or a file with slow tests) spread over the
lanes by their estimated cost and at the head of each lane, then the fast files, each kept contiguous,
filling every lane to its share. Steals take fast tests from a lane's tail, so a slow group stays on one
worker and each assignment is graded once, unless the estimates below are off by more than a lane's fast
tests take. (xdist's ``--dist loadgroup`` would group nothing under pytest 9:
it marks a group by rewriting ``item._nodeid``, which pytest 9 no longer reads.)
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
SLOW_MARKS = ("nbgrader", "notebook", "slow")
# Tests that take minutes of CPU though no marker says so (measured 2026-12-07): outside the fast tier, and
# scheduled as slow. nodeid prefix -> why.
HEAVY = {
    "tests/test_smollm2.py": "loads the real 135M model (SmolLM2)",
    "tests/test_cli.py::test_compare_writes_table_json_and_plot": "runs compare on every registered method",
    "tests/test_colab_cells.py::test_setup_cell_installs": "pip-installs peftlab into a fresh environment",
    "tests/test_method_contract.py::test_compare_runs_the_method_from_its_record": "compare's run of every method",
    "tests/test_method_contract.py::test_distributed_trains_the_method_as_one_process_does":
        "2 gloo ranks under DDP and FSDP2 for every method",
    "tests/test_method_contract.py::test_a_new_method_is_one_module_and_one_register": "a toy method through "
        "every consumer, distributed included",
}
# Rough seconds per slow test on the 2-core CPU, to spread the slow groups over the lanes: by its slowest
# marker (an assignment's grading run, 2.5-6 minutes, shared by its ~17 tests; a lecture executed; a step of
# the 135M model), where a file or test below is not better estimated by its nodeid.
SECONDS_BY_MARK = {"nbgrader": 16.0, "notebook": 25.0, "slow": 30.0}
SECONDS_BY_PREFIX = {
    "tests/test_site.py": 90.0,  # its few tests share one build of the site, which executes every lecture
    "tests/test_smollm2.py": 15.0,
    "tests/test_cli.py::test_compare_writes_table_json_and_plot": 240.0,
    "tests/test_colab_cells.py::test_setup_cell_installs": 40.0,
    "tests/test_method_contract.py::test_compare_runs_the_method_from_its_record": 12.0,  # per method
    "tests/test_method_contract.py::test_distributed_trains_the_method_as_one_process_does": 8.0,  # per method
    "tests/test_method_contract.py::test_a_new_method_is_one_module_and_one_register": 30.0,
}


def xdist_group(nodeid: str) -> str:
    """The group a test runs in: its file, or for a test of ``SPLIT_BY`` its file and its first parameter, e.g.
    ``tests/test_nbgrader.py[a05]`` (every test of assignment a05, ``[a05-blank]`` included: they share one
    grading run) or one lecture."""
    path, _, name = nodeid.partition("::")
    if name.startswith(SPLIT_BY.get(path, "\0")) and name.endswith("]") and "[" in name:
        return f"{path}[{name[name.index('[') + 1:-1].split('-')[0]}]"
    return path


def _is_slow(item) -> bool:
    return any(item.get_closest_marker(mark) for mark in SLOW_MARKS) or item.nodeid.startswith(tuple(HEAVY))


def _estimated_seconds(group: list) -> float:
    def seconds(item) -> float:
        prefix = next((p for p in SECONDS_BY_PREFIX if item.nodeid.startswith(p)), None)
        if prefix:
            return SECONDS_BY_PREFIX[prefix]
        return max([SECONDS_BY_MARK[m] for m in SLOW_MARKS if item.get_closest_marker(m)] + [1.0])

    return sum(seconds(item) for item in group)


def lanes(items: list, workers: int) -> list[list]:
    """``items`` cut into one lane per worker, of the sizes ``--dist worksteal`` hands out first: each lane's
    slow groups (largest estimate first, each to the least loaded lane) at its head, fast files after."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(xdist_group(item.nodeid), []).append(item)
    slow = sorted((g for g in groups.values() if any(_is_slow(i) for i in g)), key=_estimated_seconds, reverse=True)
    fast = [item for g in groups.values() if not any(_is_slow(i) for i in g) for item in g]
    heads, load = [[] for _ in range(workers)], [0.0] * workers
    for group in slow:
        lane = load.index(min(load))
        heads[lane] += group
        load[lane] += _estimated_seconds(group)
    shares, left = [], len(items)  # worksteal gives worker i len(pending) // (workers - i) tests
    for i in range(workers):
        shares.append(left // (workers - i))
        left -= shares[-1]
    result = []
    for lane, share in zip(heads, shares):
        take = max(0, share - len(lane))
        result.append(lane + fast[:take])
        fast = fast[take:]
    result[-1] += fast
    return result


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Mark the fast tier before ``-m`` selects; after it, order what is left into the workers' lanes."""
    for item in items:
        if not _is_slow(item):
            item.add_marker(pytest.mark.fast)
    result = yield
    items[:] = [item for lane in lanes(items, WORKERS) for item in lane]
    return result


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
