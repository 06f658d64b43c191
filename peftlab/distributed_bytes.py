"""Bytes each rank holds under DDP and FSDP2, measured from its own tensors (local shards), beside the
memory estimator's per-rank figures for the ZeRO stage each strategy stands for (``peftlab.distributed``).
"""
from __future__ import annotations

import torch

from .memory import MemoryBreakdown, estimate_memory, optimizer_state_bytes
from .train import Hook
from .utils import unique_parameters

STRATEGIES = {
    "ddp": (0, "DDP: whole model on every rank, gradients all-reduced"),
    "fsdp-zero2": (2, "FSDP2, reshard_after_forward=False: gathered weights kept from forward to backward"),
    "fsdp-zero3": (3, "FSDP2, reshard_after_forward=True: weights gathered for forward, freed, gathered again"),
}



def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: a DTensor's local shard, or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _nbytes(t: torch.Tensor) -> int:
    t = _local(t)
    return t.numel() * t.element_size()


class LocalBytes(Hook):
    """Measures, at the first step, the bytes this rank holds, from its own tensors (local shards).

    - ``weights``: the parameters' local shards (whole parameters under DDP);
    - ``gathered``: whole parameters held between forward and backward: what FSDP2 all-gathered and
      did not free after forward (everything with ``reshard_after_forward=False``; nothing with ``True``:
      measured 0 bytes on torch 2.13, only the root's default ``None`` keeps its parameters whole), and
      parameters that are never sharded (a hooked method's replicated trainable parameters);
    - ``gradients``: the local gradients at the optimizer step (after the all-reduce / reduce-scatter);
    - ``optimizer``: the optimizer's local state tensors after the step (``step`` counters left out,
      as the estimator leaves them out).
    """

    def __init__(self):
        self.weights = self.gathered = self.gradients = self.optimizer = None

    def extra_loss(self, model, step):
        from torch.distributed.tensor import DTensor

        if step == 0:  # after forward, before backward
            params = unique_parameters(model)
            self.gathered = sum(_nbytes(p) for p in params if not isinstance(p, DTensor))
        return None

    def before_step(self, model, step, optimizer):
        if step == 0:
            self.gradients = sum(_nbytes(p.grad) for p in unique_parameters(model) if p.grad is not None)

    def after_step(self, model, step, optimizer):
        if step == 0:
            self.weights = sum(_nbytes(p) for p in unique_parameters(model))
            self.optimizer = optimizer_state_bytes(optimizer, local=_local)

    def breakdown(self, strategy: str, label: str = "measured") -> MemoryBreakdown:
        """As the estimator counts: under ``fsdp-zero2`` the weights held during the step are the gathered ones."""
        weights = self.gathered if strategy == "fsdp-zero2" else self.weights
        return MemoryBreakdown(label, weights=weights, gradients=self.gradients, optimizer=self.optimizer,
                               notes={"local shards of the weights": self.weights,
                                      "gathered between forward and backward": self.gathered})


def estimate_per_rank(trainable: int, frozen: int, strategy: str, world_size: int, replicated: bool = False,
                      label: str = "estimate") -> MemoryBreakdown:
    """``peftlab.memory.estimate_memory``'s per-rank figures for the ZeRO stage ``strategy`` stands for (fp32 AdamW).

    ``replicated``: the trainable parameters are whole on every rank (a hooked method under FSDP2): they
    count at stage 0 and the frozen base at the strategy's stage.
    """
    stage = STRATEGIES[strategy][0]
    if not replicated or stage == 0:
        return estimate_memory(trainable, frozen, precision="fp32", optimizer="adamw", zero_stage=stage,
                               n_devices=world_size, label=label)
    whole = estimate_memory(trainable, 0, precision="fp32", optimizer="adamw", zero_stage=0, n_devices=world_size)
    base = estimate_memory(0, frozen, precision="fp32", optimizer="adamw", zero_stage=stage, n_devices=world_size)
    return MemoryBreakdown(label, weights=whole.weights + base.weights, gradients=whole.gradients,
                           optimizer=whole.optimizer, trainable=trainable, params=trainable + frozen,
                           notes={**base.notes, "trainable parameters": "replicated (stage 0)"})



BYTE_ROWS = ("weights", "gradients", "optimizer")


def format_rank_table(results: list[dict]) -> str:
    """One block per rank: bytes held, measured from the local shards, beside the estimator's per-rank figure."""
    first = results[0]
    stage, help_text = STRATEGIES[first["strategy"]]
    lines = [f"{first['method']} with {first['strategy']} on {first['world_size']} ranks ({help_text})",
             f"{'rank':<6}{'bytes':<12}{'measured':>14}{f'ZeRO-{stage} estimate':>18}{'equal':>7}"]
    for r in sorted(results, key=lambda r: r["rank"]):
        for row in BYTE_ROWS:
            m, e = getattr(r["measured"], row), getattr(r["estimate"], row)
            lines.append(f"{r['rank']:<6}{row:<12}{m:>14,.0f}{e:>18,.0f}{'yes' if m == e else 'NO':>7}")
    notes = first["measured"].notes
    lines.append(f"(each rank also keeps {notes['local shards of the weights']:,} bytes of weight shards; "
                 f"{notes['gathered between forward and backward']:,} bytes of whole weights are held "
                 "between forward and backward)" if first["strategy"] != "ddp" else "")
    if first.get("dtype", "float32") != "float32":
        lines.append(f"({first['dtype']} weights: the estimator counts fp32's 4 bytes per number)")
    if "trainable parameters" in first["estimate"].notes:
        lines.append("(the method's hooks read whole tensors: its trainable parameters stay whole on every rank, "
                     "their gradients all-reduced; only the frozen base is sharded)")
    return "\n".join(line for line in lines if line)
