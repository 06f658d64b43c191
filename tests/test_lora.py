"""LoRA (``peftlab.methods.lora``): invariants, and agreement with Hugging Face ``peft`` in both directions.

Table-driven over tiny Llama, GPT-2 (``Conv1D``, transposed weights) and BERT models built from configs:
same A and B give the same outputs as peft's LoRA; adapters saved by either library load in the other
with the same logits; merging, unmerging, gradients, identity at init, errors, rsLoRA, idempotence.
Run: ``.venv/bin/pytest tests/test_lora.py`` (CPU only, under a minute on 2 cores).
"""
import copy
import json
import math

import peft
import conftest
import pytest
import torch

from peftlab import apply_method, count_parameters, get_method, set_seed
from peftlab.methods.lora import (LoraConfig, LoraLayer, apply_lora, load_lora, lora_layers, merge_and_unload,
                                  merge_lora, save_lora, unmerge_lora)

pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False")  # peft's note on GPT-2's Conv1D

ATOL = 1e-5  # fp32: the two libraries do the same operations in the same order; this leaves room for summation order


def tiny_llama():
    return conftest.tiny_llama(vocab_size=97, max_position_embeddings=64, tie_word_embeddings=False)


def tiny_gpt2():
    return conftest.tiny_gpt2(vocab_size=97, n_positions=64, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)


def tiny_bert():
    return conftest.tiny_bert(vocab_size=97, masked_lm=False, intermediate_size=48)


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}
# (architecture, peftlab LoraConfig); the peft config is translated from it
CASES = [
    ("llama", LoraConfig(r=4, alpha=8)),  # default targets: every linear layer but the output head
    ("llama", LoraConfig(r=2, alpha=5, target_modules=["q_proj", "v_proj"], use_rslora=True)),
    ("llama", LoraConfig(r=4, alpha=8, target_modules=r".*\.mlp\.(up|down)_proj", bias="lora_only")),
    ("gpt2", LoraConfig(r=4, alpha=8)),
    ("gpt2", LoraConfig(r=3, alpha=6, target_modules=["c_attn"], bias="all")),
    ("bert", LoraConfig(r=4, alpha=8, target_modules=["query", "value"])),
    ("bert", LoraConfig(r=2, alpha=2)),
]
IDS = [f"{arch}-{i}" for i, (arch, _) in enumerate(CASES)]


def make_base(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS[arch]()
    return model.eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    return {"input_ids": ids, "attention_mask": mask}


def outputs(model, batch=None):
    with torch.no_grad():
        out = model(**(batch or inputs()))
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def peft_config(cfg: LoraConfig) -> peft.LoraConfig:
    return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.use_rslora,
                           target_modules=cfg.target_modules or "all-linear", bias=cfg.bias)


