"""Ledger rows read from committed measurements: training speed, forgetting and sensitivity from the
reference sweep; inference latency and AdapterFusion from ``peftlab/claims_results.json`` (with the
function that re-measures latency)."""
from __future__ import annotations

import copy
import os
import statistics
import time

import torch

from .core import FUSION_COMMAND, LATENCY_COMMAND, RESULTS_PATH, Verdict, read_results


# --------------------------------------------------------------------------------------------------
# From the committed sweep: speed, forgetting, sensitivity
# --------------------------------------------------------------------------------------------------

FULL = "full"  # every claim here measures the PEFT methods against full fine-tuning: the reference, named once
PEFT_IN_SWEEP = ("lora", "qlora", "houlsby", "pfeiffer", "prompt", "prefix", "bitfit", "fisher", "adalora")
SPEED_LEVEL = 0.2  # learning level for "time to reach"
FORGETTING_LEVELS = (0.2, 0.4)


def _sweep_records():
    from ..sweep import REFERENCE_PATH, read_records

    return read_records(REFERENCE_PATH)


def measure_training_speed(quick: bool = False) -> dict:
    from .. import analysis
    from ..compare import CompareConfig

    records = analysis.runs(_sweep_records())
    choices = analysis.choose_lr(records, CompareConfig.steps)
    matched = analysis.matched_learning(records, SPEED_LEVEL)
    per_step, to_level = {}, {}
    for method in (FULL,) + PEFT_IN_SWEEP:
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
    peft = [m for m in per_step if m != FULL]
    faster_per_step = [m for m in peft if per_step[m] < per_step[FULL]]
    faster_to_level = [m for m in peft if to_level[m] is not None and to_level[FULL] is not None
                       and to_level[m] < to_level[FULL]]
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
    from .. import analysis

    records = analysis.runs(_sweep_records())
    out = {}
    for level in FORGETTING_LEVELS:
        matched = analysis.matched_learning(records, level)
        out[level] = {m: (None if not matched[m].reached else
                          (matched[m].forgetting.mean, matched[m].forgetting.low, matched[m].forgetting.high))
                      for m in (FULL,) + PEFT_IN_SWEEP if m in matched}
    parts = []
    for level, rows in out.items():
        parts.append(f"at learning {level}: " + ", ".join(
            f"{m} {'never' if v is None else f'{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]'}" for m, v in rows.items()))
    return {"summary": "forgetting (source recall lost, 95% interval) at matched learning; " + "; ".join(parts),
            "matched": {str(k): v for k, v in out.items()}}


def compare_to_full(rows: dict) -> dict[str, str]:
    """Per PEFT method reaching the level: 'less', 'more' or 'same' forgetting than full fine-tuning
    (non-overlapping 95% intervals, else 'same')."""
    full = rows.get(FULL)
    out = {}
    for method, value in rows.items():
        if method == FULL or value is None or full is None:
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
    from .. import analysis
    from ..compare import CompareConfig

    spread = analysis.sensitivity(analysis.runs(_sweep_records()), CompareConfig.steps)
    keep = {m: spread[m] for m in (FULL,) + PEFT_IN_SWEEP if m in spread}
    return {"summary": f"spread (max - min over 5 rates spanning two decades, at {CompareConfig.steps} steps) of test "
                       "learning / forgetting: " + ", ".join(f"{m} {v['learning']:.2f} / {v['forgetting']:.2f}"
                                                           for m, v in keep.items()),
            "spread": keep}


def rule_sensitivity(result: dict) -> Verdict:
    spread = result["spread"]
    full = spread[FULL]["learning"]
    peft = {m: v["learning"] for m, v in spread.items() if m != FULL}
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


BASE_VARIANT = "base"  # the untouched base: every latency is a ratio to its own


def latency_variants(base) -> dict[str, torch.nn.Module]:
    """The base and one copy per inference-time variant: adapters, LoRA unmerged and merged, prefix,
    prompt, QLoRA (4-bit base, dequantized every forward) and AdapterFusion of two Pfeiffer adapters."""
    from .. import apply_method
    from ..methods import get_method, lora as plora
    from ..methods.fusion import FusionConfig, apply_fusion

    def trained_looking(model, marker):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if marker in name:
                    param.normal_(std=0.01)  # a nonzero update, so merging changes the weights
        return model

    variants = {BASE_VARIANT: base}
    for name in ("houlsby", "pfeiffer"):
        variants[name] = apply_method(copy.deepcopy(base), name)
    lora = trained_looking(apply_method(copy.deepcopy(base), "lora"), "lora_B")
    variants["lora unmerged"] = lora
    variants["lora merged"] = plora.merge_and_unload(copy.deepcopy(lora))
    variants["prefix"] = get_method("prefix").finalize(apply_method(copy.deepcopy(base), "prefix"))  # MLP folded
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
    from ..models import load_base
    from ..utils import set_seed

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
        base_median = statistics.median(samples[BASE_VARIANT])
        out["ms_per_token"][str(batch)] = {n: 1e3 * statistics.median(s) for n, s in samples.items()}
        out["ratios"][str(batch)] = {n: statistics.median(s) / base_median for n, s in samples.items()}
        if rounds >= 2:
            q = statistics.quantiles([v / base_median for v in samples[BASE_VARIANT]], n=4) if rounds >= 4 else \
                [min(samples[BASE_VARIANT]) / base_median, 0, max(samples[BASE_VARIANT]) / base_median]
            out["noise"][str(batch)] = q[2] - q[0]
        else:
            out["noise"][str(batch)] = float("nan")
    return out


def summarize_latency(lat: dict) -> str:
    parts = []
    for batch, ratios in lat["ratios"].items():
        parts.append(f"batch {batch}: " + ", ".join(f"{n} {v:.2f}x" for n, v in ratios.items() if n != BASE_VARIANT)
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
