"""The main job: every registered method on the tiny world, same data, seed and step budget.

``python -m peftlab compare`` fine-tunes a fresh copy of the base with each method on one target task,
evaluates the target metric and the source metrics before and after, measures cost (trainable
parameters, seconds per step, tokens per second, bytes of weights + gradients + optimizer state, and
the memory probe's measured breakdown including activations saved for backward: ``mem_*`` columns),
prints a table, saves it as CSV and JSON, and plots learning against forgetting.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

from . import evaluate, world
from .memory import measure_training_memory, weight_bytes
from .methods import METHODS, RunContext, get_method, trainable_count
from .models import load_base
from .train import TrainConfig, train
from .utils import format_bytes, get_device, set_seed


@dataclass
class CompareConfig:
    """The one shared budget of every comparison: ``compare``, the sweep and the lectures use it."""

    task: str = "new_people"  # target task (see peftlab.world.TASKS)
    steps: int = 50  # optimizer steps per method (the sweep's checkpoints go to twice this)
    batch_size: int = 8  # examples per step
    n_train: int = 2000  # training examples drawn from the task's generator
    seed: int = 0  # data, initialisation and order
    model: str = "tiny"  # base model name (see peftlab.models.load_base)
    schedule: str = "constant"  # after warm-up: a checkpoint after k steps equals a k-step run

    def train_config(self, method_name: str, lr: float | None = None, **overrides) -> TrainConfig:
        """The training config of ``method_name`` at this budget (``Method.train_config``: its chosen rate
        or ``lr``, and its registered train options: weight decay, replay)."""
        budget = {"steps": self.steps, "batch_size": self.batch_size, "seed": self.seed, "schedule": self.schedule}
        return get_method(method_name).train_config(lr=lr, **{**budget, **overrides})  # an override wins


def prepare_model(name: str, cfg: CompareConfig, total_steps: int | None = None, device=None, examples=None,
                  options: dict | None = None):
    """A fresh base with method ``name`` applied (its default config, or ``options`` overriding fields of it),
    seeded by ``cfg.seed``; returns (model, tokenizer).

    The method learns what the run is through a ``RunContext``: the task and its training examples
    (the Fisher mask sums over them), the number of steps (AdaLoRA's rank schedule) and the seed. The
    comparison lets a method adapt the architecture where it could not apply otherwise: BitFit on a
    model without bias terms (SmolLM2, most Llama-style models) trains zero biases, as lecture 06 shows.
    """
    set_seed(cfg.seed)
    model, tokenizer = load_base(cfg.model, device=device or get_device(verbose=False))
    context = RunContext(task=cfg.task, examples=examples, tokenizer=tokenizer, total_steps=total_steps or cfg.steps,
                         seed=cfg.seed, adapt_architecture=True)
    return get_method(name).apply(model, context=context, **(options or {})), tokenizer


def run_method(name: str, cfg: CompareConfig, examples, task, before: evaluate.Evaluation, progress=True,
               options: dict | None = None) -> dict:
    """One row of the comparison: method ``name`` (``options``: fields of its config) trained at ``cfg``'s budget."""
    method = get_method(name)
    model, tokenizer = prepare_model(name, cfg, options=options)
    params = trainable_count(model)
    # The memory probe: one real step on the loop's first batch, weights restored afterwards.
    memory = measure_training_memory(model, tokenizer, examples, batch_size=cfg.batch_size, seed=cfg.seed,
                                     mixed_precision=True)
    row = {"method": name, "family": method.family, "trainable": params.trainable, "total": params.total,
           "trainable_pct": params.percent, "lr": method.lr, "steps": cfg.steps if method.trains else 0}
    if method.trains:
        result = train(model, tokenizer, examples, cfg.train_config(name), progress=progress, desc=name)
        after = evaluate.evaluate_model(model, tokenizer, task, model_name=cfg.model)
        row.update(seconds_per_step=result.seconds_per_step, tokens_per_second=result.tokens_per_second,
                   grad_bytes=result.grad_bytes, optimizer_bytes=result.optimizer_state_bytes,
                   final_loss=sum(result.losses[-10:]) / len(result.losses[-10:]))
    else:
        after = before
        row.update(seconds_per_step=0.0, tokens_per_second=0.0, grad_bytes=0, optimizer_bytes=0, final_loss=None)
    row.update({f"mem_{k}": v for k, v in memory.as_columns().items()})
    row["weight_bytes"] = weight_bytes(model)
    row["train_bytes"] = row["weight_bytes"] + row["grad_bytes"] + row["optimizer_bytes"]
    row["target_before"], row["target_after"] = before.target, after.target
    row["memorization_before"], row["memorization_after"] = before.memorization, after.memorization
    for metric in before.source:
        row[f"{metric}_before"], row[f"{metric}_after"] = before.source[metric], after.source[metric]
    row.update(evaluate.learning_and_forgetting(before, after))
    return row


def format_table(rows: list[dict], task: world.Task) -> str:
    header = (f"{'method':<14}{'lr':>9}{'trainable':>12}{'%':>9}  {task.metric + ' (target)':>22}  {'source recall':>15}"
              f"  {'English ppl':>15}{'s/step':>8}{'tok/s':>8}  {'weights+grads+optim':>20}{'activations':>12}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['method']:<14}{r['lr']:>9.3g}{r['trainable']:>12,}{r['trainable_pct']:>8.2f}%"
            f"  {r['target_before']:>10.3f} -> {r['target_after']:<7.3f}"
            f"  {r['source_recall_before']:>6.3f} -> {r['source_recall_after']:<5.3f}"
            f"  {r['english_ppl_before']:>6.1f} -> {r['english_ppl_after']:<5.1f}"
            f"{r['seconds_per_step']:>8.3f}{r['tokens_per_second']:>8.0f}  {format_bytes(r['train_bytes']):>20}"
            f"{format_bytes(r['mem_activation_bytes']):>12}")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """The README's table of a saved run: ``result`` is what ``compare`` writes to ``compare.json``."""
    metric = result["meta"]["task"]["metric"].replace("_", " ")
    lines = [f"| method | lr | trainable | {metric} (target) | source recall | English ppl | s/step "
             "| weights+grads+optim | activations |", "| --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['lr']:.3g} | {r['trainable']:,} ({r['trainable_pct']:.2f}%) "
            f"| {r['target_before']:.3f} → {r['target_after']:.3f} "
            f"| {r['source_recall_before']:.3f} → {r['source_recall_after']:.3f} "
            f"| {r['english_ppl_before']:.1f} → {r['english_ppl_after']:.1f} | {r['seconds_per_step']:.2f} "
            f"| {format_bytes(r['train_bytes'])} | {format_bytes(r['mem_activation_bytes'])} |")
    return "\n".join(lines)


def compare(cfg: CompareConfig = CompareConfig(), methods: list[str] | None = None,
            out_dir: Path | str = "results", progress: bool = True) -> list[dict]:
    """Run ``methods`` (default: every registered one), save table, JSON and plot in ``out_dir``."""
    names = list(methods) if methods else sorted(METHODS, key=lambda n: METHODS[n].trains)
    for name in names:
        get_method(name)  # fail before any training on an unknown name
    task = world.get_task(cfg.task)
    device = get_device()
    start = time.time()
    examples = task.train_examples(cfg.n_train, seed=cfg.seed)
    model, tokenizer = load_base(cfg.model, device=device)
    before = evaluate.evaluate_model(model, tokenizer, task, model_name=cfg.model)
    del model
    rows = [run_method(name, cfg, examples, task, before, progress) for name in names]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {"config": cfg.__dict__, "task": {"name": task.name, "kind": task.kind, "metric": task.metric},
            "seconds": round(time.time() - start, 1), "command": command_line(cfg, methods)}
    (out_dir / "compare.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    from .plots import plot_learning_vs_forgetting

    fig = plot_learning_vs_forgetting(rows, task_name=task.name)
    fig.savefig(out_dir / "learning_vs_forgetting.png", dpi=120, bbox_inches="tight")
    print(format_table(rows, task))
    print(f"\nsaved {out_dir / 'compare.csv'}, {out_dir / 'compare.json'}, "
          f"{out_dir / 'learning_vs_forgetting.png'} ({meta['seconds']:.0f} s)")
    return rows


def command_line(cfg: CompareConfig, methods) -> str:
    cmd = f"python -m peftlab compare --task {cfg.task} --steps {cfg.steps} --batch-size {cfg.batch_size} --seed {cfg.seed}"
    if cfg.model != "tiny":
        cmd += f" --model {cfg.model}"
    if methods:
        cmd += " --methods " + ",".join(methods)
    return cmd
