"""The learning-rate sweep: every method x rate x seed, learning and forgetting at every checkpoint.

A comparison of methods is only as good as each method's learning rate. Following Biderman et al.
(2024, "LoRA Learns Less and Forgets Less"), each method is trained at several rates spanning two
decades and several seeds; every run is evaluated at checkpoints along training, so one run traces
how learning and forgetting grow with training length. ``peftlab.analysis`` turns the records into
frontiers, forgetting at matched learning, and the rate each method should use.

Design of one run (what ``compare`` uses too: ``CompareConfig``): batch 8, warm-up then a constant
rate (so the checkpoint after k steps *is* a k-step run), checkpoints up to twice the comparison's
budget. Every checkpoint evaluates the same held-out sets: the task's validation split (to choose
rates) and test split (to report), memorization for knowledge tasks, source recall on the first
``n_source_people`` source people and perplexity on the first ``n_paragraphs`` held-out English
paragraphs (subsets of ``evaluate.source_metrics``'s defaults, the same at every checkpoint, so the
curves are comparable).

Records are JSON lines (one per run and checkpoint, plus one ``base`` record per task with the metrics
before fine-tuning), each with its command, package versions and git commit. The sweep resumes: a run
whose records are in the file is never recomputed, and the records of a run are appended only when it
has finished, so an interrupted sweep loses at most the runs in progress. Runs go to ``workers``
processes of one thread each: a 3.7M-parameter model on a CPU is overhead-bound, so two runs side by
side on two cores finish nearly twice as many runs per hour as one run on two threads
(``bench/sweep_throughput.py`` measures it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .methods import get_method

REFERENCE_PATH = Path(__file__).parent / "sweeps" / "reference.jsonl"  # the committed reference sweep

def lr_grid(method: str, n: int = 5, decades: float = 2.0) -> list[float]:
    """``n`` log-spaced rates over ``decades`` decades centred on the method's grid centre.

    The centre is the registered ``Method.grid_centre``: for the course's methods the hand-set rate used
    before any sweep, kept fixed so the reference sweep can be re-run exactly (the registered ``lr`` is
    the sweep's choice and moves when it is re-run); a new method's grid is centred on its ``lr``."""
    centre = get_method(method).sweep_centre
    if n < 1:
        raise ValueError(f"a grid needs at least one rate, not {n}")
    if n == 1:
        return [centre]
    return [float(f"{centre * 10 ** (decades * (i / (n - 1) - 0.5)):.4g}") for i in range(n)]


@dataclass
class SweepConfig:
    methods: list[str] = field(default_factory=lambda: ["full", "lora"])  # registered method names
    n_lrs: int = 5  # rates per method (log-spaced over `decades` around the grid centre)
    decades: float = 2.0  # span of the rate grid
    lrs: dict[str, list[float]] | None = None  # explicit rates per method (overrides the grid)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # data order, initialisation, dropout
    steps: int = 100  # length of every run: the last checkpoint (twice compare's 50-step budget)
    checkpoints: list[int] = field(default_factory=lambda: [10, 25, 50, 100])  # evaluate after these steps
    task: str = "new_people"
    batch_size: int = 8
    n_train: int = 2000
    n_source_people: int = 40  # source recall on the first 40 source people (200 questions)
    n_paragraphs: int = 40  # perplexity on the first 40 held-out English paragraphs
    workers: int = 2  # processes running runs side by side (one torch thread each)
    model: str = "tiny"

    def rates(self, method: str) -> list[float]:
        if self.lrs and method in self.lrs:
            return list(self.lrs[method])
        return lr_grid(method, self.n_lrs, self.decades)

    def runs(self) -> list[dict]:
        """Every (method, lr, seed) run of the sweep, in the order they are scheduled."""
        # seed-major: a sweep cut short still has every method and rate at its first seeds
        return [{"method": m, "lr": lr, "seed": s} for s in self.seeds for m in self.methods for lr in self.rates(m)]

    def design(self) -> dict:
        """What makes two runs comparable: a finished run with the same key and design is reused."""
        keys = ("steps", "checkpoints", "task", "batch_size", "n_train", "n_source_people", "n_paragraphs", "model")
        return {k: getattr(self, k) for k in keys}


# The committed reference sweep: ten methods (and the three regularized full fine-tuning baselines),
# five rates over two decades, three seeds, checkpoints to twice compare's 50-step budget.
REFERENCE = SweepConfig(
    methods=["full", "lora", "qlora", "houlsby", "pfeiffer", "prompt", "prefix", "bitfit", "fisher", "adalora",
             "full_wd", "full_dropout", "full_replay"])


def run_key(run: dict, design: dict) -> str:
    return json.dumps({"method": run["method"], "lr": run["lr"], "seed": run["seed"], **design}, sort_keys=True)


def read_records(path: Path | str) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:  # a line cut by a crash mid-write: skip it, keep the rest
            print(f"warning: {path.name} line {line_no} is not JSON ({err.msg}); ignoring it", file=sys.stderr)
    return records


def finished_keys(records: list[dict]) -> set[str]:
    """Keys of runs whose final checkpoint is recorded (a run's records are written together)."""
    return {r["run_key"] for r in records if r.get("final")}


def metadata(command: str) -> dict:
    import torch
    import transformers

    from . import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": command, "commit": commit, "versions": {
        "peftlab": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "python": sys.version.split()[0]}}


