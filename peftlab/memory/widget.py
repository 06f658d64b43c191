"""A memory calculator with ipywidgets: pick a model, a method and a GPU, see where the bytes go.

``calculator()`` shows dropdowns and sliders (model, method, precision, optimizer, batch, sequence
length, LoRA rank, GPU, gradient checkpointing) above a stacked bar of one training step's bytes
(``peftlab.memory.estimate``) against the GPU's capacity, and the table beside it. Where widgets
cannot render (a plain script, a test, a notebook run headless) the controls are still built and
the table of the current settings is printed, so the same call works everywhere.
"""
from __future__ import annotations

import sys

from .. import memory

SEQ_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)
RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
COLORS = {"weights": "#4c72b0", "gradients": "#dd8452", "master": "#937860", "optimizer": "#c44e52",
          "activations": "#55a868"}


def plot_breakdown(breakdowns, gpu: str | None = None, ax=None):
    """Stacked bars (GiB) of one or more ``MemoryBreakdown`` and, if given, the GPU's capacity line."""
    import matplotlib.pyplot as plt

    if isinstance(breakdowns, memory.MemoryBreakdown):
        breakdowns = [breakdowns]
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.3 * len(breakdowns), 4))
    x = range(len(breakdowns))
    bottom = [0.0] * len(breakdowns)
    for bucket in memory.BUCKETS:
        heights = [getattr(b, bucket) / memory.GiB for b in breakdowns]
        ax.bar(x, heights, bottom=bottom, color=COLORS[bucket], label=bucket, width=0.6)
        bottom = [a + h for a, h in zip(bottom, heights)]
    if gpu is not None:
        card = memory.GPUS[gpu]
        ax.axhline(card.memory_gib, color="black", linestyle="--", linewidth=1.2, label=card.name)
        ax.axhline(memory.FIT_MARGIN * card.memory_gib, color="gray", linestyle=":", linewidth=1,
                   label=f"{memory.FIT_MARGIN:.0%} of it")
    ax.set_xticks(list(x), [b.label for b in breakdowns], rotation=15, ha="right")
    ax.set_ylabel("GiB per device")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax.figure


def _in_kernel() -> bool:
    """True inside a Jupyter kernel, where widgets can be displayed."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class Calculator:
    """The controls, the current estimate and a redraw; ``calculator()`` builds and shows one."""

    def __init__(self, model: str = "llama-2-7b", method: str = "qlora", precision: str = "mixed",
                 optimizer: str = "adamw", batch: int = 1, seq: int = 512, rank: int = 16, gpu: str = "rtx3090",
                 checkpointing: bool = False):
        import ipywidgets as widgets

        self.controls = {
            "model": widgets.Dropdown(options=list(memory.PRESETS), value=model, description="model"),
            "method": widgets.Dropdown(options=list(memory.sized_methods()), value=method, description="method"),
            "precision": widgets.Dropdown(options=list(memory.PRECISIONS), value=precision, description="precision"),
            "optimizer": widgets.Dropdown(options=list(memory.OPTIMIZERS), value=optimizer, description="optimizer"),
            "batch": widgets.IntSlider(value=batch, min=1, max=64, description="batch"),
            "seq": widgets.SelectionSlider(options=SEQ_LENGTHS, value=seq, description="seq length"),
            "rank": widgets.SelectionSlider(options=RANKS, value=rank, description="LoRA rank"),
            "gpu": widgets.Dropdown(options=list(memory.GPUS), value=gpu, description="GPU"),
            "checkpointing": widgets.Checkbox(value=checkpointing, description="gradient checkpointing"),
        }
        self.output = widgets.Output()
        names = list(self.controls)
        self.widget = widgets.VBox([
            widgets.HBox([widgets.VBox([self.controls[n] for n in names[:5]]),
                          widgets.VBox([self.controls[n] for n in names[5:]])]),
            self.output,
        ])
        for control in self.controls.values():
            control.observe(lambda change: self.redraw(), names="value")

    @property
    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def estimate(self) -> memory.MemoryBreakdown:
        v = self.values
        return memory.estimate(v["model"], v["method"], precision=v["precision"], optimizer=v["optimizer"],
                               batch=v["batch"], seq=v["seq"], rank=v["rank"], checkpointing=v["checkpointing"],
                               label=f"{v['model']} {v['method']}")

    def report(self) -> str:
        est = self.estimate()
        gpu = self.values["gpu"]
        return (f"{est.table()}\n{memory.GPUS[gpu].name}: {memory.fit_verdict(est.total, gpu)} "
                f"({est.total / memory.GPUS[gpu].bytes:.0%} of the card)")

    def redraw(self) -> None:
        if not _in_kernel():  # nowhere to draw: the table is the output
            print(self.report())
            return
        import matplotlib.pyplot as plt
        from IPython.display import clear_output, display

        with self.output:
            clear_output(wait=True)
            print(self.report())
            fig = plot_breakdown(self.estimate(), self.values["gpu"])
            display(fig)
            plt.close(fig)


def calculator(**initial) -> Calculator:
    """Show the calculator in Jupyter; elsewhere print the table for ``initial`` settings. Returns it."""
    calc = Calculator(**initial)
    if _in_kernel():
        from IPython.display import display

        display(calc.widget)
        calc.redraw()
    else:
        print(calc.report())
    return calc
