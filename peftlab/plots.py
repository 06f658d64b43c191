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