def _evaluation(model, tokenizer, task, cfg: SweepConfig) -> dict:
    from . import evaluate

    out = {"target_validation": evaluate.task_metric(model, tokenizer, task, split="validation"),
           "target_test": evaluate.task_metric(model, tokenizer, task, split="test")}
    trained = task.memorization_examples()
    out["memorization"] = evaluate.exact_match(model, tokenizer, trained) if trained else None
    out.update(evaluate.source_metrics(model, tokenizer, cfg.n_source_people, cfg.n_paragraphs))
    return out


def _with_learning(metrics: dict, base: dict) -> dict:
    from .evaluate import LOWER_IS_BETTER, SOURCE_METRICS

    out = dict(metrics)
    for split in ("validation", "test"):
        out[f"learning_{split}"] = metrics[f"target_{split}"] - base[f"target_{split}"]
    for name in SOURCE_METRICS:
        delta = metrics[name] - base[name]
        out[f"forgetting_{name}"] = delta if name in LOWER_IS_BETTER else -delta
    return out


def base_record(cfg: SweepConfig, meta: dict) -> dict:
    """The metrics of the untouched base on this sweep's evaluation sets (learning and forgetting are
    measured from them)."""
    from . import world
    from .models import load_base

    model, tokenizer = load_base(cfg.model)
    metrics = _evaluation(model, tokenizer, world.get_task(cfg.task), cfg)
    return {"method": "base", "task": cfg.task, "design": cfg.design(), "step": 0, **metrics, "meta": meta}


def is_base_record(record: dict, design: dict) -> bool:
    """Is ``record`` this design's metrics of the untouched base? (A run's records carry a ``run_key``.)"""
    return "run_key" not in record and record.get("design") == design


def run_one(run: dict, cfg: SweepConfig, base: dict, meta: dict) -> list[dict]:
    """Train one (method, lr, seed) run; return one record per checkpoint."""
    import torch

    from . import world
    from .compare import CompareConfig, prepare_model
    from .methods import trainable_count
    from .memory import weight_bytes
    from .train import train

    task = world.get_task(cfg.task)
    compare_cfg = CompareConfig(task=cfg.task, steps=cfg.steps, batch_size=cfg.batch_size, n_train=cfg.n_train,
                                seed=run["seed"], model=cfg.model)
    examples = task.train_examples(cfg.n_train, seed=run["seed"])
    model, tokenizer = prepare_model(run["method"], compare_cfg, total_steps=cfg.steps,
                                     device=torch.device("cpu") if cfg.model == "tiny" else None)
    params = trainable_count(model)
    train_cfg = compare_cfg.train_config(run["method"], lr=run["lr"], eval_at=tuple(cfg.checkpoints))

    def eval_fn(m):
        return _evaluation(m, tokenizer, task, cfg)

    result = train(model, tokenizer, examples, train_cfg, eval_fn=eval_fn, progress=False)
    evals = dict(result.evals)
    key = run_key(run, cfg.design())
    records = []
    for step in sorted(s for s in evals if s in cfg.checkpoints or s == cfg.steps):
        loss_window = result.losses[max(0, step - 10):step]
        records.append({
            "run_key": key, "method": run["method"], "lr": run["lr"], "seed": run["seed"], "task": cfg.task,
            "step": step, "final": step == cfg.steps, **_with_learning(evals[step], base),
            "train_loss": sum(loss_window) / max(len(loss_window), 1),
            "trainable": params.trainable, "total": params.total, "weight_bytes": weight_bytes(model),
            "grad_bytes": result.grad_bytes, "optimizer_bytes": result.optimizer_state_bytes,
            "seconds_per_step": result.seconds_per_step, "meta": meta,
        })
    return records


