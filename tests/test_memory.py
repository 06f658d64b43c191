"""The memory model (peftlab.memory): bytes per parameter of every regime, ZeRO's division by N,
parameter counts from configs against published numbers, and the estimator against the measured
probe on the tiny base and a tiny GPT-2 built from a config (parameter, gradient and optimizer bytes
exactly; activations within 15%); the CLI and the widget calculator headless.

Run: .venv/bin/pytest tests/test_memory.py     CPU only, about half a minute.
"""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from peftlab import apply_method, memory
from peftlab.memory import GB, bytes_per_param, estimate, estimate_memory
from peftlab.methods import get_method

# ----------------------------------------------------------------------------- bytes per parameter

# (precision, optimizer) -> (weights, gradients, master, optimizer) bytes per trainable parameter
REGIMES = [
    ("fp32", "adamw", (4, 4, 0, 8)),
    ("fp32", "adam", (4, 4, 0, 8)),
    ("fp32", "sgd", (4, 4, 0, 0)),
    ("fp32", "sgd-momentum", (4, 4, 0, 4)),
    ("bf16", "adamw", (2, 2, 0, 4)),
    ("fp16", "adamw", (2, 2, 0, 4)),
    ("bf16", "sgd-momentum", (2, 2, 0, 2)),
    ("mixed", "adamw", (2, 2, 4, 8)),
    ("mixed", "sgd", (2, 2, 4, 0)),
    ("mixed", "adamw8bit", (2, 2, 4, 2 + 8 / 256)),
    ("fp32", "adamw8bit", (4, 4, 0, 2 + 8 / 256)),
]


@pytest.mark.parametrize("precision,optimizer,expected", REGIMES)
def test_bytes_per_param_of_each_regime(precision, optimizer, expected):
    per = bytes_per_param(precision, optimizer)
    assert (per.weights, per.gradients, per.master, per.optimizer) == pytest.approx(expected)
    # and the estimator multiplies them by the trainable count, frozen ones hold a weight only
    est = estimate_memory(1000, 500, precision=precision, optimizer=optimizer)
    assert est.weights == 1500 * expected[0]
    assert (est.gradients, est.master, est.optimizer) == pytest.approx([1000 * e for e in expected[1:]])


def test_nf4_is_4_127_bits():
    assert memory.NF4_BITS_PER_PARAM == pytest.approx(4.127, abs=5e-4)
    assert estimate_memory(0, quantized=64 * 256 * 8).weights == 64 * 256 * 8 * memory.NF4_BITS_PER_PARAM / 8


def test_claimed_totals_by_arithmetic():
    """56 GB is 8 B/param (pure 16-bit with 16-bit Adam states); mixed-precision AdamW is 16 B/param, 112 GB."""
    claims = memory.claimed_totals(7e9)
    assert claims["fp16"] == claims["bf16"] == 56 * GB
    assert claims["mixed"] == claims["fp32"] == 112 * GB
    assert bytes_per_param("mixed", "adamw").total - 4 == 12  # ZeRO's K = 12 beyond 16-bit weights + grads
    gpt3 = memory.parameter_count("gpt3-175b")
    assert abs(gpt3 - 175e9) / 175e9 < 0.005


def test_unknown_names_list_known_ones():
    with pytest.raises(KeyError, match="bf16"):
        bytes_per_param("fp8", "adamw")
    with pytest.raises(KeyError, match="adamw8bit"):
        bytes_per_param("fp32", "lion")
    with pytest.raises(KeyError, match="q_proj"):
        memory.method_counts("tiny", "lora", targets=["query"])
    with pytest.raises(KeyError, match="llama-2-7b"):
        memory.preset_config("llama-7b")


# ----------------------------------------------------------------------------- ZeRO


@pytest.mark.parametrize("n_devices", [1, 2, 8, 64])
def test_zero_divides_by_n(n_devices):
    base = estimate_memory(10**6, 10**5, quantized=4096, precision="mixed", activations=12345)
    s1, s2, s3 = (estimate_memory(10**6, 10**5, quantized=4096, precision="mixed", activations=12345,
                                  zero_stage=k, n_devices=n_devices) for k in (1, 2, 3))
    n = n_devices
    assert (s1.optimizer, s1.master, s1.gradients, s1.weights) == (base.optimizer / n, base.master / n,
                                                                   base.gradients, base.weights)
    assert (s2.optimizer, s2.master, s2.gradients, s2.weights) == (base.optimizer / n, base.master / n,
                                                                   base.gradients / n, base.weights)
    assert (s3.optimizer, s3.master, s3.gradients, s3.weights) == (base.optimizer / n, base.master / n,
                                                                   base.gradients / n, base.weights / n)
    assert base.activations == s1.activations == s2.activations == s3.activations == 12345  # never sharded


