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


def plot_frontiers(frontiers: dict[str, list[dict]], all_points: dict[str, list[dict]] | None = None, ax=None,
                   title: str = "Learning vs forgetting: each method's frontier over rates and training length"):
    """One line per method through its frontier points (seed means, 95% intervals as error bars);
    ``all_points`` (same form) adds every (rate, checkpoint) mean as faint dots. Bottom-right is best."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>pPX*h"
    for i, (method, points) in enumerate(frontiers.items()):
        color, marker = colors[i % len(colors)], markers[i % len(markers)]
        if all_points and method in all_points:
            ax.scatter([p["learning"].mean for p in all_points[method]], [p["forgetting"].mean for p in all_points[method]],
                       s=8, color=color, alpha=0.25)
        xs, ys = [p["learning"].mean for p in points], [p["forgetting"].mean for p in points]
        xerr = [0 if p["learning"].half != p["learning"].half else p["learning"].half for p in points]
        yerr = [0 if p["forgetting"].half != p["forgetting"].half else p["forgetting"].half for p in points]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, color=color, marker=marker, ms=5, lw=1.5, capsize=2,
                    elinewidth=0.7, label=method)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("learning: held-out target metric after - before (test split)")
    ax.set_ylabel("forgetting: source recall before - after")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig if fig is not None else ax.figure


def plot_lr_sweep(table: dict, step: int, methods: list[str] | None = None, chosen: dict | None = None,
                  learning: str = "learning_test", forgetting: str = "forgetting_source_recall", ncols: int = 5):
    """Small multiples, one per method: learning and forgetting (seed means, 95% intervals) against
    the learning rate at checkpoint ``step``; the chosen rate is marked. ``table`` is
    ``analysis.summarize``'s output."""
    methods = methods or sorted({m for m, _, s in table if s == step})
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), sharey=True, squeeze=False)
    for ax, method in zip(axes.flat, methods):
        rates = sorted(lr for m, lr, s in table if m == method and s == step)
        for metric, color, label in ((learning, "tab:blue", "learning"), (forgetting, "tab:red", "forgetting")):
            est = [table[(method, lr, step)][metric] for lr in rates]
            ax.errorbar(rates, [e.mean for e in est], yerr=[0 if e.half != e.half else e.half for e in est],
                        color=color, marker="o", ms=4, capsize=2, label=label)
        if chosen and method in chosen:
            ax.axvline(chosen[method].lr, color="black", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_title(method, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("learning rate (dotted: chosen on the validation split)", fontsize=9)
    fig.suptitle(f"Learning and forgetting against the learning rate, after {step} steps", fontsize=10)
    fig.tight_layout()
    return fig


def plot_update_spectra(rows: list[dict], lora_rank: int | None = None, ax=None):
    """Rank holding 90% of each full fine-tuning update's energy, per layer and module, beside the
    same for a random matrix of that shape and the LoRA rank."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"L{r['layer']}.{r['module']}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["energy_rank"] for r in rows], width=0.4, label="full fine-tuning update")
    ax.bar([i + 0.2 for i in x], [r["random_energy_rank"] for r in rows], width=0.4, label="random matrix, same shape",
           alpha=0.6)
    ax.plot(list(x), [r["full_rank"] for r in rows], "k_", ms=12, label="full rank")
    if lora_rank:
        ax.axhline(lora_rank, color="tab:red", ls="--", label=f"LoRA rank {lora_rank}")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("rank for 90% of the energy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig if fig is not None else ax.figure
