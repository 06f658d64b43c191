"""Ledger rows settled by arithmetic and by counting on the tiny base: memory (56 GB, 175B, 540B, a 24 GB
card, four copies), storage per task, and what low-rank, prefix and the surveys' families change."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from .core import GB, Verdict


# --------------------------------------------------------------------------------------------------
# Memory arithmetic
# --------------------------------------------------------------------------------------------------


def measure_56gb(quick: bool = False) -> dict:
    """Every reading of "a 7B model with Adam in FP16 needs 56 GB"."""
    from .. import memory

    n = 7e9
    totals = memory.claimed_totals(n)  # weights + gradients + AdamW states per regime
    fp32_moments = n * memory.bytes_per_param("fp32", "adamw").optimizer  # the two fp32 Adam moments alone
    mixed = memory.bytes_per_param("mixed", "adamw")
    with_acts = {}
    for batch, seq in ((1, 512), (8, 2048)):
        est = memory.estimate("llama-2-7b", "full", precision="mixed", batch=batch, seq=seq)
        with_acts[f"{batch}x{seq}"] = est.total * n / est.params  # scaled from 6.74B to 7B parameters
    readings = {f"{name} weights+grads+AdamW": totals[name] for name in totals}
    readings["fp32 Adam moments alone"] = fp32_moments
    readings.update({f"mixed + activations {k}": v for k, v in with_acts.items()})
    matching = sorted(k for k, v in readings.items() if abs(v - 56 * GB) < 0.5 * GB)
    summary = (f"56 GB = {56 * GB / n:.0f} B/param; it is {', '.join(matching)}; standard mixed-precision AdamW "
               f"{mixed.total:g} B/param = {totals['mixed'] / GB:.0f} GB before activations, "
               f"{with_acts['1x512'] / GB:.0f} GB with one 512-token sequence")
    return {"summary": summary, "readings_gb": {k: v / GB for k, v in readings.items()}, "matching": matching,
            "mixed_gb": totals["mixed"] / GB}


def rule_56gb(result: dict) -> Verdict:
    matching, mixed = result["matching"], result["mixed_gb"]
    if not matching:
        return Verdict("wrong", f"no regime gives 56 GB; standard mixed precision needs {mixed:.0f} GB")
    if any("mixed" in m for m in matching):
        return Verdict("holds", "standard mixed-precision training gives 56 GB")
    return Verdict("holds only if", f"the 56 GB is one of these readings: {'; '.join(matching)}; standard "
                                    f"mixed-precision AdamW needs {mixed:.0f} GB before activations")


#: PaLM 540B's published architecture (Chowdhery et al. 2022, Table 1 and section 2): 118 layers, width
#: 18432, 48 heads of 256, multi-query attention (one key/value head), SwiGLU MLP of width 4 x 18432, no
#: biases, shared input-output embeddings, a 256k vocabulary. Written as a Llama config; PaLM's parallel
#: layer has one LayerNorm where Llama has two RMSNorms (2.2M parameters of 540B: below the rounding).
PALM_540B = dict(model_type="llama", hidden_size=18432, intermediate_size=4 * 18432, num_hidden_layers=118,
                 num_attention_heads=48, num_key_value_heads=1, head_dim=256, vocab_size=256000,
                 max_position_embeddings=2048, tie_word_embeddings=True)


def measure_175b(quick: bool = False) -> dict:
    from .. import memory

    gpt3 = memory.parameter_count("gpt3-175b")
    return {"summary": f"GPT-3's published architecture (Brown et al. 2020, Table 2.1) counts {gpt3 / 1e9:.1f}B "
                       f"parameters; OpenAI has not published GPT-4's size", "gpt3_params": gpt3,
            "gpt4_published": None}


def rule_175b(result: dict) -> Verdict:
    is_gpt3 = abs(result["gpt3_params"] - 175e9) / 175e9 < 0.01
    if result["gpt4_published"] is None and is_gpt3:
        return Verdict("wrong", "175B is GPT-3's size; GPT-4's is unpublished")
    return Verdict("depends", "GPT-3's architecture does not count 175B")


def measure_540b(quick: bool = False) -> dict:
    from .. import memory

    n = memory.parameter_count(PALM_540B)
    return {"summary": f"PaLM's published architecture (Chowdhery et al. 2022, Table 1) counts {n / 1e9:.2f}B "
                       f"parameters", "palm_params": n}


def rule_540b(result: dict) -> Verdict:
    if abs(result["palm_params"] - 540e9) / 540e9 < 0.01:
        return Verdict("holds", "the count from PaLM's architecture is 540B within 1%")
    return Verdict("wrong", f"PaLM's architecture counts {result['palm_params'] / 1e9:.1f}B")


RTX3090_MODELS = ("smollm2-135m", "llama-2-7b", "llama-2-13b", "llama-2-70b")


def measure_rtx3090(quick: bool = False) -> dict:
    """One 512-token sequence, mixed-precision AdamW, LoRA rank 16 on the attention projections."""
    from .. import memory

    rows = memory.will_it_fit(models=RTX3090_MODELS, methods=("full", "lora", "qlora"), gpus=("rtx3090",))
    table = {(r["model"], r["method"]): r["rtx3090"] for r in rows}
    fits = {f"{m} {k}": v for (m, k), v in table.items()}
    line = "; ".join(f"{model}: " + ", ".join(f"{method} {table[(model, method)]}" for method in ("full", "lora", "qlora"))
                     for model in RTX3090_MODELS)
    return {"summary": f"RTX 3090 24 GB, batch 1 x 512: {line}", "fits": fits}


def rule_rtx3090(result: dict) -> Verdict:
    fits = result["fits"]
    ok = lambda model, method: fits[f"{model} {method}"] == "fits"  # noqa: E731
    peft_7b = [m for m in ("lora", "qlora") if ok("llama-2-7b", m)]
    if not peft_7b:
        return Verdict("wrong", "no PEFT method fits a 7B model on 24 GB")
    largest_qlora = [m for m in RTX3090_MODELS if ok(m, "qlora")]
    if ok("llama-2-7b", "full"):
        return Verdict("holds", "even full fine-tuning of 7B fits")
    return Verdict("holds only if", f"the method is {' or '.join(peft_7b)} for 7B (full fine-tuning does not fit), "
                                    f"QLoRA up to {largest_qlora[-1]}, short sequences and small batches")


def measure_four_copies(quick: bool = False) -> dict:
    """Measured on the tiny base: one fp32 AdamW step's weights, gradients and optimizer state."""
    from .. import memory
    from ..models import load_base

    base, _ = load_base("tiny")
    ids = torch.randint(2, base.config.vocab_size, (2, 16))
    step = memory.probe_training_step(base, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids},
                                      torch.optim.AdamW(base.parameters(), lr=0.0))
    copies_fp32 = (step.weights + step.gradients + step.optimizer) / step.weights
    mixed = memory.bytes_per_param("mixed", "adamw")
    copies_mixed = mixed.total / mixed.weights
    return {"summary": f"fp32 AdamW, measured on the tiny base: weights + gradients + 2 moments = {copies_fp32:g}x the "
                       f"weights (plus {step.activations / step.weights:.2f}x in activations at 2 x 16 tokens); mixed "
                       f"precision: {copies_mixed:g}x the 16-bit weights (weights, gradients, fp32 master, 2 moments)",
            "copies_fp32": copies_fp32, "copies_mixed": copies_mixed}