def test_zero_paper_figure_1():
    """Rajbhandari et al. 2020, Fig. 1: 7.5B parameters, 64 devices: 120, 31.4, 16.6, 1.9 GB per device."""
    totals = [estimate_memory(7.5e9, precision="mixed", zero_stage=k, n_devices=64).total / GB for k in range(4)]
    assert totals == pytest.approx([120, 31.4, 16.6, 1.875], abs=0.05)


def test_zero_rejects_bad_settings():
    with pytest.raises(ValueError, match="zero_stage"):
        estimate_memory(10, zero_stage=4, n_devices=2)
    with pytest.raises(ValueError, match="n_devices"):
        estimate_memory(10, zero_stage=1, n_devices=0)


# ----------------------------------------------------------------------------- parameter counts


# gpt3-175b has only a rounded published count; qwen2.5-0.5b's Llama config also counts an o_proj bias
@pytest.mark.parametrize("name", [n for n in memory.PRESETS if n not in ("tiny", "gpt3-175b", "qwen2.5-0.5b")])
def test_presets_match_published_counts_and_meta_device(name):
    assert memory.parameter_count(name) == memory.PUBLISHED_PARAMETERS[name]
    assert memory.parameter_count_meta(name) == memory.PUBLISHED_PARAMETERS[name]


def test_tiny_preset_follows_the_base(tiny_base):
    model, _ = tiny_base
    assert memory.parameter_count("tiny") == model.num_parameters()


def test_method_counts_match_real_models(fresh_base):
    model, _ = fresh_base
    biases = sum(p.numel() for n, p in model.named_parameters() if "bias" in n)
    assert memory.method_counts(model.config, "bitfit").trainable == biases
    peft = pytest.importorskip("peft")
    targets = ["q_proj", "v_proj", "down_proj"]
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert memory.method_counts(model.config, "lora", rank=4, targets=targets).trainable == trainable


# ----------------------------------------------------------------------------- probe vs estimate

B, S = 4, 24  # batch and sequence length of the probes


def tiny_gpt2_config(dropout=0.0):
    return AutoConfig.for_model("gpt2", n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64,
                                resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)


def build(kind: str, attention: str):
    """The tiny base (its real weights) or a tiny GPT-2 built from a config, with ``attention``."""
    torch.manual_seed(0)
    if kind == "tiny":
        from peftlab import load_base

        model, _ = load_base("tiny")
        model.config._attn_implementation = attention  # the base loads with sdpa; eager keeps the s*s scores
        model.set_attn_implementation(attention)
    else:
        model = AutoModelForCausalLM.from_config(tiny_gpt2_config(), attn_implementation=attention)
    return model


def random_batch(vocab: int, batch: int = B, seq: int = S):
    ids = torch.randint(3, vocab - 1, (batch, seq))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def make_trainable(model, method: str):
    if method == "full":
        apply_method(model, "full")
    else:  # a frozen base with a small trainable part: the biases (BitFit), until LoRA lands
        for name, param in model.named_parameters():
            param.requires_grad_("bias" in name)


