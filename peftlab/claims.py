"""The claims ledger: claims about fine-tuning that students meet, each settled by an experiment.

Every row is data: the claim as commonly stated, its source (a citation where it has one), the
experiment or arithmetic that settles it (a function here, with the lecture section that teaches it
and the command that reproduces it) and a *verdict rule*: a function from the measured result to one
of ``holds``, ``holds only if``, ``wrong`` or ``depends``. Nothing here types a verdict; each is
computed from the number the experiment returns, so a different machine, model or sweep can turn it.

Fast rows are computed on the spot (arithmetic, configs counted on the meta device, the tiny base).
Slow rows read committed results: the learning-rate sweep ``peftlab/sweeps/reference.jsonl``
(``python -m peftlab sweep --reference``) and ``peftlab/claims_results.json`` (inference latency:
``python -m peftlab claims --measure latency``; AdapterFusion on every task:
``python bench/multitask_fusion.py``, copied in with ``python -m peftlab claims --fusion-from FILE``).

    python -m peftlab claims              # the whole ledger: result and verdict of every row
    python -m peftlab claims --only 56gb  # one row

Lecture 13 walks through the ledger; ``tests/test_claims.py`` checks that every row has an experiment
and a verdict rule and that every verdict follows from its result.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

VERDICTS = ("holds", "holds only if", "wrong", "depends")
RESULTS_PATH = Path(__file__).parent / "claims_results.json"  # the committed slow results
LATENCY_COMMAND = "python -m peftlab claims --measure latency"
FUSION_COMMAND = "python bench/multitask_fusion.py  # then: python -m peftlab claims --fusion-from results/multitask_fusion.json"
GB = 10**9  # what the claims and GPU spec sheets call a gigabyte


@dataclass(frozen=True)
class Verdict:
    """A verdict word (one of ``VERDICTS``) and the condition or reason that goes with it."""

    word: str
    why: str

    def __post_init__(self):
        if self.word not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.word!r}")

    def __str__(self) -> str:
        return f"{self.word}: {self.why}"


@dataclass(frozen=True)
class Claim:
    """One row of the ledger."""

    key: str
    claim: str  # as commonly stated
    source: str  # who says it (a citation where one exists)
    experiment: str  # what settles it, in one sentence
    where: str  # the lecture section that measures or teaches it
    command: str  # how to reproduce the number
    measure: Callable[..., dict]  # (quick: bool) -> result dict with a "summary" line
    rule: Callable[[dict], Verdict]  # result -> verdict
    rule_text: str  # the verdict rule in words
    slow: bool = False  # True: the result is read from committed results, not computed


@dataclass
class Settled:
    claim: Claim
    result: dict
    verdict: Verdict
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Memory arithmetic
# --------------------------------------------------------------------------------------------------


def measure_56gb(quick: bool = False) -> dict:
    """Every reading of "a 7B model with Adam in FP16 needs 56 GB"."""
    from . import memory

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
    from . import memory

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
    from . import memory

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
    from . import memory

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
    from . import memory
    from .models import load_base

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
    from . import apply_method, memory
    from .methods import lora as plora
    from .methods import sparse
    from .models import load_base

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
                       f"LoRA adapter {lora_7b / 1e6:.0f} MB", "full": full_bytes, "lora": lora_bytes,
            "sparse": sparse_bytes, "full_7b": full_7b, "lora_7b": lora_7b}


def rule_storage(result: dict) -> Verdict:
    small = max(result["lora"], result["sparse"]) / result["full"]
    if small < 0.1 and result["lora_7b"] / result["full_7b"] < 0.01:
        return Verdict("holds", f"an adapter or sparse difference is at most {small:.1%} of the checkpoint here, "
                                f"{result['lora_7b'] / result['full_7b']:.2%} at 7B")
    return Verdict("depends", f"the adapter is {small:.0%} of the checkpoint on this model")


# --------------------------------------------------------------------------------------------------
# Structure: what low-rank and prefix methods change
# --------------------------------------------------------------------------------------------------


def measure_low_rank(quick: bool = False) -> dict:
    from . import apply_method
    from .methods import lora as plora
    from .models import load_base

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
    from . import apply_method
    from .models import load_base

    base, _ = load_base("tiny")
    P = 10

    def wrapped(method):
        model = copy.deepcopy(base)
        seen = {}  # positions the first decoder layer receives: what "the input" is to the transformer

        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen["positions"] = hidden.shape[1]

        model.model.layers[0].register_forward_pre_hook(record, with_kwargs=True)
        model = apply_method(model, method, num_virtual_tokens=P)
        return (model.fold() if method == "prefix" else model), seen

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
    from .methods import METHODS
    from .methods.lora import LoraLayer
    from .methods.qlora import QLoraLayer

    families = {name: METHODS[name].family for name in ("lora", "adalora", "qlora", "houlsby", "pfeiffer", "prefix",
                                                         "prompt", "bitfit", "fisher", "fusion")}
    return {"summary": "registry families (Lialin et al. 2023; Han et al. 2024): "
                       + ", ".join(f"{k} {v}" for k, v in families.items())
                       + f"; QLoRA's layer is a LoRA layer: {issubclass(QLoraLayer, LoraLayer)}",
            "families": families, "qlora_is_lora": issubclass(QLoraLayer, LoraLayer)}


def rule_taxonomy(result: dict) -> Verdict:
    low_rank = {result["families"][m] for m in ("lora", "adalora", "qlora")}
    if low_rank == {"reparameterization"} and result["qlora_is_lora"]:
        return Verdict("wrong", "the surveys file LoRA and AdaLoRA under reparameterization, not additive methods; "
                                "QLoRA is LoRA on a 4-bit base, not a family of its own")
    return Verdict("depends", f"the registry files the low-rank methods under {sorted(low_rank)}")


# --------------------------------------------------------------------------------------------------
# From the committed sweep: speed, forgetting, sensitivity
# --------------------------------------------------------------------------------------------------

PEFT_IN_SWEEP = ("lora", "qlora", "houlsby", "pfeiffer", "prompt", "prefix", "bitfit", "fisher", "adalora")
SPEED_LEVEL = 0.2  # learning level for "time to reach"
FORGETTING_LEVELS = (0.2, 0.4)


def _sweep_records():
    from .sweep import REFERENCE_PATH, read_records

    return read_records(REFERENCE_PATH)


def measure_training_speed(quick: bool = False) -> dict:
    from . import analysis
    from .compare import CompareConfig

    records = analysis.runs(_sweep_records())
    choices = analysis.choose_lr(records, CompareConfig.steps)
    matched = analysis.matched_learning(records, SPEED_LEVEL)
    per_step, to_level = {}, {}
    for method in ("full",) + PEFT_IN_SWEEP:
        rows = [r for r in records if r["method"] == method and r["lr"] == choices[method].lr]
        per_step[method] = statistics.median(r["seconds_per_step"] for r in rows)
        m = matched.get(method)
        if m is not None and m.reached:
            at_rate = [r["seconds_per_step"] for r in records if r["method"] == method and r["lr"] == m.lr]
            to_level[method] = m.step.mean * statistics.median(at_rate)
        else:
            to_level[method] = None
    fmt = lambda s: "never" if s is None else f"{s:.0f} s"  # noqa: E731
    return {"summary": "seconds per step (median, chosen rate): " + ", ".join(f"{k} {v:.2f}" for k, v in per_step.items())
                       + f"; seconds to reach learning {SPEED_LEVEL}: "
                       + ", ".join(f"{k} {fmt(v)}" for k, v in to_level.items()),
            "per_step": per_step, "to_level": to_level}


def rule_training_speed(result: dict) -> Verdict:
    per_step, to_level = result["per_step"], result["to_level"]
    peft = [m for m in per_step if m != "full"]
    faster_per_step = [m for m in peft if per_step[m] < per_step["full"]]
    faster_to_level = [m for m in peft if to_level[m] is not None and to_level["full"] is not None
                       and to_level[m] < to_level["full"]]
    if len(faster_per_step) == len(peft) and len(faster_to_level) == len(peft):
        return Verdict("holds", "every PEFT method is faster per step and to the learning level")
    if faster_per_step and not faster_to_level:
        return Verdict("holds only if", f"counted per step ({len(faster_per_step)} of {len(peft)} methods are faster "
                                        f"per step); none reaches learning {SPEED_LEVEL} sooner than full fine-tuning")
    if not faster_per_step:
        return Verdict("wrong", "no PEFT method is faster per step here")
    return Verdict("depends", f"faster per step: {', '.join(faster_per_step)}; sooner to learning {SPEED_LEVEL}: "
                              f"{', '.join(faster_to_level) or 'none'}")


def measure_forgetting(quick: bool = False) -> dict:
    from . import analysis

    records = analysis.runs(_sweep_records())
    out = {}
    for level in FORGETTING_LEVELS:
        matched = analysis.matched_learning(records, level)
        out[level] = {m: (None if not matched[m].reached else
                          (matched[m].forgetting.mean, matched[m].forgetting.low, matched[m].forgetting.high))
                      for m in ("full",) + PEFT_IN_SWEEP if m in matched}
    parts = []
    for level, rows in out.items():
        parts.append(f"at learning {level}: " + ", ".join(
            f"{m} {'never' if v is None else f'{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]'}" for m, v in rows.items()))
    return {"summary": "forgetting (source recall lost, 95% interval) at matched learning; " + "; ".join(parts),
            "matched": {str(k): v for k, v in out.items()}}


def compare_to_full(rows: dict) -> dict[str, str]:
    """Per PEFT method reaching the level: 'less', 'more' or 'same' forgetting than full fine-tuning
    (non-overlapping 95% intervals, else 'same')."""
    full = rows.get("full")
    out = {}
    for method, value in rows.items():
        if method == "full" or value is None or full is None:
            continue
        out[method] = "more" if value[1] > full[2] else "less" if value[2] < full[1] else "same"
    return out


def rule_forgetting(result: dict) -> Verdict:
    outcome = {}
    for level, rows in result["matched"].items():
        for method, cmp in compare_to_full(rows).items():
            outcome[f"{method}@{level}"] = cmp
    if not outcome:
        return Verdict("depends", "no PEFT method reaches the learning levels")
    kinds = set(outcome.values())
    if kinds == {"less"}:
        return Verdict("holds", "every PEFT method that learns as much forgets less")
    if kinds == {"more"}:
        return Verdict("wrong", "at matched learning every PEFT method that gets there forgets more than full "
                                "fine-tuning on this model (non-overlapping intervals)")
    more = sorted(k for k, v in outcome.items() if v == "more")
    return Verdict("depends", f"forgets more: {', '.join(more) or 'none'}; the rest overlap or forget less")


def measure_sensitivity(quick: bool = False) -> dict:
    from . import analysis
    from .compare import CompareConfig

    spread = analysis.sensitivity(analysis.runs(_sweep_records()), CompareConfig.steps)
    keep = {m: spread[m] for m in ("full",) + PEFT_IN_SWEEP if m in spread}
    return {"summary": f"spread (max - min over 5 rates spanning two decades, at {CompareConfig.steps} steps) of test "
                       "learning / forgetting: " + ", ".join(f"{m} {v['learning']:.2f} / {v['forgetting']:.2f}"
                                                           for m, v in keep.items()),
            "spread": keep}


def rule_sensitivity(result: dict) -> Verdict:
    spread = result["spread"]
    full = spread["full"]["learning"]
    peft = {m: v["learning"] for m, v in spread.items() if m != "full"}
    more = sorted(m for m, v in peft.items() if v > full)
    if len(more) == len(peft):
        return Verdict("holds", "every PEFT method's learning varies more over the rate grid than full fine-tuning's")
    if not more:
        return Verdict("wrong", f"no PEFT method's learning varies more over the rate grid than full fine-tuning's "
                                f"({full:.2f})")
    return Verdict("depends", f"more sensitive than full fine-tuning ({full:.2f}): {', '.join(more)}; "
                              f"less: {', '.join(sorted(set(peft) - set(more)))}")


# --------------------------------------------------------------------------------------------------
# Committed slow results: inference latency and AdapterFusion
# --------------------------------------------------------------------------------------------------


def read_results(path: Path | str = RESULTS_PATH) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(key: str, value: dict, path: Path | str = RESULTS_PATH) -> None:
    results = read_results(path)
    results[key] = value
    Path(path).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def latency_variants(base) -> dict[str, torch.nn.Module]:
    """The base and one copy per inference-time variant: adapters, LoRA unmerged and merged, prefix,
    prompt, QLoRA (4-bit base, dequantized every forward) and AdapterFusion of two Pfeiffer adapters."""
    from . import apply_method
    from .methods import lora as plora
    from .methods.fusion import FusionConfig, apply_fusion

    def trained_looking(model, marker):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if marker in name:
                    param.normal_(std=0.01)  # a nonzero update, so merging changes the weights
        return model

    variants = {"base": base}
    for name in ("houlsby", "pfeiffer"):
        variants[name] = apply_method(copy.deepcopy(base), name)
    lora = trained_looking(apply_method(copy.deepcopy(base), "lora"), "lora_B")
    variants["lora unmerged"] = lora
    variants["lora merged"] = plora.merge_and_unload(copy.deepcopy(lora))
    variants["prefix"] = apply_method(copy.deepcopy(base), "prefix").fold()
    variants["prompt"] = apply_method(copy.deepcopy(base), "prompt")
    variants["qlora"] = trained_looking(apply_method(copy.deepcopy(base), "qlora"), "lora_B")
    states = {}
    for task in ("task_a", "task_b"):
        adapted = trained_looking(apply_method(copy.deepcopy(base), "pfeiffer"), ".adapter.up")
        states[task] = {n: p.detach().clone() for n, p in adapted.named_parameters() if ".adapter." in n}
    variants["fusion"] = apply_fusion(copy.deepcopy(base), states, FusionConfig())
    for model in variants.values():
        model.eval()
    return variants


@torch.inference_mode()
def _generate_seconds(model, input_ids, n_new: int) -> float:
    start = time.perf_counter()
    model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n_new, min_new_tokens=n_new,
                   do_sample=False, pad_token_id=1)
    return time.perf_counter() - start


def inference_latency(batch_sizes=(1, 16), new_tokens: int = 32, rounds: int = 5, prompt_len: int = 16,
                      progress: bool = False) -> dict:
    """Per-token decoding latency of every variant as a ratio to the base, at each batch size.

    Per-token latency = (time for ``new_tokens`` - time for 1) / (``new_tokens`` - 1): the prefill
    cancels. Rounds visit the variants in rotating order; medians over rounds; the base's own spread
    (upper minus lower quartile over its median) is reported as the noise level.
    """
    from .models import load_base
    from .utils import set_seed

    set_seed(0)
    base, _ = load_base("tiny")
    variants = latency_variants(base)
    names = list(variants)
    out = {"batch_sizes": list(batch_sizes), "new_tokens": new_tokens, "rounds": rounds, "prompt_len": prompt_len,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0],
           "device": "cpu", "ratios": {}, "noise": {}, "ms_per_token": {}}
    for batch in batch_sizes:
        ids = torch.randint(2, base.config.vocab_size, (batch, prompt_len))
        for name in names:  # warm-up
            _generate_seconds(variants[name], ids, 2)
        samples = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                full = _generate_seconds(variants[name], ids, new_tokens)
                one = _generate_seconds(variants[name], ids, 1)
                samples[name].append((full - one) / (new_tokens - 1))
            if progress:
                print(f"batch {batch}: round {r + 1}/{rounds}", flush=True)
        base_median = statistics.median(samples["base"])
        out["ms_per_token"][str(batch)] = {n: 1e3 * statistics.median(s) for n, s in samples.items()}
        out["ratios"][str(batch)] = {n: statistics.median(s) / base_median for n, s in samples.items()}
        if rounds >= 2:
            q = statistics.quantiles([v / base_median for v in samples["base"]], n=4) if rounds >= 4 else \
                [min(samples["base"]) / base_median, 0, max(samples["base"]) / base_median]
            out["noise"][str(batch)] = q[2] - q[0]
        else:
            out["noise"][str(batch)] = float("nan")
    return out


def summarize_latency(lat: dict) -> str:
    parts = []
    for batch, ratios in lat["ratios"].items():
        parts.append(f"batch {batch}: " + ", ".join(f"{n} {v:.2f}x" for n, v in ratios.items() if n != "base")
                     + f" (base noise {lat['noise'][batch]:.2f})")
    return "per-token latency / base; " + "; ".join(parts)


def latency_result(lat: dict) -> dict:
    return {"summary": summarize_latency(lat), **lat}


def measure_latency(quick: bool = False) -> dict:
    saved = read_results().get("latency")
    if saved is None:
        raise FileNotFoundError(f"no committed latency results in {RESULTS_PATH.name}; run `{LATENCY_COMMAND}`")
    return latency_result(saved)


def rule_latency(result: dict) -> Verdict:
    """Slower beyond the base's own spread at batch 1 = slower; merged LoRA must stay within it."""
    unmergeable = ("houlsby", "pfeiffer", "fusion")
    b1 = str(result["batch_sizes"][0])
    noise = result["noise"][b1]
    ratios = result["ratios"][b1]
    slower = [n for n in unmergeable if ratios[n] > 1 + max(noise, 0.02)]
    merged_free = ratios["lora merged"] <= 1 + max(noise, 0.02)
    big = str(result["batch_sizes"][-1])
    slower_big = [n for n in unmergeable if result["ratios"][big][n] > 1 + max(result["noise"][big], 0.02)]
    if len(slower) == len(unmergeable) and merged_free:
        return Verdict("holds only if", f"the added modules stay unmerged: {', '.join(slower)} are slower at batch {b1} "
                                        f"(and {len(slower_big)} of 3 at batch {big}); merged LoRA costs nothing")
    if not slower:
        return Verdict("wrong", f"no adapter is slower than the base beyond the noise ({noise:.2f}) at batch {b1}")
    return Verdict("depends", f"slower at batch {b1}: {', '.join(slower)}; merged LoRA within the noise: {merged_free}")


