"""The result type shared by the estimator and the probe: one training step's bytes by bucket."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..utils import format_bytes
from .regimes import GB

BUCKETS = ("weights", "gradients", "master", "optimizer", "activations")


@dataclass
class MemoryBreakdown:
    """Bytes of one training step by bucket; the estimator and the probe both return this."""

    label: str
    weights: float = 0
    gradients: float = 0
    master: float = 0  # fp32 master weights (mixed precision)
    optimizer: float = 0  # optimizer state tensors
    activations: float = 0  # tensors saved for backward
    peak: float | None = None  # measured: torch.cuda.max_memory_allocated over the step (CUDA only)
    trainable: int | None = None  # parameter counts, when known
    params: int | None = None
    notes: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(getattr(self, b) for b in BUCKETS)

    def as_columns(self) -> dict:
        """Flat columns for a results table (``compare.csv``): bytes per bucket, total and peak."""
        return {"weight_bytes": int(self.weights), "grad_bytes": int(self.gradients),
                "master_bytes": int(self.master), "optimizer_bytes": int(self.optimizer),
                "activation_bytes": int(self.activations), "step_bytes": int(self.total),
                "peak_bytes": None if self.peak is None else int(self.peak)}

    def table(self) -> str:
        return side_by_side(self)

    def __str__(self) -> str:
        return self.table()


def side_by_side(*breakdowns: MemoryBreakdown, unit: str = "auto") -> str:
    """A table with one column per breakdown (and the ratio of the last to the first when there are two)."""
    if not breakdowns:
        raise ValueError("side_by_side needs at least one MemoryBreakdown")
    ratio = len(breakdowns) == 2
    width = max(14, *(len(b.label) + 2 for b in breakdowns))
    header = f"{'bytes':<13}" + "".join(f"{b.label:>{width}}" for b in breakdowns) + ("   ratio" if ratio else "")
    lines = [header, "-" * len(header)]
    rows = list(BUCKETS) + ["total"] + (["cuda peak"] if any(b.peak is not None for b in breakdowns) else [])
    for row in rows:
        values = [b.total if row == "total" else (b.peak if row == "cuda peak" else getattr(b, row)) for b in breakdowns]
        cells = "".join(f"{'-' if v is None else _fmt(v, unit):>{width}}" for v in values)
        if ratio:
            a, b = values
            cells += f"{b / a:>8.3f}" if a and b is not None else f"{'-':>8}"
        lines.append(f"{row:<13}{cells}")
    counts = [b for b in breakdowns if b.params]
    if counts:
        lines.append(f"{'trainable':<13}" + "".join(
            f"{'-' if b.trainable is None else f'{b.trainable:,}':>{width}}" for b in breakdowns))
    return "\n".join(lines)


def _fmt(n: float, unit: str) -> str:
    if unit == "B":
        return f"{n:,.0f}"
    if unit == "GB":
        return f"{n / GB:.2f} GB"
    return format_bytes(n)


def save_json(breakdowns: Sequence[MemoryBreakdown], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(b) for b in breakdowns], indent=2, default=str) + "\n")
