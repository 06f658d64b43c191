"""Plots the course shows: learning vs forgetting, training curves."""
from __future__ import annotations

import matplotlib.pyplot as plt


def plot_learning_vs_forgetting(rows: list[dict], task_name: str = "", ax=None):
    """Scatter of learning (target gain, x) against forgetting (source recall lost, y), one point per method.

    Up-right learns more and forgets more; the ideal corner is bottom-right.
    """
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        ax.scatter(r["learning"], r["forgetting_source_recall"], s=60)
        ax.annotate(r["method"], (r["learning"], r["forgetting_source_recall"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=9)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"learning: target metric after - before{f' ({task_name})' if task_name else ''}")
    ax.set_ylabel("forgetting: source recall before - after")
    ax.set_title("Learning vs forgetting (bottom-right is best)")
    ax.grid(alpha=0.3)
    return fig if fig is not None else ax.figure


def plot_curves(curves: dict[str, list[float]], ylabel: str = "loss", ax=None, smooth: int = 5):
    """Training curves, one line per name, smoothed by a running mean of ``smooth`` steps."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        k = max(1, min(smooth, len(values)))
        smoothed = [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1])
                    for i in range(len(values))]
        ax.plot(smoothed, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig if fig is not None else ax.figure


def _layer_and_module(name: str) -> tuple[int | None, str]:
    """``model.layers.3.self_attn.q_proj`` -> ``(3, "self_attn.q_proj")``; no layer number -> ``(None, name)``."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return int(part), ".".join(parts[i + 1:]) or name
    return None, name


def _heatmap(ax, values, row_labels, col_labels, vmin=None, vmax=None, fmt="{:g}", cmap="viridis"):
    import numpy as np

    values = np.asarray(values, dtype=float)
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    low = vmin if vmin is not None else (np.nanmin(values) if values.size else 0)
    high = vmax if vmax is not None else (np.nanmax(values) if values.size else 0)
    middle = (low + high) / 2  # dark cells get white text
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8,
                    color="black" if v > middle else "white")
    return image


def plot_rank_pattern(pattern: dict[str, int], init_r: int | None = None, ax=None):
    """AdaLoRA's kept rank per adapted matrix: a heatmap, one row per projection, one column per layer.

    ``pattern`` is ``peftlab.methods.adalora.rank_pattern(model)``; ``init_r`` (the starting rank) fixes
    the colour scale so plots made at different steps compare.
    """
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    cells = {_layer_and_module(name): rank for name, rank in pattern.items()}
    layers = sorted({layer for layer, _ in cells if layer is not None})
    modules = list(dict.fromkeys(module for _, module in cells))
    if not layers:  # names without a layer number: one column
        layers = [None]
    grid = [[cells.get((layer, module), float("nan")) for layer in layers] for module in modules]
    image = _heatmap(ax, grid, modules, [str(layer) if layer is not None else "" for layer in layers],
                     vmin=0, vmax=init_r, fmt="{:.0f}")
    ax.figure.colorbar(image, ax=ax, label="kept rank")
    ax.set_xlabel("layer")
    total = sum(pattern.values())
    ax.set_title(f"AdaLoRA: kept rank per matrix (total {total}, mean {total / max(len(pattern), 1):.1f})")
    return fig if fig is not None else ax.figure


def plot_fusion_attention(attention: dict, tasks: list[str] | None = None, ax=None):
    """AdapterFusion's mean attention over the task adapters, one row per layer (``fusion_attention``'s output)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    rows = [[float(v) for v in weights] for weights in attention.values()]
    n = len(rows[0]) if rows else 0
    tasks = list(tasks) if tasks is not None else [f"adapter {i}" for i in range(n)]
    labels = [str(_layer_and_module(name)[0]) if _layer_and_module(name)[0] is not None else name
              for name in attention]
    image = _heatmap(ax, rows, labels, tasks, vmin=0, vmax=1, fmt="{:.2f}")
    ax.figure.colorbar(image, ax=ax, label="mean attention")
    ax.set_xlabel("task adapter")
    ax.set_ylabel("layer")
    ax.set_title("AdapterFusion: where each layer looks")
    return fig if fig is not None else ax.figure
