"""Will it fit? Estimates of presets x methods against the GPUs students meet, with a plot."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .breakdown import BUCKETS
from .estimate import estimate
from .regimes import GiB


@dataclass(frozen=True)
class GPU:
    """A card as the spec sheet names it; its memory in GiB ("24 GB" on an RTX 3090 is 24 GiB)."""

    name: str
    memory_gib: float

    @property
    def bytes(self) -> float:
        return self.memory_gib * GiB


GPUS: dict[str, GPU] = {
    "t4": GPU("T4 16 GB", 16), "rtx3090": GPU("RTX 3090 24 GB", 24), "a100-40gb": GPU("A100 40 GB", 40),
    "a100-80gb": GPU("A100 80 GB", 80), "h100": GPU("H100 80 GB", 80),
}

#: A step fits when its estimate is under this share of the card: the CUDA context, the allocator's
#: fragmentation and short-lived temporaries (the logits' gradient, casts) need the rest.
FIT_MARGIN = 0.9


def fit_verdict(total_bytes: float, gpu: GPU | str) -> str:
    """'fits' (under 90% of the card), 'tight' (90-100%: may work, with care) or 'no'."""
    card = GPUS[gpu.lower()] if isinstance(gpu, str) else gpu
    if total_bytes <= FIT_MARGIN * card.bytes:
        return "fits"
    return "tight" if total_bytes <= card.bytes else "no"


def will_it_fit(models: Iterable[str] = ("smollm2-135m", "llama-2-7b", "llama-3-8b", "llama-2-13b", "llama-2-70b"),
                methods: Iterable[str] = ("full", "lora", "qlora"), gpus: Iterable[str] = tuple(GPUS),
                **estimate_kwargs) -> list[dict]:
    """One row per model x method: the estimate and the verdict on each GPU."""
    rows = []
    for model in models:
        for method in methods:
            est = estimate(model, method, **estimate_kwargs)
            row = {"model": model, "method": method, "trainable": est.trainable, "total_bytes": est.total,
                   **{b: getattr(est, b) for b in BUCKETS}}
            row.update({gpu: fit_verdict(est.total, gpu) for gpu in gpus})
            rows.append(row)
    return rows


def format_fit_table(rows: list[dict]) -> str:
    gpus = [g for g in GPUS if g in rows[0]]
    header = f"{'model':<14}{'method':<8}{'trainable':>16}{'step':>12}" + "".join(f"{g:>11}" for g in gpus)
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['model']:<14}{r['method']:<8}{r['trainable']:>16,}{r['total_bytes'] / GiB:>9.1f} GiB"
                     + "".join(f"{r[g]:>11}" for g in gpus))
    return "\n".join(lines)


def plot_will_it_fit(rows: list[dict], ax=None):
    """Horizontal bars of each model x method's bytes (stacked by bucket, log scale) with GPU lines."""
    import matplotlib.pyplot as plt

    colors = {"weights": "#4c72b0", "gradients": "#dd8452", "master": "#937860", "optimizer": "#c44e52",
              "activations": "#55a868"}
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    labels = [f"{r['model']} {r['method']}" for r in rows]
    y = range(len(rows))
    left = [0.0] * len(rows)
    for bucket in BUCKETS:
        widths = [r[bucket] / GiB for r in rows]
        ax.barh(y, widths, left=left, color=colors[bucket], label=bucket)
        left = [a + b for a, b in zip(left, widths)]
    for key, style in zip(GPUS, ("--", "-", ":", "-.", (0, (1, 3)))):
        if key == "h100":
            continue  # same 80 GiB line as the A100 80 GB
        ax.axvline(GPUS[key].bytes / GiB, color="black", linestyle=style, linewidth=1,
                   label=GPUS[key].name + (" / H100 80 GB" if key == "a100-80gb" else ""))
    ax.set_xscale("log")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("GiB per device (log scale)")
    ax.set_title("Will it fit? One training step, estimated")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax.figure