def measure_fusion(quick: bool = False) -> dict:
    saved = read_results().get("fusion")
    if saved is None:
        raise FileNotFoundError(f"no committed AdapterFusion results in {RESULTS_PATH.name}; run `{FUSION_COMMAND}`")
    rows, tasks = saved["rows"], saved["tasks"]
    gains = {t: rows[f"fusion->{t}"][t] - rows[f"adapter[{t}]"][t] for t in tasks}
    vs_mixed = {t: rows[f"fusion->{t}"][t] - rows["pfeiffer (mixed)"][t] for t in tasks}
    return {"summary": "fusion trained on a task minus that task's single adapter: "
                       + ", ".join(f"{t} {g:+.3f}" for t, g in gains.items())
                       + "; minus one adapter trained on the mixed tasks: "
                       + ", ".join(f"{t} {g:+.3f}" for t, g in vs_mixed.items()),
            "gains": gains, "vs_mixed": vs_mixed, "command": saved["command"]}


FUSION_MARGIN = 0.02  # a metric difference smaller than this is a tie (evaluation sets of 100-200 examples)


def rule_fusion(result: dict) -> Verdict:
    better = [t for t, g in result["gains"].items() if g > FUSION_MARGIN]
    worse = [t for t, g in result["gains"].items() if g < -FUSION_MARGIN]
    if better and not worse:
        return Verdict("holds", f"fusion beats the single adapter on {', '.join(better)}")
    if worse and not better:
        return Verdict("wrong", f"fusion is worse than the task's own adapter on {', '.join(worse)}, "
                                f"never better beyond {FUSION_MARGIN}")
    if not better and not worse:
        return Verdict("holds only if", "counted as keeping the single adapters' results (within "
                                        f"{FUSION_MARGIN} on every task), not as improving on them")
    return Verdict("depends", f"better on {', '.join(better)}, worse on {', '.join(worse)}")


