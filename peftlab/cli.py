"""Command line: ``python -m peftlab <command>``.

  compare      every registered method on the tiny world: learning, forgetting and cost
  sweep        learning-rate sweep over methods, rates and seeds (records for the frontier)
  frontier     analyse sweep records: chosen rates, frontiers, forgetting at matched learning
  pretrain     re-create the tiny base model (tokenizer + weights) in peftlab/base/
  report       what the base knows: source recall per attribute, English perplexity, task metrics
  memory       bytes of one training step by bucket, and whether it fits on common GPUs
  methods      list the registered methods
  distributed  train a method on N processes (torchrun; DDP and FSDP2): bytes per rank, measured vs ZeRO
  english-text re-create peftlab/data/english.txt from CPython's bundled language reference
  site         build the course website (lectures executed, assignments as released) into _site/
  claims       the claims ledger: every common claim with its measured result and computed verdict
  release      write the student repository (no solutions, hidden tests or instructor files) into DIR
"""
from __future__ import annotations

import argparse
import json
import sys

from . import world
from .utils import lookup


def _cmd_compare(args) -> int:
    from .compare import CompareConfig, compare
    from .utils import is_quick

    from . import realworld

    steps = args.steps if args.steps is not None else (20 if is_quick() else CompareConfig.steps)
    batch_size = args.batch_size or CompareConfig.batch_size
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    if args.model in realworld.REAL_MODELS:  # a 135M model on a CPU: fewer methods, a smaller budget
        steps = args.steps or realworld.COMPARE_STEPS
        batch_size = args.batch_size or realworld.COMPARE_BATCH_SIZE
        methods = methods or list(realworld.COMPARE_METHODS)
    cfg = CompareConfig(task=args.task, steps=steps, batch_size=batch_size, seed=args.seed, model=args.model)
    compare(cfg, methods, out_dir=args.out, progress=not args.no_progress)
    if args.markdown:
        import json
        from pathlib import Path

        from .compare import markdown_table

        print("\n" + markdown_table(json.loads((Path(args.out) / "compare.json").read_text())))
    return 0


def _cmd_sweep(args) -> int:
    from pathlib import Path

    from .sweep import REFERENCE, REFERENCE_PATH, SweepConfig, command_line, sweep

    if args.reference:
        cfg, out = REFERENCE, Path(args.out or REFERENCE_PATH)
        cfg = SweepConfig(**{**cfg.__dict__, "workers": args.workers})
    else:
        cfg = SweepConfig(methods=[m.strip() for m in args.methods.split(",")], task=args.task,
                          seeds=list(range(args.seeds)), steps=args.steps, workers=args.workers)
        if args.lrs and not args.lrs.isdigit():  # "full=1e-4,1e-3;lora=1e-3"
            cfg.lrs = {}
            for part in args.lrs.split(";"):
                name, _, values = part.partition("=")
                if not values:
                    raise ValueError(f"--lrs takes a count (5) or explicit rates like 'full=1e-4,1e-3;lora=3e-3', "
                                     f"not {args.lrs!r}")
                cfg.lrs[name.strip()] = [float(v) for v in values.split(",")]
        elif args.lrs:
            cfg.n_lrs = int(args.lrs)
        if args.checkpoints:
            cfg.checkpoints = [int(c) for c in args.checkpoints.split(",")]
        elif args.eval_every:
            cfg.checkpoints = list(range(args.eval_every, args.steps + 1, args.eval_every))
        else:
            cfg.checkpoints = sorted({c for c in cfg.checkpoints if c < args.steps} | {args.steps})
        out = Path(args.out or "results/sweep.jsonl")
    records = sweep(cfg, out, command=command_line(cfg, out) if not args.reference else
                    "python -m peftlab sweep --reference", progress=not args.no_progress)
    finals = [r for r in records if r.get("final")]
    print(f"{len(finals)} finished runs in {out}")
    return 0


