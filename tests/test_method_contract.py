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

Run: ``.venv/bin/python -m pytest tests/test_method_contract.py -n 0``. CPU only, about a minute.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

from peftlab import world
from peftlab.methods import METHODS, RunContext, apply_method, remove_method, trainable_count
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
    if name == "qlora":  # 4-bit rounding cannot be undone, and remove_method says so
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
