"""Every registered method keeps the contract written in ``peftlab/methods/__init__.py``.

One table-driven test per clause, over every method in ``peftlab.methods.METHODS`` (a new method is
picked up with no edit here) and two architectures, a tiny Llama and a tiny GPT-2 built from configs
(``conftest.tiny_llama`` / ``tiny_gpt2``, sized to the tiny tokenizer so data-dependent methods get real
examples through the ``RunContext``):

1. ``apply`` returns the model itself, or (``wraps=True``) a wrapper whose ``.base_model`` is the model;
2. identity at initialization where the method declares it;
3. after two training steps every frozen parameter and buffer is bit-identical;
4. ``trainable_count`` equals the number of entries the optimizer really changed (each trainable
   entry gets a nonzero gradient from an extra loss term, so AdamW moves every one it may move);
5. the same config again is a no-op; another config, or another method, raises an error naming
   ``peftlab.remove_method``; ``remove_method`` gives back the base's outputs and trainability;
6. all method state lives in ``model.peftlab_state``, and its hooks are found through a DDP wrapper
   (a one-process gloo group) and through ``torch.compile``'s wrapper.

Then every consumer, reading only the method's record: compare's run, the sweep's grid, the memory
estimator (its count from the config alone equals the probe's on the applied model), the claims'
``finalize`` (outputs kept), and ``distributed`` under DDP and FSDP2 on two gloo ranks (trains, equals
one process). A toy method registered inside a test goes through all of it, and an AST scan keeps the
consumers from knowing methods by name (at most two name comparisons, no tables keyed by names,
outside ``peftlab/methods/``).

Run: ``.venv/bin/python -m pytest tests/test_method_contract.py -n 0``. CPU only, about five to eight
minutes on a 2-core CPU (the two-rank spawn: about a minute and a half; compare's runs: about three).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import os
import socket
from pathlib import Path

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

import peftlab
from peftlab import compare, distributed, evaluate, memory, sweep, world
from peftlab.methods import (METHODS, RunContext, apply_method, get_method, register, remove_method, trainable_count,
                             unregister)
from peftlab.methods.targets import freeze, is_norm
from peftlab.models import load_base
from peftlab.state import STATE_ATTRIBUTE, model_hooks, peft_state
from peftlab.train import Hook, TrainConfig, train

ARCHITECTURES = {"llama": tiny_llama, "gpt2": tiny_gpt2}
STEPS = 2
# Budget only (not behaviour): fewer Fisher samples and shorter task-adapter training on tiny models.
FAST = {"fisher": {"n_samples": 8}, "fusion": {"adapter_steps": 2, "adapter_n_train": 16, "adapter_batch_size": 4}}


class EveryEntryGetsAGradient(Hook):
    """Adds sum(p * r) over every trainable parameter (r fixed, nonzero), so every trainable entry
    has a nonzero gradient and AdamW moves it: what changes is exactly what the optimizer updates."""

    def __init__(self, model):
        generator = torch.Generator().manual_seed(0)
        self.directions = {id(p): torch.rand(p.shape, generator=generator) + 0.5
                           for p in model.parameters() if p.requires_grad}

    def extra_loss(self, model, step):
        return 1e-3 * sum((p * self.directions[id(p)]).sum() for p in model.parameters() if id(p) in self.directions)


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    return tiny_base[1]


@pytest.fixture(scope="module")
def examples():
    return world.get_task("addition").train_examples(32, seed=0)


def context(tokenizer, examples):
    return RunContext(task="addition", examples=examples, tokenizer=tokenizer, total_steps=100, seed=0)


def applied(name, arch, tokenizer, examples):
    model = ARCHITECTURES[arch](seed=0)
    base = copy.deepcopy(model)
    result = apply_method(model, name, context=context(tokenizer, examples), **FAST.get(name, {}))
    return base, model, result


def trains_base_tensors(model, base) -> bool:
    """Does the method train tensors the base model has (full, BitFit, masks), not only ones it added?"""
    names = {n for n, _ in base.named_parameters()}
    inner = model.base_model if hasattr(model, "base_model") and not hasattr(model, "config") else model
    return any(p.requires_grad and n in names for n, p in inner.named_parameters())


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def frozen_tensors(model) -> dict:
    tensors = {f"param {n}": p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    tensors.update({f"buffer {n}": b.detach().clone() for n, b in model.named_buffers()})
    return tensors


def a_different_config(config):
    """``config`` with its first field changed to another value of the same kind."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, bool):
            return dataclasses.replace(config, **{field.name: not value})
        if isinstance(value, (int, float)):
            return dataclasses.replace(config, **{field.name: value + 1})
        if isinstance(value, str):
            return dataclasses.replace(config, **{field.name: value + "x"})
    return None  # a config with nothing to change (the untouched base)


