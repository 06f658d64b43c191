"""Bottleneck adapters (Houlsby, Pfeiffer): identity at initialisation, only adapters train, placement per
architecture, parameter counts, idempotent apply.

Table-driven over tiny Llama, GPT-2 and BERT models built from configs, plus the committed tiny base.
Run: ``OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_adapters.py``. CPU only, a few seconds.
"""
import conftest
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from peftlab import METHODS, apply_method, count_parameters
from peftlab.methods import remove_method
from peftlab.methods.adapters import Adapter, WithAdapter, adapter_modules

N_LAYERS, HIDDEN = 2, 32


def tiny_llama():
    return conftest.tiny_llama(vocab_size=100, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                               max_position_embeddings=64, tie_word_embeddings=False)


def tiny_gpt2():
    return conftest.tiny_gpt2(vocab_size=100, n_embd=HIDDEN, n_layer=N_LAYERS, n_positions=64, resid_pdrop=0.1,
                              embd_pdrop=0.1, attn_pdrop=0.1)


def tiny_bert():
    return conftest.tiny_bert(hidden_size=HIDDEN, num_hidden_layers=N_LAYERS)


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}
# adapters per layer, and the name every wrapped module ends with
PLACED = {
    ("llama", "houlsby"): ["self_attn.o_proj", "mlp"], ("llama", "pfeiffer"): ["mlp"],
    ("gpt2", "houlsby"): ["attn.c_proj", "mlp"], ("gpt2", "pfeiffer"): ["mlp"],
    ("bert", "houlsby"): ["attention.output.dense", "output.dense"], ("bert", "pfeiffer"): ["output.dense"],
}
CASES = [(arch, method) for arch in MODELS for method in ("houlsby", "pfeiffer")]


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0  # one padded row
    return ids, mask


@pytest.mark.parametrize("arch,method", CASES)
def test_identity_at_init_and_placement(arch, method):
    torch.manual_seed(0)
    model = MODELS[arch]().eval()
    ids, mask = inputs()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    apply_method(model, method)
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)  # the up-projection is zero: exactly the base's output
    names = [name for name, _ in adapter_modules(model)]
    assert len(names) == N_LAYERS * len(PLACED[arch, method])
    for suffix in PLACED[arch, method]:
        assert sum(name.endswith(suffix) for name in names) >= N_LAYERS
    if arch == "bert" and method == "pfeiffer":  # the regex must not catch the attention's output.dense
        assert not any("attention" in name for name in names)


@pytest.mark.parametrize("arch,method", CASES)
def test_only_adapters_receive_gradients(arch, method):
    torch.manual_seed(0)
    model = apply_method(MODELS[arch](), method)
    ids, mask = inputs(1)
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        if ".adapter." in name:
            assert param.requires_grad and param.grad is not None, name
        else:
            assert not param.requires_grad and param.grad is None, name
    # at step 0 only the up-projection gets a gradient (the zero W_up blocks the path to W_down)
    grads = {n: p.grad.abs().sum() for n, p in model.named_parameters() if ".adapter." in n}
    assert all(g == 0 for n, g in grads.items() if ".down." in n)
    assert all(g > 0 for n, g in grads.items() if n.endswith("up.bias"))


@pytest.mark.parametrize("arch,method", CASES)
def test_parameter_count_matches_formula(arch, method):
    model = MODELS[arch]()
    total_before = count_parameters(model).total
    apply_method(model, method, bottleneck=8)
    n_adapters = N_LAYERS * len(PLACED[arch, method])
    per_adapter = 2 * HIDDEN * 8 + 8 + HIDDEN  # W_down, b_down, W_up, b_up
    counts = count_parameters(model)
    assert counts.trainable == n_adapters * per_adapter
    assert counts.total == total_before + counts.trainable


def test_adapter_block_changes_output_once_trained():
    torch.manual_seed(0)
    adapter = Adapter(16, 4, "gelu")
    hidden = torch.randn(2, 5, 16)
    assert torch.equal(adapter(hidden), hidden)
    with torch.no_grad():
        adapter.up.weight.normal_()
    out = adapter(hidden)
    expected = hidden + adapter.up(torch.nn.functional.gelu(adapter.down(hidden)))
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, hidden)
    no_residual = Adapter(16, 4, residual=False)
    assert torch.equal(no_residual(hidden), torch.zeros_like(hidden))  # why residual=True is the default


def test_idempotent_apply_and_remove(fresh_base):
    model, _ = fresh_base
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    apply_method(model, "houlsby")
    counts = count_parameters(model)
    with torch.no_grad():  # pretend training happened
        for _, wrapped in adapter_modules(model):
            wrapped.adapter.up.weight.normal_(std=0.1)
        trained = model(input_ids=ids).logits
    apply_method(model, "houlsby")  # a re-run cell: nothing added, nothing reset
    assert count_parameters(model) == counts
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, trained)
    with pytest.raises(ValueError, match="remove_method"):
        apply_method(model, "pfeiffer")
    remove_method(model)
    assert not any(isinstance(m, WithAdapter) for m in model.modules())
    assert count_parameters(model).trainable == count_parameters(model).total  # the flags as before
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference)
    apply_method(model, "pfeiffer")
    assert len(adapter_modules(model)) == model.config.num_hidden_layers


def test_unknown_architecture_and_bad_options():
    model = tiny_llama()
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="mlp_targets"):
        apply_method(model, "pfeiffer")
    apply_method(model, "pfeiffer", mlp_targets=["mlp"])  # an explicit placement works anywhere
    with pytest.raises(ValueError, match="q_proj"):  # a wrong target lists the real layer names
        apply_method(tiny_llama(), "houlsby", attention_targets=["out_proj"])
    with pytest.raises(ValueError, match="relu"):
        apply_method(tiny_llama(), "houlsby", nonlinearity="swishy")


def test_bert_base_trainable_percentage():
    """Houlsby et al. report 2.1% of BERT's parameters per task for bottleneck 64 (3.6% for sizes chosen per
    task in 8-256). Computed here on a BERT-base config on the meta device (no memory, no download)."""
    with torch.device("meta"):
        model = BertForMaskedLM(BertConfig())
    base_total = count_parameters(model).total
    apply_method(model, "houlsby", bottleneck=64)
    counts = count_parameters(model)
    assert counts.trainable == 12 * 2 * (2 * 768 * 64 + 64 + 768)
    assert 1.5 < 100 * counts.trainable / base_total < 3.6


def test_placements_follow_the_papers():
    assert METHODS["houlsby"].config().placement == ("attention", "mlp")
    assert METHODS["pfeiffer"].config().placement == ("mlp",)
