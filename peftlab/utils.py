"""Small helpers every notebook and module shares: device, dtype, seeding, parameter counts, bytes.

They live here once so that lectures never copy a device block or a seeding recipe of their own.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

_DEVICE_PRINTED = False


def warm_up_cpu_math() -> None:
    """Run one vectorised-math op (``exp``) on every CPU thread of torch's pool, once.

    Measured with torch 2.13 on a 2-core x86 CPU: the very first vectorised-math call (``cos``,
    ``sin``, ``exp``...) that a worker thread runs can come out with errors near 1.5e-4 instead of
    1e-7 (the worker's half of the tensor only, in about one process in four). The rotary
    embedding's ``cos`` is such a call, so the first forward pass of a process could differ from
    every later one, by 1e-2 in the logits, and an exact comparison between two models failed at
    random. After any one such call per thread the results are correct and repeatable, so
    ``import peftlab`` makes that call. Costs well under a millisecond.
    """
    threads = torch.get_num_threads()
    if threads > 1:  # vectorised math splits work in chunks of 2048 elements across the pool
        torch.ones(4096 * threads).exp_()


def get_device(verbose: bool = True) -> torch.device:
    """Pick the best available device: cuda > mps > cpu (``PEFTLAB_DEVICE`` overrides), print it once."""
    global _DEVICE_PRINTED
    forced = os.environ.get("PEFTLAB_DEVICE")
    if forced:
        device = torch.device(forced)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if verbose and not _DEVICE_PRINTED:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        print(f"peftlab device: {device} ({name}), torch {torch.__version__}")
        _DEVICE_PRINTED = True
    return device


def get_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The 16-bit compute dtype for mixed precision on ``device``, or None to stay in fp32.

    bf16 only where the GPU supports it (Ampere and newer; Colab's T4 does not), else fp16
    (which needs a GradScaler). On a CPU we stay in fp32: it is the reference for the course.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so a stochastic step repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"{self.trainable:,} / {self.total:,} trainable ({self.percent:.3f}%)"


def unique_parameters(model_or_params, trainable_only: bool = False) -> list[torch.nn.Parameter]:
    """The parameters of a model (or an iterable of them), each shared tensor once (tied embeddings),
    in order; only those with ``requires_grad`` when ``trainable_only``."""
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    seen: set[int] = set()
    unique = []
    for p in params:
        if id(p) not in seen and (p.requires_grad or not trainable_only):
            seen.add(id(p))
            unique.append(p)
    return unique


def lookup(table: dict, name: str, what: str, *, normalize: bool = False):
    """``table[name]``, or a KeyError that names what exists: "unknown precision 'fp8'; known: fp32, ...".

    ``normalize`` compares lower case with "-" for "_" (``"AdamW_8bit"`` finds ``"adamw-8bit"``)."""
    key = name.lower().replace("_", "-") if normalize and isinstance(name, str) else name
    if key not in table:
        raise KeyError(f"unknown {what} {name!r}; known: {', '.join(map(str, table))}")
    return table[key]


def count_parameters(model: torch.nn.Module) -> ParamCount:
    """Trainable and total parameters, each shared tensor counted once (tied embeddings).

    A quantized weight is stored in buffers, not parameters; a module that holds one says how many
    weights it stands for in ``quantized_numel`` (QLoRA's ``Linear4bit``), and they count as frozen.
    """
    trainable = total = 0
    for p in unique_parameters(model):
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    total += sum(int(getattr(m, "quantized_numel", 0)) for m in model.modules())
    return ParamCount(trainable, total)


def format_bytes(n: float) -> str:
    """Human-readable bytes in powers of 1024 (``1.50 MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def is_quick() -> bool:
    """True when ``PEFTLAB_QUICK=1``: notebooks and the CLI shrink their runs (used by the tests)."""
    return os.environ.get("PEFTLAB_QUICK", "0") not in ("", "0", "false", "False")


def print_environment() -> torch.device:
    """Print device, library versions and the run size (quick or full); return the device.

    Every notebook calls this in its first code cell.
    """
    import transformers

    from . import __version__

    device = get_device(verbose=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    dtype = get_autocast_dtype(device)
    print(f"device: {device} ({name}); mixed precision: {dtype or 'off (fp32)'}")
    print(f"peftlab {__version__} | torch {torch.__version__} | transformers {transformers.__version__}")
    print("run size: " + ("QUICK (PEFTLAB_QUICK=1, shortened for tests)" if is_quick() else "full"))
    return device