CASES = [(name, arch) for name in METHODS for arch in ARCHITECTURES]


@pytest.mark.parametrize("name,arch", CASES)
def test_apply_returns_the_model_or_a_declared_wrapper(name, arch, tokenizer, examples):
    _, model, result = applied(name, arch, tokenizer, examples)
    if METHODS[name].wraps:
        assert result is not model and result.base_model is model
    else:
        assert result is model


@pytest.mark.parametrize("name,arch", [c for c in CASES if METHODS[c[0]].identity_at_init])
def test_identity_at_initialization(name, arch, tokenizer, examples):
    base, _, result = applied(name, arch, tokenizer, examples)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    torch.testing.assert_close(logits(result, ids), logits(base, ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,arch", [c for c in CASES if METHODS[c[0]].trains])
def test_frozen_stays_frozen_and_the_count_is_what_the_optimizer_changes(name, arch, tokenizer, examples):
    _, _, model = applied(name, arch, tokenizer, examples)
    frozen = frozen_tensors(model)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train(model, tokenizer, examples, TrainConfig(steps=STEPS, batch_size=4, lr=1e-2, warmup=1),
          hooks=[EveryEntryGetsAGradient(model)], progress=False)
    after = frozen_tensors(model)
    changed_frozen = [k for k in frozen if not torch.equal(frozen[k], after[k])]
    assert not changed_frozen, f"{name} changed frozen tensors: {changed_frozen[:3]}"
    params = dict(model.named_parameters())
    changed = sum(int((params[n].detach() != before).sum()) for n, before in trainable.items())
    assert changed == trainable_count(model).trainable, (name, changed, trainable_count(model))


@pytest.mark.parametrize("name,arch", CASES)
def test_reapply_is_a_noop_and_another_config_names_remove_method(name, arch, tokenizer, examples):
    base, model, result = applied(name, arch, tokenizer, examples)
    method = METHODS[name]
    config = peft_state(result).config
    trains_base = trains_base_tensors(result, base)
    with torch.no_grad():  # what training would have done: the re-apply must keep it
        for p in result.parameters():
            if p.requires_grad:
                p.add_(0.01)
    state_before = {k: v.clone() for k, v in result.state_dict().items()}
    assert method.apply(result, config, context(tokenizer, examples)) is result
    assert all(torch.equal(state_before[k], v) for k, v in result.state_dict().items())
    other = a_different_config(config)
    if other is not None:
        with pytest.raises(ValueError, match="remove_method"):
            method.apply(result, other)
    another = "base" if name != "base" else "full"
    with pytest.raises(ValueError, match="remove_method"):
        apply_method(result, another)
    if not method.removable:  # QLoRA: 4-bit rounding cannot be undone, and remove_method says so
        with pytest.raises(ValueError, match="fresh base"):
            remove_method(result)
        return
    restored = remove_method(result)
    assert restored is model and peft_state(restored) is None
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    if not trains_base:  # what the method added is gone, and with it what it learned
        torch.testing.assert_close(logits(restored, ids), logits(base, ids), rtol=0, atol=1e-6)
    assert {n: p.requires_grad for n, p in restored.named_parameters()} == \
        {n: p.requires_grad for n, p in base.named_parameters()}


@pytest.mark.parametrize("name,arch", CASES)
def test_one_state_holder(name, arch, tokenizer, examples):
    _, model, result = applied(name, arch, tokenizer, examples)
    for obj in {id(model): model, id(result): result}.values():
        for module in obj.modules():
            extra = [k for k in vars(module) if k.startswith("peftlab") and k != STATE_ATTRIBUTE]
            assert not extra, f"{name} keeps state outside peftlab_state: {extra}"
    assert peft_state(result).method == name


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", [n for n in METHODS if METHODS[n].trains and not METHODS[n].wraps])
def test_hooks_are_found_through_ddp_and_compile_wrappers(name, tokenizer, examples, process_group):
    _, model, result = applied(name, "llama", tokenizer, examples)
    for wrapper in (torch.nn.parallel.DistributedDataParallel(result), torch.compile(result)):
        assert peft_state(wrapper) is peft_state(result)
        assert model_hooks(wrapper) == model_hooks(result)


def test_a_masked_method_trains_only_its_mask_under_ddp(tokenizer, examples, process_group):
    _, _, model = applied("random_mask", "llama", tokenizer, examples)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    train(ddp, tokenizer, examples, TrainConfig(steps=STEPS, batch_size=4, lr=1e-2, warmup=1),
          hooks=[EveryEntryGetsAGradient(model)], progress=False)
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())
    assert changed == trainable_count(model).trainable  # a skipped hook would let whole tensors move


# ================================================================ every consumer reads the method's record
#
# Compare, the sweep, the memory estimator, the claims and ``distributed`` reach a method only through its
# record (``peftlab.methods.Method``). Each consumer's check below is one function, run for every
# registered method and, in ``test_a_new_method_is_one_module_and_one_register``, for a toy method
# registered inside that test: adding a method is one module and one ``register``.

# compare's evaluation on a few examples (cost only: what it measures does not depend on the method)
QUICK_EVALUATION = functools.partial(evaluate.evaluate_model, n_people=2, n_target=4, n_paragraphs=2)
COMPARE_BUDGET = compare.CompareConfig(task="addition", steps=STEPS, batch_size=4, n_train=16)


@pytest.fixture(scope="module")
def base_evaluation():
    model, tokenizer = load_base(COMPARE_BUDGET.model)
    return QUICK_EVALUATION(model, tokenizer, world.get_task(COMPARE_BUDGET.task))


def check_compare_run(name: str, monkeypatch, before) -> None:
    """``compare``'s run of the method on a two-step budget: its rate, its train options, its count."""
    monkeypatch.setattr(evaluate, "evaluate_model", QUICK_EVALUATION)
    cfg = COMPARE_BUDGET
    task = world.get_task(cfg.task)
    row = compare.run_method(name, cfg, task.train_examples(cfg.n_train, seed=cfg.seed), task, before, progress=False,
                             options=FAST.get(name))
    method = get_method(name)
    assert row["method"] == name and row["lr"] == method.lr and (row["trainable"] > 0) == method.trains
    train_cfg = cfg.train_config(name)
    assert all(getattr(train_cfg, option) == value for option, value in method.train_options), train_cfg


def check_sweep_grid(name: str, tmp_path) -> None:
    """The sweep's grid is centred on the record's ``grid_centre``; a method that trains nothing is refused."""
    method = get_method(name)
    if not method.trains:
        with pytest.raises(ValueError, match="does not train"):
            sweep.sweep(sweep.SweepConfig(methods=[name]), tmp_path / "sweep.jsonl", progress=False)
        return
    grid = sweep.lr_grid(name)
    assert len(grid) == 5 and grid[2] == pytest.approx(method.sweep_centre, rel=1e-3)
    assert [r["lr"] for r in sweep.SweepConfig(methods=[name], seeds=[0]).runs()] == grid


def check_estimate_equals_probe(name: str, arch: str, tokenizer, examples) -> None:
    """The estimator's count from the model's config alone equals what the probe measures on the applied model."""
    method = get_method(name)
    base, _, result = applied(name, arch, tokenizer, examples)
    setting = method.sizing.of_config(peft_state(result).config)
    assert setting is not None, f"{name}'s sizing rule cannot size its own default config"
    counts = memory.method_counts(base.config, name, **setting)
    probe = memory.measure_training_memory(result, tokenizer, examples, batch_size=2, mixed_precision=False)
    assert counts.trainable == probe.trainable == trainable_count(result).trainable, (counts, probe.trainable)
    if not counts.quantized:  # 4-bit weights are stored packed: their count is the estimator's own convention
        assert counts.trainable + counts.frozen == probe.params
        fp32 = memory.estimate_memory(counts.trainable, counts.frozen, precision="fp32")
        assert (fp32.gradients, fp32.optimizer) == (probe.gradients, probe.optimizer)


def check_finalize(name: str, arch: str, tokenizer, examples) -> None:
    """The record's inference step (prefix folds its MLP, LoRA merges) keeps a trained model's outputs."""
    _, _, result = applied(name, arch, tokenizer, examples)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking model: merging a zero update would prove nothing
        for p in result.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=generator).to(p.dtype))
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    before = logits(result, ids)
    torch.testing.assert_close(logits(get_method(name).finalize(result), ids), before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(METHODS))