def randomize(model, seed: int = 3):
    """Non-zero B (and perturbed biases), so that the update actually shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or (p.requires_grad and name.endswith("bias")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def peft_lora_weights(peft_model) -> dict[str, torch.Tensor]:
    """peft's LoRA tensors under peftlab's names (``...q_proj.lora_A.weight``)."""
    return {k.removeprefix("base_model.model.").replace(".default.", "."): v
            for k, v in peft_model.state_dict().items() if "lora_" in k}


@pytest.mark.parametrize("arch,cfg", CASES, ids=IDS)
def test_same_A_B_same_output_as_peft(arch, cfg):
    base = make_base(arch)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(cfg)).eval()
    randomize(theirs)
    ours = apply_lora(copy.deepcopy(base), cfg)
    assert count_parameters(ours).trainable == count_parameters(theirs).trainable > 0
    weights = peft_lora_weights(theirs)
    assert set(weights) == {n for n, _ in ours.named_parameters() if "lora_" in n}
    ours.load_state_dict(weights, strict=False)
    for name, p in theirs.named_parameters():  # biases trained by bias="all"/"lora_only" too
        if p.requires_grad and "lora_" not in name:
            dict(ours.named_parameters())[name.removeprefix("base_model.model.")].data.copy_(p.data)
    torch.testing.assert_close(outputs(ours), outputs(theirs), atol=ATOL, rtol=0)
    assert not torch.allclose(outputs(ours), outputs(base), atol=1e-3), "the update must show in the output"


@pytest.mark.parametrize("arch", list(MODELS))
def test_same_seed_same_initialisation_and_dropout_as_peft(arch):
    """peftlab creates A and B in peft's order, so a seed gives both the same A; dropout masks then agree too."""
    cfg = LoraConfig(r=4, alpha=8, dropout=0.2)
    base = make_base(arch)
    set_seed(5)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(cfg))
    set_seed(5)
    ours = apply_lora(copy.deepcopy(base), cfg)
    weights = peft_lora_weights(theirs)
    for name, p in ours.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(p, weights[name], atol=0, rtol=0)
    randomize(theirs)
    randomize(ours)
    theirs.train()
    ours.train()
    set_seed(9)
    expected = theirs(**inputs())
    set_seed(9)
    got = ours(**inputs())
    key = "logits" if arch != "bert" else "last_hidden_state"
    torch.testing.assert_close(got[key], expected[key], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch,cfg", CASES, ids=IDS)
def test_peftlab_adapter_loads_in_peft(arch, cfg, tmp_path):
    base = make_base(arch)
    ours = apply_lora(copy.deepcopy(base), cfg)
    randomize(ours)
    save_lora(ours, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == cfg.r and saved["lora_alpha"] == cfg.alpha
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert count_parameters(theirs).total == count_parameters(ours).total
    torch.testing.assert_close(outputs(theirs), outputs(ours), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch,cfg", CASES, ids=IDS)
def test_peft_adapter_loads_in_peftlab(arch, cfg, tmp_path):
    base = make_base(arch)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(cfg)).eval()
    randomize(theirs)
    theirs.save_pretrained(tmp_path)
    ours = load_lora(copy.deepcopy(base), tmp_path)
    assert count_parameters(ours).trainable == count_parameters(theirs).trainable
    torch.testing.assert_close(outputs(ours), outputs(theirs), atol=ATOL, rtol=0)


def test_saved_keys_are_peft_keys(tmp_path):
    from safetensors.torch import load_file

    model = apply_lora(make_base("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    save_lora(model, tmp_path)
    keys = sorted(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert keys[0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert len(keys) == 2 * 2  # 2 layers x (A, B)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["q_proj"]


@pytest.mark.parametrize("arch", list(MODELS))
def test_output_at_init_equals_base(arch):
    base = make_base(arch)
    model = apply_lora(copy.deepcopy(base), LoraConfig(r=4))
    assert all(torch.count_nonzero(layer.lora_B.weight) == 0 for layer in lora_layers(model).values())
    assert all(torch.count_nonzero(layer.lora_A.weight) > 0 for layer in lora_layers(model).values())
    torch.testing.assert_close(outputs(model), outputs(base), atol=0, rtol=0)


@pytest.mark.parametrize("arch", list(MODELS))
def test_merge_equals_unmerged_and_unmerge_restores_base(arch):
    base = make_base(arch)
    model = apply_lora(copy.deepcopy(base), LoraConfig(r=4, alpha=8))
    randomize(model)
    unmerged = outputs(model)
    base_weights = {n: p.clone() for n, p in base.named_parameters()}
    merge_lora(model)
    merge_lora(model)  # merging twice must not add the update twice
    assert all(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(outputs(model), unmerged, atol=ATOL, rtol=0)
    changed = {n: p for n, p in model.named_parameters() if n.endswith("base_layer.weight")}
    assert any(not torch.equal(p, base_weights[n.replace(".base_layer", "")]) for n, p in changed.items())
    unmerge_lora(model)
    for name, p in model.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(p, base_weights[name.replace(".base_layer", "")], atol=1e-6, rtol=0)
    torch.testing.assert_close(outputs(model), unmerged, atol=ATOL, rtol=0)
    merged_plain = merge_and_unload(model)
    assert not lora_layers(merged_plain)
    torch.testing.assert_close(outputs(merged_plain), unmerged, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", list(MODELS))
def test_delta_weight_is_scaled_BA_in_base_layout(arch):
    model = apply_lora(make_base(arch), LoraConfig(r=3, alpha=7))
    randomize(model)
    for layer in lora_layers(model).values():
        expected = (7 / 3) * layer.lora_B.weight @ layer.lora_A.weight  # (d_out, d_in)
        if layer.fan_in_fan_out:
            expected = expected.T  # Conv1D stores (d_in, d_out)
        assert layer.delta_weight().shape == layer.base_layer.weight.shape
        torch.testing.assert_close(layer.delta_weight(), expected)


@pytest.mark.parametrize("arch", list(MODELS))
def test_only_adapter_parameters_get_gradients(arch):
    model = apply_lora(make_base(arch), LoraConfig(r=4))
    randomize(model)
    model.train()
    out = model(**inputs())
    loss = out.logits.square().mean() if arch != "bert" else \
        out.last_hidden_state.square().mean() + out.pooler_output.square().mean()  # the pooler is adapted too
    loss.backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    n_adapter = sum(layer.r * (layer.in_features + layer.out_features) for layer in lora_layers(model).values())
    assert count_parameters(model).trainable == n_adapter  # r (d_in + d_out) per layer


def test_unknown_target_lists_candidates():
    with pytest.raises(ValueError) as err:
        apply_lora(make_base("gpt2"), LoraConfig(target_modules=["q_proj"]))
    message = str(err.value)
    assert "'q_proj' not found" in message
    for name in ("c_attn", "c_proj", "c_fc"):
        assert name in message
    with pytest.raises(ValueError, match="q_proj, k_proj, v_proj, o_proj"):
        apply_lora(make_base("llama"), LoraConfig(target_modules=r".*attention\.query"))


@pytest.mark.parametrize("use_rslora,expected", [(False, 16 / 4), (True, 16 / math.sqrt(4))])
def test_scaling_and_rslora(use_rslora, expected):
    model = apply_lora(make_base("llama"), LoraConfig(r=4, alpha=16, use_rslora=use_rslora))
    for layer in lora_layers(model).values():
        assert layer.scaling == pytest.approx(expected)
    layer = next(iter(lora_layers(model).values()))
    randomize(model)
    x = torch.randn(3, layer.in_features)
    manual = layer.base_layer(x) + expected * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), manual)


def test_apply_is_idempotent_and_keeps_trained_weights():
    model = apply_lora(make_base("llama"), LoraConfig(r=4))
    randomize(model)
    before = {n: p.clone() for n, p in model.named_parameters()}
    counts = count_parameters(model)
    apply_lora(model, LoraConfig(r=4))  # the same config again: a no-op
    apply_method(model, "lora", r=4)
    assert count_parameters(model) == counts
    assert not any(isinstance(layer.base_layer, LoraLayer) for layer in lora_layers(model).values())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name], atol=0, rtol=0)
    with pytest.raises(ValueError, match="remove_method"):  # another config: an error, never a silent keep
        apply_lora(model, LoraConfig(r=4, target_modules=["q_proj"]))
    assert count_parameters(model) == counts


def test_registered_method_on_tiny_base(fresh_base):
    from peftlab import TrainConfig, train, world

    model, tokenizer = fresh_base
    method = get_method("lora")
    apply_method(model, "lora")
    names = {name.rsplit(".", 1)[-1] for name in lora_layers(model)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert 0 < count_parameters(model).percent < 10
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples = world.get_task("new_people").train_examples(16, seed=0)
    result = train(model, tokenizer, examples, TrainConfig(steps=3, batch_size=4, lr=method.lr), progress=False)
    assert all(math.isfinite(loss) for loss in result.losses)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{name} is frozen but changed"