@pytest.mark.parametrize("kind", ["tiny", "gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["full", "bitfit"])
def test_probe_equals_estimate(kind, attention, method):
    model = build(kind, attention)
    make_trainable(model, method)
    probe = memory.probe_training_step(model, random_batch(model.config.vocab_size))
    est = estimate(model.config, method, precision="fp32", batch=B, seq=S, attention=attention)
    print(f"\n{kind} {attention} {method}\n{memory.side_by_side(probe, est)}")
    assert probe.trainable == est.trainable > 0
    assert (probe.weights, probe.gradients, probe.optimizer) == (est.weights, est.gradients, est.optimizer)
    assert abs(est.activations - probe.activations) / probe.activations < 0.15


@pytest.mark.parametrize("kind", ["tiny", "gpt2"])
def test_pure_bf16_is_8_bytes_per_param(kind):
    model = build(kind, "sdpa").to(torch.bfloat16)
    probe = memory.probe_training_step(model, random_batch(model.config.vocab_size))
    est = estimate(model.config, "full", precision="bf16", batch=B, seq=S)
    assert (probe.weights + probe.gradients + probe.optimizer) == 8 * probe.params
    assert (probe.weights, probe.gradients, probe.optimizer) == (est.weights, est.gradients, est.optimizer)
    assert abs(est.activations - probe.activations) / probe.activations < 0.15


@pytest.mark.parametrize("optimizer,name", [(torch.optim.SGD, "sgd"), (torch.optim.Adam, "adam")])
def test_probe_optimizer_state(optimizer, name):
    model = build("gpt2", "sdpa")
    probe = memory.probe_training_step(model, random_batch(300), optimizer(model.parameters(), lr=1e-3))
    assert probe.optimizer == estimate(model.config, "full", precision="fp32", optimizer=name).optimizer
    momentum = memory.probe_training_step(model, random_batch(300),
                                          torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    assert momentum.optimizer == estimate(model.config, "full", precision="fp32", optimizer="sgd-momentum").optimizer


def test_probe_8bit_adamw():
    """bitsandbytes keeps 1-byte states + a 4-byte scale per 256 for tensors of 4096 values or more,
    fp32 states below that, and two 256-value quantization maps per optimizer."""
    bnb = pytest.importorskip("bitsandbytes")
    model = build("gpt2", "sdpa")
    big = sum(p.numel() for p in model.parameters() if p.numel() >= 4096)
    small = sum(p.numel() for p in model.parameters() if p.numel() < 4096)
    assert all(p.numel() % 256 == 0 for p in model.parameters() if p.numel() >= 4096)  # whole blocks
    probe = memory.probe_training_step(model, random_batch(300), bnb.optim.AdamW8bit(model.parameters()))
    expected = estimate_memory(big, optimizer="adamw8bit").optimizer + estimate_memory(small).optimizer
    assert probe.optimizer == expected + 2 * 256 * 4


def test_activation_formula_per_layer():
    """Adding one layer adds exactly the per-layer terms (a wrong per-layer term fails here)."""
    for layers in (1, 3):
        cfg = dict(memory.PRESETS["smollm2-135m"], hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=200, tie_word_embeddings=True)
        torch.manual_seed(0)
        spec = dict(cfg)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
        probe = memory.probe_training_step(model, random_batch(200))
        est = memory.activation_bytes(cfg, B, S)
        assert est == probe.activations, f"{layers} layer(s): estimate {est}, probe {probe.activations}"


def test_dropout_masks():
    """With dropout the CPU keeps float masks (pass their size); the estimate still follows the probe."""
    cfg = tiny_gpt2_config(dropout=0.1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    probe = memory.probe_training_step(model, random_batch(300))
    est = memory.activation_bytes(cfg, B, S, attention="eager", dropout_mask_bytes=4)
    assert abs(est - probe.activations) / probe.activations < 0.15
    assert est > memory.activation_bytes(tiny_gpt2_config(), B, S, attention="eager")


def test_checkpointing_keeps_layer_inputs(fresh_base):
    model, _ = fresh_base
    shape = memory.ModelShape.from_config(model.config)
    full = memory.probe_training_step(model, random_batch(shape.vocab))
    model.gradient_checkpointing_enable()
    ckpt = memory.probe_training_step(model, random_batch(shape.vocab))
    est = memory.activation_bytes(shape, B, S, checkpointing=True)
    one_layer = sum(t.bytes for t in memory.activation_terms(shape, B, S) if t.per_layer)
    assert ckpt.activations < full.activations / 2
    # the probe sees what forward keeps; the estimate adds the one layer rebuilt during backward
    assert abs((est - one_layer) - ckpt.activations) / ckpt.activations < 0.05


def test_measure_training_memory_leaves_the_model_as_it_was(fresh_base):
    from peftlab import world

    model, tokenizer = fresh_base
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    examples = world.get_task("addition").train_examples(8, seed=0)
    result = memory.measure_training_memory(model, tokenizer, examples, batch_size=4)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    columns = result.as_columns()
    assert columns["weight_bytes"] == 4 * model.num_parameters() == columns["grad_bytes"]
    assert columns["optimizer_bytes"] == 8 * model.num_parameters()
    assert columns["activation_bytes"] > 0 and columns["peak_bytes"] is None
    model.requires_grad_(False)  # the comparison's untouched-base row: nothing trains, weights only
    frozen = memory.measure_training_memory(model, tokenizer, examples, batch_size=4).as_columns()
    assert frozen["weight_bytes"] == columns["weight_bytes"] and frozen["step_bytes"] == frozen["weight_bytes"]


# ----------------------------------------------------------------------------- will it fit


def test_7b_on_a_3090_is_computed():
    """'PEFT fits a 7B model on a 24 GB RTX 3090': QLoRA yes, LoRA only at small batch x length, full no."""
    assert memory.fit_verdict(estimate("llama-2-7b", "qlora").total, "rtx3090") == "fits"
    assert memory.fit_verdict(estimate("llama-2-7b", "lora").total, "rtx3090") == "fits"
    assert memory.fit_verdict(estimate("llama-2-7b", "lora", batch=8, seq=2048).total, "rtx3090") == "no"
    assert memory.fit_verdict(estimate("llama-2-7b", "full").total, "rtx3090") == "no"
    assert memory.fit_verdict(estimate("llama-2-7b", "full", zero_stage=3, n_devices=8).total, "a100-80gb") == "fits"


def test_checkpointing_and_methods_order():
    lora = estimate("llama-2-7b", "lora", batch=4, seq=2048)
    assert estimate("llama-2-7b", "lora", batch=4, seq=2048, checkpointing=True).activations < lora.activations / 3
    assert estimate("llama-2-7b", "qlora").weights < estimate("llama-2-7b", "lora").weights / 3
    prompt = estimate("llama-2-7b", "prompt")
    assert prompt.trainable == get_method("prompt").sizing.setting["tokens"] * 4096


def test_will_it_fit_table_and_plot():
    rows = memory.will_it_fit(models=["smollm2-135m", "llama-2-70b"], methods=["full", "qlora"])
    assert [r["rtx3090"] for r in rows] == ["fits", "fits", "no", "no"]
    assert "llama-2-70b" in memory.format_fit_table(rows)
    fig = memory.plot_will_it_fit(rows)
    assert len(fig.axes[0].patches) == len(rows) * len(memory.BUCKETS)


def test_cli_memory(capsys):
    from peftlab.cli import main

    assert main(["memory", "--model", "llama-2-7b", "--method", "qlora", "--gpu", "rtx3090"]) == 0
    out = capsys.readouterr().out
    assert "RTX 3090 24 GB: fits" in out and "activations" in out
    assert main(["memory", "--model", "llama-7b"]) == 2
    assert "llama-2-7b" in capsys.readouterr().err


def test_widget_calculator_runs_headless(capsys):
    pytest.importorskip("ipywidgets")
    from peftlab.memory_widget import calculator, plot_breakdown

    calc = calculator(model="llama-2-7b", method="full", gpu="rtx3090")
    assert "RTX 3090 24 GB: no" in capsys.readouterr().out
    calc.controls["method"].value = "qlora"  # a change redraws: here, prints the table again
    assert "RTX 3090 24 GB: fits" in capsys.readouterr().out
    fig = plot_breakdown([calc.estimate(), estimate("llama-2-7b", "lora")], gpu="rtx3090")
    assert len(fig.axes[0].patches) == 2 * len(memory.BUCKETS)


def test_the_estimator_sizes_the_methods_that_declare_how():
    """The estimator reads each method's ``Sizing`` from its record (its setting is the 7B-scale one,
    not the tiny base's registered default); an unknown name lists the registered methods, a method
    without a sizing rule is an error naming the ones the estimator sizes. That the count equals the
    applied model's is checked for every sized method in tests/test_method_contract.py."""
    from peftlab.methods import METHODS

    assert set(memory.sized_methods()) == {name for name, m in METHODS.items() if m.sizing is not None}
    assert {"full", "lora", "qlora", "bitfit", "prompt"} <= set(memory.sized_methods())
    assert memory.method_counts("llama-2-7b", "lora").lora_rank == 16
    with pytest.raises(KeyError, match="lora"):
        memory.estimate("tiny", "adapters")
    with pytest.raises(ValueError, match="sizes: full"):
        memory.estimate("tiny", "houlsby")