def test_compare_runs_the_method_from_its_record(name, monkeypatch, base_evaluation):
    check_compare_run(name, monkeypatch, base_evaluation)


@pytest.mark.parametrize("name", list(METHODS))
def test_the_sweep_grids_the_method_from_its_record(name, tmp_path):
    check_sweep_grid(name, tmp_path)


@pytest.mark.parametrize("name,arch", [c for c in CASES if METHODS[c[0]].sizing is not None])
def test_the_estimator_counts_what_the_probe_measures(name, arch, tokenizer, examples):
    check_estimate_equals_probe(name, arch, tokenizer, examples)


@pytest.mark.parametrize("name,arch", CASES)
def test_finalize_keeps_the_outputs(name, arch, tokenizer, examples):
    check_finalize(name, arch, tokenizer, examples)


# ---- distributed: DDP and FSDP2 on 2 gloo ranks equal one process ------------------------------------------
#
# One spawn of two ranks runs every method under both strategies for two steps in float64 (as
# tests/test_distributed.py explains, float32 rounding would blur the equality); the parent trains the
# same runs in one process. About a minute and a half on a 2-core CPU.

DIST_STRATEGIES = ("ddp", "fsdp-zero3")
DIST_STEPS, DIST_BATCH = 2, 4
DIST_TOLERANCE = 1e-6


