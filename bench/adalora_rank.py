"""Where AdaLoRA puts its rank: the kept rank per matrix after training, and the parameter budget it
ends with next to LoRA's at the same total rank.

Trains AdaLoRA exactly as ``python -m peftlab compare`` does (same task, seed, steps, batch and
learning rate), then prints the kept rank per matrix, the kept parameters (a column of P, one λ and a
row of Q per kept triplet) and LoRA's trainable parameters at rank ``target_r`` on the same matrices
(the same total rank). Saves the rank heatmap.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/adalora_rank.py --steps 150`` (about a CPU minute).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from peftlab import TrainConfig, apply_method, count_parameters, get_method, load_base, set_seed, train, world
from peftlab.methods.adalora import get_rank_allocator, kept_parameters, rank_pattern


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="new_people")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    set_seed(args.seed)
    model, tokenizer = load_base("tiny")
    model = apply_method(model, "adalora", total_step=args.steps)
    config = get_rank_allocator(model).config
    examples = world.get_task(args.task).train_examples(2000, seed=args.seed)
    train(model, tokenizer, examples, TrainConfig(steps=args.steps, lr=get_method("adalora").lr, seed=args.seed),
          progress=False)
    pattern = rank_pattern(model)
    lora, _ = load_base("tiny")
    lora = apply_method(lora, "lora", r=config.target_r)
    summary = {
        "command": f"python bench/adalora_rank.py --task {args.task} --steps {args.steps} --seed {args.seed}",
        "matrices": len(pattern), "total_rank": sum(pattern.values()), "target_total_rank": config.target_r * len(pattern),
        "adalora_trainable_during_training": count_parameters(model).trainable,
        "adalora_kept_parameters": kept_parameters(model),
        f"lora_r{config.target_r}_trainable": count_parameters(lora).trainable,
        "rank_pattern": pattern,
    }
    for name, rank in pattern.items():
        print(f"{name:<36}{rank:>4}")
    print(json.dumps({k: v for k, v in summary.items() if k != "rank_pattern"}, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adalora_rank.json").write_text(json.dumps(summary, indent=2) + "\n")
    from peftlab.plots import plot_rank_pattern

    plot_rank_pattern(pattern, init_r=config.init_r).savefig(out / "adalora_rank.png", dpi=120, bbox_inches="tight")
    print(f"saved {out / 'adalora_rank.json'} and {out / 'adalora_rank.png'}")


if __name__ == "__main__":
    main()
