"""Estimate vs probe vs the CUDA allocator: does the memory model hold on a GPU?

For a few training configurations (precision, method, checkpointing, optimizer) this script runs
real training steps and prints, side by side:

- the estimate (``peftlab.memory.estimate``): weights + gradients + optimizer state + activations;
- the probe (``peftlab.memory.probe_training_step``): the same buckets counted tensor by tensor;
- ``torch.cuda.max_memory_allocated`` over the second step (the first allocates the optimizer state),
  which also sees temporaries (the logits' gradient, casts, attention workspaces) that neither counts;

and the ratios probe/estimate (activations) and peak/estimate (whole step). With gradient
checkpointing the probe sees only what the forward pass keeps (each layer's input), while the
estimate adds the one layer rebuilt during backward, which only the allocator's peak can see. The numbers go to a JSON
file with the exact command in its ``meta``.

Run on a CUDA machine (about a minute on one GPU):

    python bench/memory_gpu.py                      # writes results/memory_gpu.json
    python bench/memory_gpu.py --allow-cpu --quick  # a CPU dry run of the same code (no allocator peak)

Models are built from configs with random weights (no download): the tiny base's shape and
SmolLM2-135M's. LoRA rows need ``peft``; the 8-bit row needs ``bitsandbytes``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def build(preset: str, dtype: torch.dtype, device: torch.device, attention: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    from peftlab import memory

    torch.manual_seed(0)
    config = memory.preset_config(preset)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=dtype).to(device)


def prepare(model, method: str, rank: int):
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
        return get_peft_model(model, LoraConfig(r=rank, target_modules=targets, lora_dropout=0.0,
                                                autocast_adapter_dtype=False))
    raise ValueError(f"unknown method {method!r}")


def make_optimizer(name: str, params):
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-4)
    return torch.optim.AdamW(params, lr=1e-4)


CONFIGS = [
    # (preset, precision, method, optimizer, checkpointing, batch, seq)
    ("tiny", "fp32", "full", "adamw", False, 16, 128),
    ("tiny", "bf16", "full", "adamw", False, 16, 128),
    ("smollm2-135m", "fp32", "full", "adamw", False, 8, 512),
    ("smollm2-135m", "bf16", "full", "adamw", False, 8, 512),
    ("smollm2-135m", "bf16", "full", "adamw", True, 8, 512),
    ("smollm2-135m", "bf16", "lora", "adamw", False, 8, 512),
    ("smollm2-135m", "bf16", "full", "adamw8bit", False, 8, 512),
]
QUICK_CONFIGS = [("tiny", "fp32", "full", "adamw", False, 4, 64), ("tiny", "bf16", "full", "adamw", True, 4, 64)]


def run_config(preset, precision, method, optimizer_name, checkpointing, batch, seq, device, rank=16):
    from peftlab import memory

    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    model = prepare(build(preset, dtype, device), method, rank)
    if checkpointing:
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(optimizer_name, params)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab - 1, (batch, seq), device=device)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    memory.probe_training_step(model, data, optimizer)  # warm-up: allocates the optimizer state
    probe = memory.probe_training_step(model, data, optimizer, label="probe")
    est = memory.estimate(model.config, method, precision=precision, optimizer=optimizer_name, batch=batch, seq=seq,
                          rank=rank, checkpointing=checkpointing, label="estimate")
    del model, optimizer, params
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return est, probe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/memory_gpu.json")
    parser.add_argument("--quick", action="store_true", help="two small configurations only")
    parser.add_argument("--allow-cpu", action="store_true", help="dry run on the CPU (no allocator peak)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("bench/memory_gpu.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine.\n"
              "Run it on a GPU machine (e.g. Colab), or pass --allow-cpu --quick for a CPU dry run.", file=sys.stderr)
        return 1
    from peftlab import memory

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    rows, start = [], time.time()
    for preset, precision, method, opt, ckpt, batch, seq in (QUICK_CONFIGS if args.quick else CONFIGS):
        label = f"{preset} {precision} {method} {opt}{' ckpt' if ckpt else ''} b{batch}x{seq}"
        try:
            est, probe = run_config(preset, precision, method, opt, ckpt, batch, seq, device)
        except ImportError as err:
            print(f"{label}: skipped ({err})")
            continue
        print(f"\n== {label}\n{memory.side_by_side(est, probe)}")
        row = {"config": label, "estimate": est.as_columns(), "probe": probe.as_columns(),
               "activations_probe_over_estimate": probe.activations / est.activations,
               "params_probe_equal_estimate": (probe.weights, probe.gradients) == (est.weights, est.gradients),
               "optimizer_probe_over_estimate": probe.optimizer / est.optimizer if est.optimizer else None}
        if probe.peak is not None:
            row["peak_over_estimate"] = probe.peak / est.total
            row["peak_over_probe"] = probe.peak / probe.total
        rows.append(row)
    print(f"\n{'config':<52}{'acts probe/est':>15}{'peak/est':>10}{'peak/probe':>12}")
    for r in rows:
        peak_est = f"{r['peak_over_estimate']:.3f}" if "peak_over_estimate" in r else "-"
        peak_probe = f"{r['peak_over_probe']:.3f}" if "peak_over_probe" in r else "-"
        print(f"{r['config']:<52}{r['activations_probe_over_estimate']:>15.3f}{peak_est:>10}{peak_probe:>12}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/memory_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"device": name, "torch": torch.__version__, "seconds": round(time.time() - start, 1), "command": command.strip()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nsaved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
