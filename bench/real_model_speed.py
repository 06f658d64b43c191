"""Every method on SmolLM2-135M: seconds per training step and peak bytes, as ratios to full fine-tuning.

One run, one base loaded once (``load_base("smollm2")``, offline), one batch of real English text
(``--batch-size`` x ``--seq-len`` tokens, default 4 x 128), the same for every method. Each method
gets a fresh copy of the base, one warm-up step, then ``--steps`` timed AdamW steps; the median is
reported (on a shared machine, run it twice and quote the quieter run).

Peak bytes: the course's memory probe (``peftlab.memory.probe_training_step``): weights + gradients +
AdamW state + the activations autograd saves for backward, counted tensor by tensor; on CUDA also
``torch.cuda.max_memory_allocated`` over the step.

    python bench/real_model_speed.py                         # every method, 4 x 128 tokens, 3 steps each
    python bench/real_model_speed.py --methods full,lora,qlora --steps 5

The printed numbers are the ones to quote (set OMP_NUM_THREADS on a shared CPU).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from peftlab import apply_method, format_bytes, get_device, load_base, set_seed  # noqa: E402
from peftlab.methods import trainable_count  # noqa: E402
from peftlab.memory import probe_training_step  # noqa: E402
from peftlab.state import model_hooks  # noqa: E402
from peftlab.train import TrainConfig, make_optimizer  # noqa: E402
from peftlab.world import english_paragraphs  # noqa: E402

METHODS = ["full", "lora", "qlora", "houlsby", "pfeiffer", "prefix", "prompt", "bitfit", "fisher", "adalora"]
OPTIONS = {"bitfit": {"add_missing_biases": True}, "fisher": {"n_samples": 16}}  # SmolLM2 has no biases


def text_batch(tokenizer, batch_size: int, seq_len: int, device) -> dict:
    """``batch_size`` rows of ``seq_len`` tokens of held-out English, labels = inputs."""
    ids = tokenizer.encode(" ".join(english_paragraphs("heldout")), add_special_tokens=False)
    rows = torch.tensor(ids[: batch_size * seq_len]).view(batch_size, seq_len).to(device)
    return {"input_ids": rows, "attention_mask": torch.ones_like(rows), "labels": rows.clone()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.methods.split(",")]
    device = get_device()
    start = time.time()
    base, tokenizer = load_base("smollm2", device=device)
    print(f"SmolLM2-135M loaded in {time.time() - start:.1f} s; batch {args.batch_size} x {args.seq_len} tokens; "
          f"{torch.get_num_threads()} threads")
    batch = text_batch(tokenizer, args.batch_size, args.seq_len, device)
    runs = {}
    for name in names:  # one fresh copy at a time beyond the base: the probe's bytes, a warm-up step, timed steps
        set_seed(0)
        options = dict(OPTIONS.get(name, {}), **({"total_step": args.steps + 2} if name == "adalora" else {}))
        model = apply_method(copy.deepcopy(base), name, **options)
        memory = probe_training_step(model, batch, label=name)
        optimizer = make_optimizer(model, TrainConfig(lr=1e-5))
        step(model, optimizer, batch)  # warm-up
        times = [step(model, optimizer, batch, i + 1) for i in range(args.steps)]
        runs[name] = {"memory": memory, "times": times, "trainable": trainable_count(model).trainable}  # a mask: its entries
        print(f"  {name}: {statistics.median(times):.2f} s/step", flush=True)
        del model, optimizer
    full = runs.get("full")
    print(f"\n{'method':<10}{'trainable':>14}{'s/step':>9}{'x full':>8}{'peak bytes (probe)':>20}{'x full':>8}"
          + ("   cuda peak" if device.type == "cuda" else ""))
    for name in names:
        run = runs[name]
        seconds, peak = statistics.median(run["times"]), run["memory"].total
        ratio_t = seconds / statistics.median(full["times"]) if full else float("nan")
        ratio_m = peak / full["memory"].total if full else float("nan")
        cuda = f"   {format_bytes(run['memory'].peak)}" if run["memory"].peak else ""
        print(f"{name:<10}{run['trainable']:>14,}{seconds:>9.2f}{ratio_t:>8.2f}{format_bytes(peak):>20}{ratio_m:>8.2f}{cuda}")
    print(f"\n({time.time() - start:.0f} s in all)")
    return 0


def step(model, optimizer, batch, index: int = 0) -> float:
    """One AdamW step with the method's hooks (the Fisher mask, AdaLoRA's ranks) as the loop calls them; its seconds."""
    begin = time.perf_counter()
    model.train()
    hooks = model_hooks(model)
    loss = model(**batch).loss
    for hook in hooks:
        extra = hook.extra_loss(model, index)
        loss = loss if extra is None else loss + extra
    loss.backward()
    for hook in hooks:
        hook.before_step(model, index, optimizer)
    optimizer.step()
    for hook in hooks:
        hook.after_step(model, index, optimizer)
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - begin


if __name__ == "__main__":
    raise SystemExit(main())
