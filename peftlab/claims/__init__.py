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

import time

from .arithmetic import (PALM_540B, RTX3090_MODELS, measure_56gb, measure_175b, measure_540b, measure_four_copies,
                         measure_low_rank, measure_prefix, measure_rtx3090, measure_storage, measure_taxonomy,
                         rule_56gb, rule_175b, rule_540b, rule_four_copies, rule_low_rank, rule_prefix,
                         rule_rtx3090, rule_storage, rule_taxonomy)
from .core import (FUSION_COMMAND, GB, LATENCY_COMMAND, RESULTS_PATH, VERDICTS, Claim, Settled, Verdict,
                   read_results, write_results)
from .measured import (FUSION_MARGIN, PEFT_IN_SWEEP, compare_to_full, inference_latency, latency_result,
                       latency_variants, measure_forgetting, measure_fusion, measure_latency, measure_sensitivity,
                       measure_training_speed, rule_forgetting, rule_fusion, rule_latency, rule_sensitivity,
                       rule_training_speed, summarize_latency)

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
          "common claim; the families are the four of Lialin et al. 2023 (Scaling Down to Scale Up, arXiv "
          "2303.15647, section 3; methods up to February 2023) and Han et al. 2024 (LoRA and its derivatives as "
          "reparameterized PEFT); QLoRA (May 2023) is placed by the course, not by either survey",
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
    from ..utils import is_quick

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


__all__ = [
    "Claim", "FUSION_COMMAND", "FUSION_MARGIN", "GB", "LATENCY_COMMAND", "LEDGER", "PALM_540B", "PEFT_IN_SWEEP",
    "RESULTS_PATH", "RTX3090_MODELS", "SWEEP_COMMAND", "Settled", "VERDICTS", "Verdict", "compare_to_full",
    "format_ledger", "format_row", "get_claim", "inference_latency", "latency_result", "latency_variants", "ledger",
    "measure_175b", "measure_540b", "measure_56gb", "measure_forgetting", "measure_four_copies", "measure_fusion",
    "measure_latency", "measure_low_rank", "measure_prefix", "measure_rtx3090", "measure_sensitivity",
    "measure_storage", "measure_taxonomy", "measure_training_speed", "read_results", "rule_175b", "rule_540b",
    "rule_56gb", "rule_forgetting", "rule_four_copies", "rule_fusion", "rule_latency", "rule_low_rank", "rule_prefix",
    "rule_rtx3090", "rule_sensitivity", "rule_storage", "rule_taxonomy", "rule_training_speed", "settle",
    "summarize_latency", "verdict_table", "write_results",
]
