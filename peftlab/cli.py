"""Command line: ``python -m peftlab <command>``.

  compare      every registered method on the tiny world: learning, forgetting and cost
  pretrain     re-create the tiny base model (tokenizer + weights) in peftlab/base/
  report       what the base knows: source recall per attribute, English perplexity, task metrics
  methods      list the registered methods
  english-text re-create peftlab/data/english.txt from CPython's bundled language reference
"""
from __future__ import annotations

import argparse
import json
import sys

from . import world


def _cmd_compare(args) -> int:
    from .compare import CompareConfig, compare
    from .utils import is_quick

    steps = args.steps if args.steps is not None else (30 if is_quick() else 150)
    cfg = CompareConfig(task=args.task, steps=steps, batch_size=args.batch_size, seed=args.seed, model=args.model)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    compare(cfg, methods, out_dir=args.out, progress=not args.no_progress)
    return 0


def _cmd_pretrain(args) -> int:
    from pathlib import Path

    from .models import BASE_DIR
    from .pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(steps=args.steps, seed=args.seed)
    report = pretrain(cfg, Path(args.out) if args.out else BASE_DIR)
    print(json.dumps(report, indent=2))
    return 0


def _cmd_report(args) -> int:
    from .models import load_base
    from .pretrain import base_report

    model, tokenizer = load_base(args.model)
    print(json.dumps(base_report(model, tokenizer), indent=2))
    return 0


def _cmd_methods(args) -> int:
    from .methods import METHODS

    for m in METHODS.values():
        print(f"{m.name:<14}{m.family:<12}{m.description}")
    return 0


def _cmd_english(args) -> int:
    print(f"wrote {world.extract_english_text()} paragraphs")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compare", help="compare every registered method on the tiny world")
    p.add_argument("--task", default="new_people", choices=list(world.TASKS), help="target task")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per method (default 150; 30 with PEFTLAB_QUICK=1)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="tiny", help="base model: 'tiny' or a local folder")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    p.add_argument("--out", default="results", help="folder for compare.csv, compare.json and the plot")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(fn=_cmd_compare)

    p = sub.add_parser("pretrain", help="re-create the tiny base model")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: peftlab/base)")
    p.set_defaults(fn=_cmd_pretrain)

    p = sub.add_parser("report", help="what the base model knows")
    p.add_argument("--model", default="tiny")
    p.set_defaults(fn=_cmd_report)

    sub.add_parser("methods", help="list registered methods").set_defaults(fn=_cmd_methods)
    sub.add_parser("english-text", help="re-create peftlab/data/english.txt").set_defaults(fn=_cmd_english)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (KeyError, ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
