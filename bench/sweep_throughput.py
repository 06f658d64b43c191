"""Sweep throughput on this machine: runs per hour with one process using every core, against one
single-threaded process per core, measured side by side in one invocation.

A 3.7M-parameter model trains in small matrix products, where threads share little work, so running
independent runs side by side may pay more than giving one run all the cores. This script times the
same set of sweep runs (same methods, rates, steps, checkpoints and evaluation as the reference
sweep, shortened by --steps) both ways and prints runs per hour and the ratio.

Usage: python bench/sweep_throughput.py [--runs 4] [--steps 50] [--method full]
CPU; on an idle machine (another load on the cores changes both numbers).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from peftlab.sweep import SweepConfig, sweep


def timed_sweep(cfg: SweepConfig, threads: int) -> float:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.jsonl"
        start = time.perf_counter()
        sweep(cfg, out, command="bench/sweep_throughput.py", progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4, help="runs per configuration (rates x seeds)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--method", default="full")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    seeds = list(range(args.runs))
    checkpoints = sorted({max(1, args.steps // 4), args.steps // 2, args.steps} - {0})
    common = dict(methods=[args.method], n_lrs=1, seeds=seeds, steps=args.steps, checkpoints=checkpoints)
    # the base record is computed once per sweep in both set-ups, so both pay the same fixed cost
    one = timed_sweep(SweepConfig(**common, workers=1), threads=cores)
    side = timed_sweep(SweepConfig(**common, workers=cores), threads=1)
    print(f"{args.runs} runs of {args.method}, {args.steps} steps, checkpoints {checkpoints}, {cores} cores")
    print(f"one process, {cores} threads: {one:7.1f} s  = {3600 * args.runs / one:6.1f} runs/hour")
    print(f"{cores} processes, 1 thread:  {side:7.1f} s  = {3600 * args.runs / side:6.1f} runs/hour")
    print(f"side by side / one process: {one / side:.2f}x the runs per hour")


if __name__ == "__main__":
    main()
