"""peftlab LoRA against Hugging Face peft LoRA: time per training step and peak bytes, side by side.

Both libraries adapt a copy of the same model with the same targets, rank, alpha and seed (so the
same A), and train on the same batches with AdamW. Steps alternate between the two in short blocks,
so a machine that gets busier or quieter affects both alike; each is reported as the median seconds
per step, and peftlab's as a ratio to peft's (the aim: at most 1.05).

Peak bytes: on CUDA, ``torch.cuda.max_memory_allocated`` over one training step; everywhere, a
tensor account of what a step holds at its peak: weights + gradients + AdamW state + the
activations autograd saves for backward (counted once per storage with ``saved_tensors_hooks``).

    python bench/lora_train_speed.py                 # the tiny base, then a larger Llama config
    python bench/lora_train_speed.py --models tiny --steps 40 --batch-size 16 --seq-len 64

Set OMP_NUM_THREADS on a shared CPU; the printed numbers are the ones to quote.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from peftlab import count_parameters, format_bytes, get_device, load_base, set_seed  # noqa: E402
from peftlab.methods.lora import LoraConfig, apply_lora  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def larger_llama():
    """A Llama config about 10x the tiny base (8 layers, width 512), random weights: no download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    set_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=512, intermediate_size=1376,
                                        num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                                        max_position_embeddings=512, tie_word_embeddings=True))


def build(name: str, device):
    if name == "tiny":
        model, _ = load_base("tiny")
    elif name == "larger":
        model = larger_llama()
    else:
        model, _ = load_base(name)
    return model.to(device)


def make_pair(base, r: int, alpha: float, dropout: float):
    import peft

    set_seed(0)
    ours = apply_lora(copy.deepcopy(base), LoraConfig(r=r, alpha=alpha, dropout=dropout, target_modules=TARGETS))
    set_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGETS))
    assert count_parameters(ours).trainable == count_parameters(theirs).trainable
    return {"peftlab": ours, "peft": theirs}


def make_batches(vocab: int, n: int, batch_size: int, seq_len: int, device):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (batch_size, seq_len), generator=g)
        out.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                    "labels": ids.to(device)})
    return out


class Trainer:
    def __init__(self, model, lr: float = 1e-3):
        self.model = model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr)

    def step(self, batch) -> float:
        loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def accounted_peak_bytes(trainer: Trainer, batch) -> dict[str, int]:
    """Weights + grads + optimizer state + saved activations of one step (the peak is just before backward)."""
    model = trainer.model
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:  # weights saved for backward are not extra bytes
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    grads = sum(tensor_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    state = sum(tensor_bytes(v) for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    weights = sum(tensor_bytes(p) for p in {id(p): p for p in model.parameters()}.values())
    activations = sum(storages.values())
    return {"weights": weights, "grads": grads, "optimizer": state, "activations": activations,
            "total": weights + grads + state + activations}


def cuda_peak_bytes(trainer: Trainer, batch, device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    trainer.step(batch)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def bench_model(name: str, args, device) -> dict:
    base = build(name, device)
    pair = make_pair(base, args.r, args.alpha, args.dropout)
    del base
    trainers = {lib: Trainer(model) for lib, model in pair.items()}
    vocab = pair["peftlab"].config.vocab_size
    data = make_batches(vocab, args.steps, args.batch_size, args.seq_len, device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for trainer in trainers.values():  # warm-up: allocator, kernels, optimizer state
        for batch in data[:args.warmup]:
            trainer.step(batch)
    times = {lib: [] for lib in trainers}
    block = args.block
    for start in range(0, args.steps, block):
        order = list(trainers) if (start // block) % 2 == 0 else list(trainers)[::-1]
        for lib in order:
            for batch in data[start:start + block]:
                sync()
                t0 = time.perf_counter()
                trainers[lib].step(batch)
                sync()
                times[lib].append(time.perf_counter() - t0)
    row = {"model": name, "params": count_parameters(pair["peftlab"]).total,
           "trainable": count_parameters(pair["peftlab"]).trainable}
    for lib in trainers:
        row[f"{lib}_s"] = statistics.median(times[lib])
        row[f"{lib}_bytes"] = accounted_peak_bytes(trainers[lib], data[0])
        if device.type == "cuda":
            row[f"{lib}_cuda_peak"] = cuda_peak_bytes(trainers[lib], data[0], device)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,larger", help="comma-separated: tiny, larger, or a model folder")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per library and model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--block", type=int, default=5, help="steps per block before switching library")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--dropout", type=float, default=0.0)
    args = parser.parse_args(argv)
    device = get_device()
    import peft

    print(f"peft {peft.__version__}; batch {args.batch_size} x {args.seq_len} tokens, r={args.r}, "
          f"targets {','.join(TARGETS)}, {args.steps} timed steps each, fp32, torch threads {torch.get_num_threads()}")
    header = (f"{'model':<8}{'params':>12}{'trainable':>11}{'peftlab s/step':>16}{'peft s/step':>13}{'time ratio':>12}"
              f"{'peftlab bytes':>15}{'peft bytes':>12}{'bytes ratio':>13}")
    rows = []
    for name in args.models.split(","):
        row = bench_model(name.strip(), args, device)
        rows.append(row)
    print(header)
    print("-" * len(header))
    for row in rows:
        ours, theirs = row["peftlab_bytes"]["total"], row["peft_bytes"]["total"]
        print(f"{row['model']:<8}{row['params']:>12,}{row['trainable']:>11,}{row['peftlab_s']:>16.4f}"
              f"{row['peft_s']:>13.4f}{row['peftlab_s'] / row['peft_s']:>12.3f}"
              f"{format_bytes(ours):>15}{format_bytes(theirs):>12}{ours / theirs:>13.3f}")
        if "peftlab_cuda_peak" in row:
            a, b = row["peftlab_cuda_peak"], row["peft_cuda_peak"]
            print(f"{'':<8}cuda max_memory_allocated: peftlab {format_bytes(a)}, peft {format_bytes(b)}, "
                  f"ratio {a / b:.3f}")
    for row in rows:
        parts = ", ".join(f"{k} {format_bytes(row['peftlab_bytes'][k])} vs {format_bytes(row['peft_bytes'][k])}"
                          for k in ("weights", "grads", "optimizer", "activations"))
        print(f"{row['model']}: peftlab vs peft: {parts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