def rule_four_copies(result: dict) -> Verdict:
    if result["copies_fp32"] == 4 and result["copies_mixed"] == 4:
        return Verdict("holds", "four copies in every regime")
    if result["copies_fp32"] == 4:
        return Verdict("holds only if", f"training is fp32 with AdamW (mixed precision holds "
                                        f"{result['copies_mixed']:g}x the 16-bit weights), activations not counted")
    return Verdict("wrong", f"fp32 AdamW holds {result['copies_fp32']:g}x the weights")


def measure_storage(quick: bool = False) -> dict:
    """Bytes on disk per task, tiny base: the whole model, a LoRA adapter, a sparse difference (0.5% of
    the weights changed); and Llama-2-7B by arithmetic (16-bit)."""
    from .. import apply_method, memory
    from ..methods import lora as plora
    from ..methods import sparse
    from ..models import load_base

    base, _ = load_base("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base.save_pretrained(folder / "full")
        full_bytes = sum(f.stat().st_size for f in (folder / "full").glob("*.safetensors"))
        lora_model = apply_method(copy.deepcopy(base), "lora")
        plora.save_lora(lora_model, folder / "lora")
        lora_bytes = (folder / "lora" / "adapter_model.safetensors").stat().st_size
        reference = {n: p.detach().clone() for n, p in sparse.named_parameters_once(base).items()}
        masks = sparse.random_mask(reference, 0.005, seed=0)
        changed = copy.deepcopy(base)
        with torch.no_grad():
            for name, param in sparse.named_parameters_once(changed).items():
                param[masks[name]] += 0.01  # a fine-tuned-looking change inside the mask
        sparse_bytes = sparse.save_sparse_difference(changed, folder / "diff.safetensors", base=reference)
    lora_7b = memory.method_counts("llama-2-7b", "lora", rank=16).trainable * 2
    full_7b = memory.parameter_count("llama-2-7b") * 2
    return {"summary": f"tiny base per task: full checkpoint {full_bytes:,} B, LoRA adapter {lora_bytes:,} B "
                       f"({lora_bytes / full_bytes:.1%}), sparse difference of 0.5% {sparse_bytes:,} B "
                       f"({sparse_bytes / full_bytes:.1%}); Llama-2-7B in 16 bits: {full_7b / GB:.1f} GB vs a rank-16 "
                       f"LoRA adapter {lora_7b / 1e6:.0f} MB", "checkpoint": full_bytes, "adapter": lora_bytes,
            "sparse_difference": sparse_bytes, "checkpoint_7b": full_7b, "adapter_7b": lora_7b}


def rule_storage(result: dict) -> Verdict:
    small = max(result["adapter"], result["sparse_difference"]) / result["checkpoint"]
    if small < 0.1 and result["adapter_7b"] / result["checkpoint_7b"] < 0.01:
        return Verdict("holds", f"an adapter or sparse difference is at most {small:.1%} of the checkpoint here, "
                                f"{result['adapter_7b'] / result['checkpoint_7b']:.2%} at 7B")
    return Verdict("depends", f"the adapter is {small:.0%} of the checkpoint on this model")


# --------------------------------------------------------------------------------------------------
# Structure: what low-rank and prefix methods change
# --------------------------------------------------------------------------------------------------


def measure_low_rank(quick: bool = False) -> dict:
    from .. import apply_method
    from ..methods import lora as plora
    from ..models import load_base

    base, _ = load_base("tiny")
    model = apply_method(copy.deepcopy(base), "lora")
    name, layer = next(iter(plora.lora_layers(model).items()))
    torch.manual_seed(0)
    with torch.no_grad():
        layer.lora_B.weight.normal_(std=0.02)  # a trained-looking B (at init B = 0 and the update is 0)
    weight = layer.base_layer.weight.detach()
    update = layer.delta_weight().detach()
    ranks = {"W": int(torch.linalg.matrix_rank(weight)), "BA": int(torch.linalg.matrix_rank(update)),
             "W + BA": int(torch.linalg.matrix_rank(weight + update))}
    return {"summary": f"{name} ({tuple(weight.shape)}), LoRA r = {layer.r}: rank W = {ranks['W']}, "
                       f"rank of the update = {ranks['BA']}, rank W + update = {ranks['W + BA']}",
            "ranks": ranks, "r": layer.r, "full_rank": min(weight.shape)}


def rule_low_rank(result: dict) -> Verdict:
    ranks = result["ranks"]
    if ranks["BA"] <= result["r"] and ranks["W + BA"] == result["full_rank"]:
        return Verdict("wrong", f"only the update is low rank (rank {ranks['BA']}); the adapted weight stays "
                                f"full rank ({ranks['W + BA']})")
    return Verdict("depends", "the adapted weight is not full rank here")


def measure_prefix(quick: bool = False) -> dict:
    from ..methods import get_method
    from ..models import load_base

    base, _ = load_base("tiny")
    P = 10

    def wrapped(method):
        model = copy.deepcopy(base)
        seen = {}  # positions the first decoder layer receives: what "the input" is to the transformer

        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen["positions"] = hidden.shape[1]

        model.model.layers[0].register_forward_pre_hook(record, with_kwargs=True)
        method = get_method(method)
        return method.finalize(method.apply(model, num_virtual_tokens=P)), seen  # prefix: its MLP folded away

    prefix, prefix_seen = wrapped("prefix")
    prompt, prompt_seen = wrapped("prompt")
    kv = prefix.prefix_key_values(batch_size=1)
    layers_with_prefix = sum(1 for k, v in kv if k.shape[-2] == P and v.shape[-2] == P)
    ids = torch.randint(2, base.config.vocab_size, (1, 6))
    with torch.no_grad():
        prefix(input_ids=ids)
        prompt(input_ids=ids)
    trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    return {"summary": f"prefix tuning (P = {P}): {P} keys and values in {layers_with_prefix} of "
                       f"{base.config.num_hidden_layers} layers, the input stays {prefix_seen['positions']} positions, "
                       f"{trainable(prefix):,} trainable; prompt tuning: the input grows {ids.shape[1]} -> "
                       f"{prompt_seen['positions']} positions, {trainable(prompt):,} trainable",
            "layers_with_prefix": layers_with_prefix, "layers": base.config.num_hidden_layers,
            "input_len": ids.shape[1], "prefix_len": prefix_seen["positions"], "prompt_len": prompt_seen["positions"]}


def rule_prefix(result: dict) -> Verdict:
    every_layer = result["layers_with_prefix"] == result["layers"]
    if every_layer and result["prefix_len"] == result["input_len"] and result["prompt_len"] > result["input_len"]:
        return Verdict("wrong", "prefix tuning prepends keys and values in every layer and leaves the input as it "
                                "is; adding vectors at the input is prompt tuning")
    return Verdict("depends", "this prefix implementation changes the input")


def measure_taxonomy(quick: bool = False) -> dict:
    from ..methods import METHODS
    from ..methods.lora import LoraLayer
    from ..methods.qlora import QLoraLayer

    families = {name: METHODS[name].family for name in ("lora", "adalora", "qlora", "houlsby", "pfeiffer", "prefix",
                                                         "prompt", "bitfit", "fisher", "fusion")}
    return {"summary": "registry families (the surveys' four; QLoRA placed by the course): "
                       + ", ".join(f"{k} {v}" for k, v in families.items())
                       + f"; QLoRA's layer is a LoRA layer: {issubclass(QLoraLayer, LoraLayer)}",
            "families": families, "qlora_is_lora": issubclass(QLoraLayer, LoraLayer)}


def rule_taxonomy(result: dict) -> Verdict:
    low_rank = {result["families"][m] for m in ("lora", "adalora", "qlora")}
    if low_rank == {"reparameterization"} and result["qlora_is_lora"]:
        return Verdict("wrong", "the surveys file LoRA and AdaLoRA under reparameterization, not additive methods; "
                                "QLoRA is LoRA on a 4-bit base, not a family of its own")
    return Verdict("depends", f"the registry files the low-rank methods under {sorted(low_rank)}")