# --------------------------------------------------------------------------------------------------
# The ledger
# --------------------------------------------------------------------------------------------------

SWEEP_COMMAND = "python -m peftlab sweep --reference  # the committed peftlab/sweeps/reference.jsonl"

LEDGER: list[Claim] = [
    Claim("56gb", '"A 7B-parameter model fine-tuned with the Adam optimizer in FP16 needs 56 GB of memory."',
          "common claim (blog posts and course notes); the accounting is ZeRO's (Rajbhandari et al. 2020, section 3.1)",
          "bytes per parameter of weights, gradients and AdamW states in every precision regime, x 7e9; plus "
          "activations of Llama-2-7B from its config", "lecture 02, section 2",
          "python -m peftlab memory --model llama-2-7b --method full --precision fp16",
          measure_56gb, rule_56gb, "holds if standard mixed precision gives 56 GB; holds only if some other reading "
          "does; wrong if none does"),
    Claim("gpt4-175b", '"GPT-4 (175B parameters)"', "common claim; 175B is GPT-3's size (Brown et al. 2020, Table 2.1)",
          "count GPT-3's published architecture from its config", "lecture 02, section 2",
          "python -m peftlab memory --model gpt3-175b --method full", measure_175b, rule_175b,
          "wrong if GPT-3's architecture counts 175B (within 1%) and GPT-4's size is unpublished"),
    Claim("palm-540b", '"PaLM has 540B parameters"', "Chowdhery et al. 2022, Table 1",
          "count PaLM's published architecture (multi-query attention, SwiGLU, shared embeddings, no biases)",
          "lecture 13, section 1", "python -m peftlab claims --only palm-540b", measure_540b, rule_540b,
          "holds if the architecture counts 540B within 1%"),
    Claim("rtx3090", '"PEFT lets you fine-tune a 7B model on a 24 GB RTX 3090."',
          "common claim; QLoRA (Dettmers et al. 2023, section 1) fine-tunes 65B on one 48 GB GPU",
          "the memory estimator per model size and method, one 512-token sequence, mixed precision",
          "lecture 02, sections 6-7", "python -m peftlab memory --model all --gpu rtx3090",
          measure_rtx3090, rule_rtx3090, "holds only if some PEFT method fits 7B and full fine-tuning does not; "
          "wrong if none fits"),
    Claim("four-copies", '"Full fine-tuning keeps four copies of the model in memory."',
          "common claim (weights, gradients and Adam's two moments)",
          "one AdamW step on the tiny base, probed: (weights + gradients + optimizer state) / weights; mixed "
          "precision by the regime's bytes", "lecture 01 and lecture 02, section 4",
          "python -m peftlab claims --only four-copies", measure_four_copies, rule_four_copies,
          "holds if 4x in fp32 and mixed precision; holds only if 4x in fp32 alone"),
    Claim("storage", '"PEFT stores a few megabytes per task instead of a full copy of the model."',
          "common claim; Houlsby et al. 2019 (abstract): adapters add only a few trainable parameters per task",
          "bytes on disk per task on the tiny base (full safetensors, LoRA adapter, 0.5% sparse difference) and at 7B",
          "lecture 03 (saving), lecture 07, section 6", "python -m peftlab claims --only storage",
          measure_storage, rule_storage, "holds if the adapter and the sparse difference are under 10% of the "
          "checkpoint here and LoRA under 1% at 7B"),
    Claim("latency", '"Adapter-based methods introduce additional computational steps, slightly slowing down inference."',
          "Hu et al. 2021 (LoRA), section 3 ('Adapter Layers Introduce Inference Latency', Table 1: measured at "
          "small batches) and section 4.1 (merged LoRA adds none)",
          "per-token generation latency / base at batch 1 and 16: Houlsby, Pfeiffer, LoRA unmerged and merged, "
          "prefix, prompt, QLoRA, AdapterFusion", "lecture 04, section 7", LATENCY_COMMAND,
          measure_latency, rule_latency, "holds only if the unmergeable adapters are slower than the base's "
          "noise at batch 1 while merged LoRA is not; wrong if none is slower", slow=True),
    Claim("faster-training", '"PEFT trains faster."', "common claim",
          "seconds per step and seconds to reach test learning 0.2, from the committed sweep's timings",
          "lecture 12; lecture 04, section 6", SWEEP_COMMAND, measure_training_speed, rule_training_speed,
          "holds if faster both per step and to the learning level; holds only if faster per step only", slow=True),
    Claim("forgetting", '"PEFT mitigates catastrophic forgetting."',
          "common claim; Biderman et al. 2024 (LoRA Learns Less and Forgets Less) measure it for LoRA",
          "forgetting at matched learning (0.2 and 0.4) from the frontier of the committed sweep, 95% intervals",
          "lecture 12, section 6", SWEEP_COMMAND, measure_forgetting, rule_forgetting,
          "holds if every PEFT method that reaches the level forgets less (non-overlapping intervals); wrong if "
          "every one forgets more; depends otherwise", slow=True),
    Claim("sensitivity", '"PEFT methods are sensitive to hyperparameters."', "common claim",
          "spread of test learning and forgetting across each method's learning-rate grid (committed sweep)",
          "lecture 12, section 5 (the rate plot)", SWEEP_COMMAND, measure_sensitivity, rule_sensitivity,
          "holds if every PEFT method's learning spread exceeds full fine-tuning's; wrong if none does", slow=True),
    Claim("fusion", '"AdapterFusion enables multi-task learning: it combines what task adapters learned."',
          "Pfeiffer et al. 2021 (AdapterFusion), section 1 and Table 1",
          "fusion trained on each task vs that task's single adapter and vs one adapter on the mixed tasks",
          "lecture 11, section 6", FUSION_COMMAND, measure_fusion, rule_fusion,
          f"holds if fusion beats the task's adapter by more than {FUSION_MARGIN} somewhere and loses nowhere; "
          "wrong if it only loses", slow=True),
    Claim("low-rank", '"Low-rank methods approximate the weight matrices with low-rank ones."', "common claim",
          "matrix rank of W, of the LoRA update and of W + update in one layer of the tiny base",
          "lecture 03; lecture 12, section 8 (the rank of the full update)", "python -m peftlab claims --only low-rank",
          measure_low_rank, rule_low_rank, "wrong if the update's rank is at most r while W + update is full rank"),
    Claim("prefix", '"Prefix tuning appends trainable vectors to the input."', "common claim; Li & Liang 2021, "
          "section 4.2 (a prefix of activations in every layer); Lester et al. 2021 (prompt tuning: the input only)",
          "where the prefix goes: key/value pairs per layer vs input length, prefix vs prompt tuning",
          "lecture 05", "python -m peftlab claims --only prefix", measure_prefix, rule_prefix,
          "wrong if every layer gets prefix keys and values while the input length is unchanged"),
    Claim("taxonomy", '"LoRA and its variants are additive methods; QLoRA is a family of its own."',
          "common claim; the surveys: Lialin et al. 2023 (Scaling Down to Scale Up), Han et al. 2024 "
          "(Parameter-Efficient Fine-Tuning for Large Models: A Comprehensive Survey)",
          "the registry's survey families and QLoRA's layer class", "lecture 13, section 3",
          "python -m peftlab methods", measure_taxonomy, rule_taxonomy,
          "wrong if LoRA, AdaLoRA and QLoRA are reparameterization methods and QLoRA's layer is a LoRA layer"),
]


