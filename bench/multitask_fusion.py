"""AdapterFusion vs single-task adapters vs training on the mixed tasks, evaluated on every task.

Rows: the base; one Pfeiffer adapter per task (each trained on its task alone); AdapterFusion of those
adapters trained on each target task; one Pfeiffer adapter and full fine-tuning trained on the mixture
of all tasks. Columns: every task's metric and the source recall (forgetting). Same seed and the same
number of steps for every trained row; the task adapters come from the cache that ``compare`` uses.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/multitask_fusion.py`` (a few CPU minutes);
``--steps 30`` for a quick look. Writes ``results/multitask_fusion.json`` and the fusion attention plot.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

from peftlab import TrainConfig, apply_method, get_method, load_base, set_seed, train, world
from peftlab.data import batches
from peftlab.evaluate import exact_match, task_metric
from peftlab.methods.fusion import (FusionConfig, apply_fusion, fusion_attention, load_task_adapter,
                                    train_task_adapters)

TASKS = ["new_people", "addition", "sentiment"]


def evaluate_all(model, tokenizer, n_people: int) -> dict[str, float]:
    scores = {task: task_metric(model, tokenizer, world.get_task(task)) for task in TASKS}
    scores["source_recall"] = exact_match(model, tokenizer, world.qa_examples(world.source_people()[:n_people]))
    return scores


def mixed_examples(n_per_task: int, seed: int) -> list[world.Example]:
    examples = [ex for task in TASKS for ex in world.get_task(task).train_examples(n_per_task, seed=seed)]
    random.Random(seed).shuffle(examples)
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="steps of every trained row (adapters, fusion, mixed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-people", type=int, default=60, help="source people whose recall measures forgetting")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    start = time.time()
    base, tokenizer = load_base("tiny")
    rows: dict[str, dict[str, float]] = {"base": evaluate_all(base, tokenizer, args.n_people)}
    states = train_task_adapters((base, tokenizer), TASKS, args.steps, seed=args.seed, progress=False)
    for task in TASKS:
        rows[f"adapter[{task}]"] = evaluate_all(load_task_adapter(copy.deepcopy(base), states[task]), tokenizer,
                                                args.n_people)
    attention = {}
    fusion_lr = get_method("fusion").lr
    for target in TASKS:
        model = apply_fusion(copy.deepcopy(base), states, FusionConfig(task=target))
        train(model, tokenizer, world.get_task(target).train_examples(2000, seed=args.seed),
              TrainConfig(steps=args.steps, lr=fusion_lr, seed=args.seed), progress=False)
        rows[f"fusion->{target}"] = evaluate_all(model, tokenizer, args.n_people)
        batch = next(batches(tokenizer, world.get_task(target).eval_examples(64), 64, seed=None))
        attention[target] = {name: w.tolist() for name, w in fusion_attention(model, batch).items()}
    mixed = mixed_examples(2000, args.seed)
    for method in ("pfeiffer", "full"):
        set_seed(args.seed)
        model = apply_method(copy.deepcopy(base), method)
        train(model, tokenizer, mixed, TrainConfig(steps=args.steps, lr=get_method(method).lr, seed=args.seed),
              progress=False)
        rows[f"{method} (mixed)"] = evaluate_all(model, tokenizer, args.n_people)

    header = f"{'model':<22}" + "".join(f"{t:>12}" for t in TASKS) + f"{'source_recall':>15}"
    print(header + "\n" + "-" * len(header))
    for name, scores in rows.items():
        print(f"{name:<22}" + "".join(f"{scores[t]:>12.3f}" for t in TASKS) + f"{scores['source_recall']:>15.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = f"python bench/multitask_fusion.py --steps {args.steps} --seed {args.seed} --n-people {args.n_people}"
    (out / "multitask_fusion.json").write_text(json.dumps(
        {"command": command, "seconds": round(time.time() - start, 1), "tasks": TASKS, "rows": rows,
         "fusion_attention": attention, "adapter_order": list(states)}, indent=2) + "\n")
    from peftlab.plots import plot_fusion_attention

    fig = plot_fusion_attention(attention["new_people"], list(states))
    fig.axes[0].set_title("AdapterFusion trained on new_people: attention per layer")
    fig.savefig(out / "fusion_attention.png", dpi=120, bbox_inches="tight")
    print(f"\nsaved {out / 'multitask_fusion.json'} and {out / 'fusion_attention.png'} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