def dist_config(name: str, strategy: str = "ddp") -> distributed.RunConfig:
    options = dict(FAST.get(name, {}))
    if "compute_dtype" in {f.name for f in dataclasses.fields(get_method(name).config_cls)}:
        options["compute_dtype"] = "float64"  # QLoRA's matmuls too, or float32 rounding blurs the equality
    return distributed.RunConfig(method=name, strategy=strategy, steps=DIST_STEPS, batch_size=DIST_BATCH,
                                 dtype="float64", options=options)


def _distributed_rank(rank: int, port: int, names: list[str], with_toy: bool, out: str) -> None:
    """One rank of the spawned group (spawn re-imports this module, so the toy is registered again here)."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    if with_toy:
        register_toy()
    group = distributed.setup("cpu")
    for name in names:
        for strategy in DIST_STRATEGIES:
            result = distributed.run(dist_config(name, strategy), group)
            torch.save(result["state"], Path(out) / f"{name}-{strategy}-rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def run_two_ranks(names: list[str], out: Path, with_toy: bool = False) -> None:
    torch.multiprocessing.start_processes(_distributed_rank, args=(_free_port(), names, with_toy, str(out)),
                                          nprocs=2, join=True, start_method="spawn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_process(name: str) -> tuple[dict, dict, bool]:
    """(initial, trained) weights of the same run in this process, one thread as each rank runs, and
    whether training is random (dropout: two forwards in train mode differ)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tokenizer, cfg, examples = distributed.method_model(dist_config(name))
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
        with torch.no_grad():
            random = not torch.equal(model.train()(input_ids=ids).logits, model(input_ids=ids).logits)
        train(model, tokenizer, examples, cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return initial, {n: p.detach().clone() for n, p in model.named_parameters()}, random


def difference(a: dict, b: dict) -> float:
    assert set(a) == set(b), set(a) ^ set(b)
    return max((a[n] - b[n]).abs().max().item() for n in a)


def check_distributed(name: str, out: Path) -> None:
    """Both strategies trained more than zero parameters, with the record's train options, as one process
    does. Where training is random (dropout), each rank draws its own masks: the ranks then agree with
    each other (they step with the same all-reduced gradient) but not with one process."""
    method = get_method(name)
    _, _, cfg, _ = distributed.method_model(dist_config(name))
    assert all(getattr(cfg, option) == value for option, value in method.train_options), cfg
    initial, trained, random = one_process(name)
    assert difference(initial, trained) > 0, f"{name} trained nothing in one process"
    for strategy in DIST_STRATEGIES:
        ranks = [torch.load(out / f"{name}-{strategy}-rank{rank}.pt") for rank in range(2)]
        for rank, state in enumerate(ranks):
            assert difference(initial, state) > 0, f"{name} {strategy}: nothing trained"
            reference = ranks[0] if random else trained
            diff = difference(state, reference)
            against = "rank 0" if random else "one process"
            assert diff <= DIST_TOLERANCE, f"{name} {strategy} rank {rank}: {diff:.3g} from {against}"


TRAINING = [n for n in METHODS if METHODS[n].trains]


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("two-ranks")
    run_two_ranks(TRAINING, out)
    return out


@pytest.mark.parametrize("name", TRAINING)
def test_distributed_trains_the_method_as_one_process_does(name, two_rank_runs):
    check_distributed(name, two_rank_runs)


# ---- a new method: one module and one register ---------------------------------------------------------------

TOY = "toy_norms"


@dataclasses.dataclass
class ToyNormsConfig:
    include_biases: bool = False  # also LayerNorm's shifts (GPT-2), not only the norms' gains


def apply_toy_norms(model, config: ToyNormsConfig, context=None):
    """A toy selective method: only the normalization layers' gains (and shifts) train."""
    freeze(model)
    for module in model.modules():
        if is_norm(module):
            module.weight.requires_grad_(True)
            if config.include_biases and getattr(module, "bias", None) is not None:
                module.bias.requires_grad_(True)
    return model


def count_toy_norms(shape, total: int, setting: dict) -> memory.MethodCounts:
    gains = (2 * shape.layers + 1) * shape.hidden  # two norms per layer and the final one
    trainable = 2 * gains if setting["biases"] and shape.family == "gpt2" else gains
    return memory.MethodCounts(trainable, total - trainable, 0, train_weights=False, norms_train=True)


def register_toy():
    """All a new method needs: its module's config, apply and sizing rule, and this one call."""
    sizing = memory.Sizing("toy: the norms' gains train", count_toy_norms, {"biases": False},
                           lambda config: {"biases": config.include_biases})
    return register(TOY, ToyNormsConfig, family="selective", lr=1e-2, sizing=sizing,
                    description="toy: only the normalization layers' gains train")(apply_toy_norms)


@pytest.fixture
def toy_method():
    register_toy()
    try:
        yield TOY
    finally:
        unregister(TOY)
    assert TOY not in METHODS


def test_a_new_method_is_one_module_and_one_register(toy_method, tokenizer, examples, monkeypatch, tmp_path,
                                                     base_evaluation):
    for arch in ARCHITECTURES:  # the contract's clauses
        test_apply_returns_the_model_or_a_declared_wrapper(toy_method, arch, tokenizer, examples)
        test_identity_at_initialization(toy_method, arch, tokenizer, examples)
        test_frozen_stays_frozen_and_the_count_is_what_the_optimizer_changes(toy_method, arch, tokenizer, examples)
        test_reapply_is_a_noop_and_another_config_names_remove_method(toy_method, arch, tokenizer, examples)
        check_estimate_equals_probe(toy_method, arch, tokenizer, examples)
        check_finalize(toy_method, arch, tokenizer, examples)
    check_compare_run(toy_method, monkeypatch, base_evaluation)
    check_sweep_grid(toy_method, tmp_path)
    run_two_ranks([toy_method], tmp_path, with_toy=True)
    check_distributed(toy_method, tmp_path)


# ---- no consumer knows a method by its name --------------------------------------------------------------------

PACKAGE = Path(peftlab.__file__).parent
MAX_NAME_COMPARISONS = 2  # a consumer that needs to branch on a method's name has found a missing Method field


def method_name_uses(root: Path, names: set[str]) -> tuple[list[str], list[str]]:
    """In every module under ``root`` but ``methods/``: the comparisons ``x == "<method name>"`` (or ``!=``)
    and the tables keyed by method names (a dict with two or more of them as keys)."""
    def is_name(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in names

    comparisons, tables = [], []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "methods":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops) \
                    and any(is_name(side) for side in (node.left, *node.comparators)):
                comparisons.append(f"{where}: {ast.unparse(node)}")
            keys = node.keys if isinstance(node, ast.Dict) else \
                [ast.Constant(k.arg) for k in node.keywords] if isinstance(node, ast.Call) and \
                isinstance(node.func, ast.Name) and node.func.id == "dict" else []
            if sum(is_name(key) for key in keys) >= 2:
                tables.append(where)
    return comparisons, tables


def test_no_consumer_knows_a_method_by_its_name():
    comparisons, tables = method_name_uses(PACKAGE, set(METHODS))
    assert not tables, f"tables keyed by method names outside peftlab/methods/ (make them Method fields): {tables}"
    assert len(comparisons) <= MAX_NAME_COMPARISONS, \
        f"comparisons with a method's name outside peftlab/methods/ (a Method field is missing): {comparisons}"


def test_the_name_scan_finds_planted_violations(tmp_path):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "lora.py").write_text('if name == "lora":\n    pass\n')  # the method's own module: fine
    (tmp_path / "consumer.py").write_text('RATES = {"lora": 1e-3, "full": 1e-4}\nOTHER = dict(lora=1, full=2)\n'
                                          'def f(m):\n    return m == "lora" or "full" != m\n')
    comparisons, tables = method_name_uses(tmp_path, {"lora", "full"})
    assert [c.split(":")[1] for c in comparisons] == ["4", "4"] and tables == ["consumer.py:1", "consumer.py:2"]