def _worker(job):
    import torch

    torch.set_num_threads(1)
    run, cfg, base, meta = job
    start = time.perf_counter()
    records = run_one(run, cfg, base, meta)
    for r in records:
        r["run_seconds"] = round(time.perf_counter() - start, 2)
    return records


def sweep(cfg: SweepConfig, out: Path | str, command: str = "", progress: bool = True) -> list[dict]:
    """Run every run of ``cfg`` not yet in ``out`` (JSON lines); return all records of this design."""
    from tqdm.auto import tqdm

    for name in cfg.methods:
        if not get_method(name).trains:
            raise ValueError(f"method {name!r} does not train; a sweep needs methods that do")
    bad = [c for c in cfg.checkpoints if not 0 < c <= cfg.steps]
    if bad:
        raise ValueError(f"checkpoints must lie in 1..steps={cfg.steps}; got {bad}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = metadata(command or "python -m peftlab sweep")
    records = read_records(out)
    design = cfg.design()
    base = next((r for r in records if is_base_record(r, design)), None)
    if base is None:
        base = base_record(cfg, meta)
        _append(out, [base])
        records.append(base)
    done = finished_keys(records)
    todo = [r for r in cfg.runs() if run_key(r, design) not in done]
    print(f"sweep: {len(cfg.runs())} runs ({len(cfg.runs()) - len(todo)} already in {out.name}), "
          f"{cfg.workers} worker(s)", flush=True)
    if todo:
        jobs = [(run, cfg, base, meta) for run in todo]
        bar = tqdm(total=len(todo), desc="sweep runs", unit="run", disable=not progress)
        if cfg.workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ctx.Pool(cfg.workers) as pool:
                for new in pool.imap_unordered(_worker, jobs):
                    _append(out, new)
                    records += new
                    bar.set_postfix_str(f"{new[-1]['method']} lr={new[-1]['lr']:g}")
                    bar.update()
        else:
            for job in jobs:
                new = _worker(job)
                _append(out, new)
                records += new
                bar.update()
        bar.close()
    keys = {run_key(r, design) for r in cfg.runs()}
    return [r for r in records if r.get("run_key") in keys or is_base_record(r, design)]


def _append(path: Path, records: list[dict]) -> None:
    """Append whole records in one write, flushed to disk, so a crash never leaves half a run."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a line cut by a crash: end it, so it stays one bad line on its own
                text = "\n" + text
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def command_line(cfg: SweepConfig, out: Path | str) -> str:
    default = SweepConfig()
    parts = ["python -m peftlab sweep", "--methods " + ",".join(cfg.methods)]
    if cfg.lrs:
        parts.append("--lrs " + ";".join(f"{m}=" + ",".join(f"{x:g}" for x in v) for m, v in cfg.lrs.items()))
    elif cfg.n_lrs != default.n_lrs:
        parts.append(f"--lrs {cfg.n_lrs}")
    parts.append(f"--seeds {len(cfg.seeds)}")
    parts.append(f"--steps {cfg.steps} --checkpoints " + ",".join(map(str, cfg.checkpoints)))
    if cfg.task != default.task:
        parts.append(f"--task {cfg.task}")
    parts.append(f"--out {out}")
    return " ".join(parts)


__all__ = ["SweepConfig", "REFERENCE", "REFERENCE_PATH", "lr_grid", "sweep", "read_records",
           "run_one", "base_record", "command_line"]