def _cmd_frontier(args) -> int:
    from pathlib import Path

    from . import analysis
    from .compare import CompareConfig
    from .plots import plot_frontiers, plot_lr_sweep
    from .sweep import REFERENCE_PATH, read_records

    path = Path(args.records or REFERENCE_PATH)
    records = read_records(path)
    if not analysis.runs(records):
        raise FileNotFoundError(f"no sweep records in {path}; run `python -m peftlab sweep` first")
    budget = args.budget or CompareConfig.steps
    result = analysis.report(records, budget)
    print(f"records: {path.name}, {len({r['run_key'] for r in analysis.runs(records)})} runs; "
          f"rates chosen on the validation split after {budget} steps; mean ± 95% interval over seeds\n")
    print(analysis.format_choices(result["choices"]))
    for level, matched in result["matched"].items():
        print(f"\nforgetting (source recall) when learning first reaches {level:.1f} (least over rates):")
        print(analysis.format_matched(matched))
    if args.markdown:
        print("\n" + analysis.markdown_table(result["choices"], result["matched"], result["trainable_pct"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_points = {}
    for (method, _lr, _step), est in result["summary"].items():
        all_points.setdefault(method, []).append({"learning": est[analysis.LEARNING],
                                                  "forgetting": est[analysis.FORGETTING]})
    plot_frontiers(result["frontiers"], all_points).savefig(out / "frontier.png", dpi=120, bbox_inches="tight")
    plot_lr_sweep(result["summary"], budget, list(result["choices"]), result["choices"]).savefig(
        out / "lr_sweep.png", dpi=100, bbox_inches="tight")
    print(f"\nsaved {out / 'frontier.png'} and {out / 'lr_sweep.png'}")
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


def _cmd_memory(args) -> int:
    from . import memory

    kwargs = dict(precision=args.precision, optimizer=args.optimizer, batch=args.batch, seq=args.seq, rank=args.rank,
                  checkpointing=args.checkpointing, zero_stage=args.zero, n_devices=args.devices, attention=args.attention)
    gpus = list(memory.GPUS) if args.gpu == "all" else [args.gpu.lower()]
    for gpu in gpus:
        lookup({**memory.GPUS, "all": None}, gpu, "GPU")
    if args.model == "all":
        rows = memory.will_it_fit(methods=[m.strip() for m in args.method.split(",")], gpus=gpus, **kwargs)
        print(memory.format_fit_table(rows))
    else:
        for method in [m.strip() for m in args.method.split(",")]:
            est = memory.estimate(args.model, method, label=f"{args.model} {method}", **kwargs)
            print(est.table())
            print("  ".join(f"{memory.GPUS[g].name}: {memory.fit_verdict(est.total, g)}" for g in gpus) + "\n")
    print(f"assumptions: {args.precision} precision, {args.optimizer}, batch {args.batch} x {args.seq} tokens, "
          f"{args.attention} attention, checkpointing {'on' if args.checkpointing else 'off'}, ZeRO stage {args.zero} "
          f"over {args.devices} device(s); LoRA rank {args.rank} on the attention projections; "
          f"'fits' = under {memory.FIT_MARGIN:.0%} of the card, 'tight' = under 100%")
    return 0


def _cmd_distributed(args) -> int:
    from .distributed import launch

    argv = ["--method", args.method, "--strategy", args.strategy, "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--dtype", args.dtype]
    if args.out:
        argv += ["--out", args.out] + (["--save-lora"] if args.save_lora else [])
    return launch(args.nproc, argv).returncode


def _cmd_english(args) -> int:
    print(f"wrote {world.extract_english_text()} paragraphs")
    return 0


def _cmd_site(args) -> int:
    from pathlib import Path

    from .site import build_site

    mode = "quick" if args.quick else "full" if args.full else None
    build_site(Path(args.out), mode=mode, force=args.force, github=args.github,
               readme_images=Path(args.readme_images) if args.readme_images else None)
    return 0


def _cmd_release(args) -> int:
    from pathlib import Path

    from .release import release

    release(Path(args.dir))
    return 0


def _cmd_claims(args) -> int:
    from . import claims

    if args.measure == "latency":
        quick = args.quick
        lat = claims.inference_latency(batch_sizes=(1, 16), new_tokens=8 if quick else 32, rounds=2 if quick else 5,
                                       progress=True)
        lat["command"] = claims.LATENCY_COMMAND + (" --quick" if quick else "")
        claims.write_results("latency", lat, args.results or claims.RESULTS_PATH)
        print(claims.latency_result(lat)["summary"])
    if args.fusion_from:
        fusion = json.loads(open(args.fusion_from).read())
        fusion.pop("fusion_attention", None)  # the per-layer attention is lecture 11's plot, not the ledger's
        claims.write_results("fusion", fusion, args.results or claims.RESULTS_PATH)
    keys = [k.strip() for k in args.only.split(",")] if args.only else None
    for key in keys or []:
        claims.get_claim(key)  # a KeyError that lists the claims
    print(claims.format_ledger(claims.ledger(keys, quick=args.quick or None)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compare", help="compare every registered method on the tiny world")
    p.add_argument("--task", default="new_people", choices=list(world.TASKS), help="target task")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per method (default: CompareConfig's 50; 20 with PEFTLAB_QUICK=1)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per step (default: CompareConfig's; 8 for smollm2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="tiny", help="base model: 'tiny', 'smollm2' (real, offline; 30 steps, "
                   "methods base,full,lora,qlora,bitfit,prompt unless given) or a local folder")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    p.add_argument("--out", default="results", help="folder for compare.csv, compare.json and the plot")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown (as in docs/real_model.md)")
    p.set_defaults(fn=_cmd_compare)

    p = sub.add_parser("sweep", help="learning-rate sweep: methods x rates x seeds, learning and forgetting "
                       "at every checkpoint (resumes)")
    p.add_argument("--methods", default="full,lora", help="comma-separated method names")
    p.add_argument("--lrs", default=None, help="rates per method: a count (log-spaced over two decades around "
                   "the method's grid centre; default 5) or explicit 'full=1e-4,1e-3;lora=3e-3'")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--steps", type=int, default=100, help="length of every run (default 100)")
    p.add_argument("--eval-every", type=int, default=None, help="a checkpoint every this many steps")
    p.add_argument("--checkpoints", default=None, help="comma-separated checkpoint steps (default 10,25,50,100)")
    p.add_argument("--task", default="new_people", choices=list(world.TASKS))
    p.add_argument("--workers", type=int, default=2, help="runs side by side, one process each (default 2)")
    p.add_argument("--out", default=None, help="JSON-lines file of records (default results/sweep.jsonl; "
                   "re-running resumes it)")
    p.add_argument("--reference", action="store_true", help="run the committed reference sweep "
                   "(peftlab/sweeps/reference.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(fn=_cmd_sweep)

    p = sub.add_parser("frontier", help="analyse sweep records: chosen rates, forgetting at matched learning, plots")
    p.add_argument("--records", default=None, help="JSON-lines sweep records (default: the committed reference sweep)")
    p.add_argument("--budget", type=int, default=None, help="checkpoint at which rates are chosen (default: "
                   "CompareConfig.steps)")
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown (as in docs/frontier.md)")
    p.add_argument("--out", default="results", help="folder for frontier.png and lr_sweep.png")
    p.set_defaults(fn=_cmd_frontier)

    p = sub.add_parser("pretrain", help="re-create the tiny base model")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: peftlab/base)")
    p.set_defaults(fn=_cmd_pretrain)

    p = sub.add_parser("report", help="what the base model knows")
    p.add_argument("--model", default="tiny")
    p.set_defaults(fn=_cmd_report)

    p = sub.add_parser("memory", help="estimate the bytes of one training step; will it fit on a GPU?")
    p.add_argument("--model", default="llama-2-7b", help="preset (tiny, smollm2-135m, llama-2-7b, llama-3-8b, "
                   "llama-2-13b, llama-2-70b, gpt3-175b) or 'all' for the will-it-fit table")
    p.add_argument("--method", default="full,lora,qlora", help="comma-separated: full, lora, qlora, bitfit, prompt")
    p.add_argument("--gpu", default="all", help="t4, rtx3090, a100-40gb, a100-80gb, h100 or all")
    p.add_argument("--precision", default="mixed", help="fp32, fp16, bf16 or mixed (16-bit + fp32 master and states)")
    p.add_argument("--optimizer", default="adamw", help="sgd, sgd-momentum, adam, adamw, adamw8bit")
    p.add_argument("--batch", type=int, default=1, help="sequences per device")
    p.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on every layer")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3], help="ZeRO stage")
    p.add_argument("--devices", type=int, default=1, help="data-parallel devices ZeRO shards over")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    p.set_defaults(fn=_cmd_memory)

    p = sub.add_parser("distributed", help="train on N processes with DDP and FSDP2; bytes per rank vs ZeRO")
    p.add_argument("--method", default="lora", help="registered method(s), comma-separated")
    p.add_argument("--nproc", type=int, default=2, help="processes (ranks): GPUs, or CPU processes with gloo")
    p.add_argument("--strategy", default="all", help="ddp, fsdp-zero2, fsdp-zero3 (comma-separated) or all")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8, help="global batch, divisible by --nproc")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--out", default=None, help="folder for each run's weights and per-rank bytes")
    p.add_argument("--save-lora", action="store_true", help="save LoRA adapters from the sharded model to --out")
    p.set_defaults(fn=_cmd_distributed)

    sub.add_parser("methods", help="list registered methods").set_defaults(fn=_cmd_methods)
    sub.add_parser("english-text", help="re-create peftlab/data/english.txt").set_defaults(fn=_cmd_english)

    p = sub.add_parser("site", help="build the course website into _site/ (executed lectures, released assignments)")
    p.add_argument("--quick", action="store_true", help="quick mode (as PEFTLAB_QUICK=1): shortened runs")
    p.add_argument("--full", action="store_true", help="full mode: the full-size runs (the default unless PEFTLAB_QUICK=1)")
    p.add_argument("--out", default="_site", help="output folder (default _site; its .cache/ keeps executed notebooks)")
    p.add_argument("--force", action="store_true", help="execute every notebook again (after changing the package)")
    p.add_argument("--github", default=None, help="owner/repo[@branch] for direct 'open in Colab' links "
                   "(default: the git remote 'origin' when it is on github.com)")
    p.add_argument("--readme-images", default=None, help="also write the README's figure and lecture screenshot here "
                   "(e.g. docs)")
    p.set_defaults(fn=_cmd_site)

    p = sub.add_parser("release", help="write the student repository into DIR: lectures, exercises, the package, "
                       "a student README; no solutions, hidden tests or instructor files")
    p.add_argument("dir", help="an empty or new folder, or an earlier release (its .git is kept)")
    p.set_defaults(fn=_cmd_release)

    p = sub.add_parser("claims", help="the claims ledger: each claim's measured result and verdict")
    p.add_argument("--only", default=None, help="comma-separated claim keys (default: every row)")
    p.add_argument("--measure", default=None, choices=["latency"], help="re-measure a slow row and write it to "
                   "peftlab/claims_results.json (or --results)")
    p.add_argument("--fusion-from", default=None, help="copy bench/multitask_fusion.py's JSON into the results file")
    p.add_argument("--results", default=None, help="results file to write (default: peftlab/claims_results.json)")
    p.add_argument("--quick", action="store_true", help="shortened measurements (as PEFTLAB_QUICK=1)")
    p.set_defaults(fn=_cmd_claims)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (KeyError, ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
