"""AdapterFusion: with the attention forced onto one adapter the fused model equals that adapter's model;
only the fusion layers train; the initialisation (V = I); the attention per layer; task adapters
trained once and then loaded from the cache; the registered method inside ``compare``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_fusion.py``. CPU only, about half a minute.
"""
import copy

import conftest
import pytest
import torch

from peftlab import TrainConfig, train, world
from peftlab.data import batches
from peftlab.methods import fusion
from peftlab.methods.adapters import PfeifferConfig, add_adapters
from peftlab.methods.fusion import (
    FusionConfig,
    apply_fusion,
    force_adapter,
    fusion_attention,
    fusion_modules,
    load_task_adapter,
    train_task_adapters,
)
from peftlab.state import model_hooks

TASKS = ["addition", "sentiment", "new_people"]


def tiny_llama():
    return conftest.tiny_llama(vocab_size=100, max_position_embeddings=32, attention_bias=False, mlp_bias=False,
                               tie_word_embeddings=False)


def random_adapter_states(base, tasks, seed=0):
    """Adapter states as training would leave them (the up projection no longer zero), without training."""
    gen = torch.Generator().manual_seed(seed)
    states = {}
    for task in tasks:
        model = add_adapters(copy.deepcopy(base), PfeifferConfig(bottleneck=4))
        states[task] = {name: torch.randn(p.shape, generator=gen) * 0.3
                        for name, p in model.named_parameters() if ".adapter." in name}
    return states


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("value_offdiag,atol", [(0.0, 1e-6), (1e-6, 1e-3)])
def test_forced_fusion_equals_the_single_adapter_model(value_offdiag, atol):
    torch.manual_seed(0)
    base = tiny_llama().eval()
    states = random_adapter_states(base, TASKS)
    fused = apply_fusion(copy.deepcopy(base), states, FusionConfig(value_offdiag=value_offdiag)).eval()
    ids = torch.randint(0, 100, (3, 10))
    singles = {task: logits(load_task_adapter(copy.deepcopy(base), states[task], bottleneck=4), ids) for task in TASKS}
    for index, task in enumerate(TASKS):
        force_adapter(fused, task if index % 2 else index)  # by name or by position
        torch.testing.assert_close(logits(fused, ids), singles[task], rtol=0, atol=atol)
        other = TASKS[(index + 1) % len(TASKS)]  # and not the other adapters' models (the check can fail)
        assert (logits(fused, ids) - singles[other]).abs().max() > 1e-2
    force_adapter(fused, None)  # the learned attention again: a mixture, equal to none of them
    assert all((logits(fused, ids) - single).abs().max() > 1e-3 for single in singles.values())
    with pytest.raises(KeyError, match="fuses"):
        force_adapter(fused, "no-such-task")


def test_only_fusion_trains_and_init(fresh_base):
    model, tokenizer = fresh_base
    states = random_adapter_states(model, ["addition", "sentiment"])
    apply_fusion(model, states, FusionConfig(value_offdiag=0.0))
    with pytest.raises(ValueError, match="remove_method"):  # a second fusion on top of the first: an error
        apply_fusion(model, states, FusionConfig(value_offdiag=0.0))
    layers = fusion_modules(model)
    assert len(layers) == model.config.num_hidden_layers and len(model_hooks(model)) == 1
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".fusion." in n for n in trainable)
    first = next(iter(layers.values())).fusion
    assert torch.equal(first.value.weight, torch.eye(first.value.weight.shape[0]))
    assert model_hooks(model)[0].extra_loss(model, 0).item() == 0.0  # ||I - V||² at V = I
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples = world.get_task("sentiment").train_examples(32)
    train(model, tokenizer, examples, TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup=1), progress=False)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen), "a frozen part moved"
    assert not torch.equal(first.value.weight, torch.eye(first.value.weight.shape[0]))
    batch = next(batches(tokenizer, examples, 4))
    attention = fusion_attention(model, batch)
    assert list(attention) == list(layers)
    for weights in attention.values():
        assert weights.shape == (2,) and weights.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_task_adapters_are_cached(fresh_base, tmp_path, monkeypatch):
    model, tokenizer = fresh_base
    kwargs = dict(steps=2, batch_size=4, n_train=16, bottleneck=4, tokenizer=tokenizer, cache_dir=tmp_path,
                  progress=False)
    first = train_task_adapters(model, ["addition", "sentiment"], **kwargs)
    assert set(first) == {"addition", "sentiment"}
    assert any(v.abs().sum() > 0 for k, v in first["addition"].items() if ".up.weight" in k), "adapter did not train"

    def no_training(*args, **kw):
        raise AssertionError("the cached adapters should have been loaded, not trained again")

    monkeypatch.setattr(fusion, "train", no_training)
    again = train_task_adapters(model, ["addition", "sentiment"], **kwargs)
    assert all(torch.equal(again[t][k], first[t][k]) for t in first for k in first[t])
    with pytest.raises(AssertionError, match="cached"):  # another setting is another cache entry
        train_task_adapters(model, ["addition"], **{**kwargs, "steps": 3})
    with pytest.raises(KeyError, match="unknown task .*; known: "):
        train_task_adapters(model, ["additoin"], **kwargs)


def test_fusion_and_adalora_in_compare(tmp_path, monkeypatch):
    """Both registered methods run inside ``compare`` (which fills in task, seed and total_step); the
    evaluation is stubbed out, as it is what makes a real comparison slow."""
    from peftlab import compare as compare_module
    from peftlab.evaluate import Evaluation

    monkeypatch.setattr(compare_module.evaluate, "evaluate_model",
                        lambda *a, **k: Evaluation(0.5, {"source_recall": 1.0, "english_ppl": 100.0}))
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    rows = compare_module.compare(compare_module.CompareConfig(task="sentiment", steps=4, n_train=64),
                                  ["fusion", "adalora"], out_dir=tmp_path, progress=False)
    assert [r["method"] for r in rows] == ["fusion", "adalora"]
    assert rows[0]["family"] == "additive" and rows[1]["family"] == "reparameterization"
    assert rows[0]["trainable"] > 0 and rows[1]["trainable"] > 0
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "task_adapters").iterdir())
    assert cached == ["addition", "sentiment"]  # the target (sentiment) is also a source task: two adapters