def get_claim(key: str) -> Claim:
    for claim in LEDGER:
        if claim.key == key:
            return claim
    raise KeyError(f"no claim {key!r}; claims: {', '.join(c.key for c in LEDGER)}")


def settle(claim: Claim | str, quick: bool | None = None) -> Settled:
    """Run (or read) the claim's experiment and apply its verdict rule."""
    from .utils import is_quick

    claim = get_claim(claim) if isinstance(claim, str) else claim
    start = time.perf_counter()
    result = claim.measure(quick=is_quick() if quick is None else quick)
    verdict = claim.rule(result)
    return Settled(claim, result, verdict, time.perf_counter() - start)


def ledger(keys=None, quick: bool | None = None) -> list[Settled]:
    return [settle(c, quick) for c in LEDGER if keys is None or c.key in keys]


def format_row(row: Settled) -> str:
    c = row.claim
    return (f"[{c.key}] {c.claim}\n  source:     {c.source}\n  experiment: {c.experiment} ({c.where})\n"
            f"  command:    {c.command}\n  result:     {row.result['summary']}\n  verdict:    {row.verdict}")


def format_ledger(rows: list[Settled]) -> str:
    return "\n\n".join(format_row(r) for r in rows)


def verdict_table(rows: list[Settled]) -> str:
    """A compact table: one line per claim with its verdict word."""
    width = max(len(r.claim.key) for r in rows)
    return "\n".join(f"{r.claim.key:<{width}}  {r.verdict.word:<14} {'(committed results)' if r.claim.slow else ''}"
                     for r in rows)


__all__ = ["Claim", "FUSION_COMMAND", "LATENCY_COMMAND", "LEDGER", "PALM_540B", "RESULTS_PATH", "Settled", "VERDICTS",
           "Verdict", "compare_to_full", "format_ledger", "format_row", "get_claim", "inference_latency",
           "latency_result", "ledger", "read_results", "settle", "verdict_table", "write_results"]
