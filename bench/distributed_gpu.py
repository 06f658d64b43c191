"""DDP and FSDP2 on CUDA with NCCL: bytes per rank (measured vs the ZeRO estimate), CUDA peak, time per step.

For each method (default: full fine-tuning and LoRA) and strategy (``ddp``, ``fsdp-zero2``,
``fsdp-zero3``) this script trains the tiny base on every visible GPU with ``torchrun``
(``peftlab.distributed``, one process per GPU, bf16 autocast where the GPU supports it) and prints,
per rank, side by side:

- the bytes of parameters, gradients and optimizer state the rank holds, measured from its local
  shards, and the estimator's per-rank figure for the same ZeRO stage (fp32 AdamW: autocast keeps
  fp32 weights, gradients and states);
- ``torch.cuda.max_memory_allocated`` over the run, which also holds activations, the gathered weights
  in flight, communication buffers and temporaries, and the ratio of that peak to the estimate;
- seconds per optimizer step.

Run on a machine with CUDA GPUs (about a minute):

    python bench/distributed_gpu.py                          # all visible GPUs; writes results/distributed_gpu.json
    python bench/distributed_gpu.py --nproc 2 --steps 50
    python bench/distributed_gpu.py --allow-cpu --nproc 2    # a CPU dry run with gloo (no CUDA peak)

Without a CUDA GPU (and without ``--allow-cpu``) it prints that it skipped and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

BUCKETS = ("weights", "gradients", "optimizer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=None, help="processes, one per GPU (default: every visible GPU)")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--strategy", default="all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default 8 per process)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU with gloo when there is no GPU")
    parser.add_argument("--out", default="results/distributed_gpu.json")
    args = parser.parse_args(argv)

    gpus = torch.cuda.device_count()
    if not gpus and not args.allow_cpu:
        print("skipped: no CUDA GPU (pass --allow-cpu for a dry run on the CPU with gloo)")
        return 0
    nproc = args.nproc or max(gpus, 2 if not gpus else 1)
    if gpus and nproc > gpus:
        raise SystemExit(f"--nproc {nproc} but only {gpus} GPU(s) are visible")
    batch = args.batch_size or 8 * nproc

    from peftlab.distributed import STRATEGIES, launch

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = launch(nproc, ["--method", args.methods, "--strategy", args.strategy, "--steps", str(args.steps),
                                "--batch-size", str(batch), "--out", tmp], capture=True)
        wall = time.perf_counter() - start
        if result.returncode:
            print(result.stdout[-3000:] + result.stderr[-5000:], file=sys.stderr)
            return result.returncode
        rows = []
        for folder in sorted(Path(tmp).iterdir()):
            method, strategy = folder.name.split("-", 1)
            for rank in json.loads((folder / "ranks.json").read_text()):
                rows.append({"method": method, "strategy": strategy, "zero_stage": STRATEGIES[strategy][0], **rank})

    device = torch.cuda.get_device_name(0) if gpus else "cpu (gloo)"
    print(f"{nproc} process(es) on {device}, {args.steps} steps, global batch {batch}; {wall:.0f} s in all\n")
    print(f"{'method':<7}{'strategy':<12}{'rank':>5}" + "".join(f"{b + ' meas/est':>24}" for b in BUCKETS)
          + f"{'CUDA peak':>12}{'peak/est':>9}{'s/step':>8}")
    for r in rows:
        cells = "".join(f"{r[f'measured_{b}'] / 2**20:>11.1f} /{r[f'estimate_{b}'] / 2**20:>7.1f} MiB"
                        + (" " if r[f"measured_{b}"] == r[f"estimate_{b}"] else "!") for b in BUCKETS)
        estimate = sum(r[f"estimate_{b}"] for b in BUCKETS)
        peak = r["cuda_peak"]
        print(f"{r['method']:<7}{r['strategy']:<12}{r['rank']:>5}{cells}"
              + (f"{peak / 2**20:>8.1f} MiB{peak / estimate:>9.2f}" if peak else f"{'-':>12}{'-':>9}")
              + f"{r['seconds_per_step']:>8.3f}")
    mismatches = [r for r in rows if any(r[f"measured_{b}"] != r[f"estimate_{b}"] for b in BUCKETS)]
    print(f"\nmeasured == estimated on {len(rows) - len(mismatches)} of {len(rows)} rank rows ('!' marks a difference)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
            "device": device, "nproc": nproc, "torch": torch.__version__, "wall_seconds": wall}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
