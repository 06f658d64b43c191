"""Choosing which layers a method touches, and swapping them: shared by LoRA, adapters, QLoRA, AdaLoRA.

Targets are given the way peft takes them: a list of names matched against the *end* of each module's
dotted name (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``; ``"self_attn.q_proj"`` works
too), or one string used as a regular expression that must match the *whole* dotted name. Nothing
matching is an error that lists the layer names that do exist, so a student sees what to type.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

try:  # GPT-2 stores its projections as Conv1D: a Linear with the weight transposed (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()

LINEAR_TYPES = (nn.Linear, Conv1D) if Conv1D else (nn.Linear,)


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the like (matched by class name too: each library has its own class)."""
    return isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()


def output_head_name(model: nn.Module) -> str | None:
    """Dotted name of the output projection (``lm_head``, BERT's ``cls.predictions.decoder``), if any."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return next((name for name, m in model.named_modules() if m is head), None) if head is not None else None


def freeze(model: nn.Module) -> nn.Module:
    """Make every existing parameter non-trainable (methods then unfreeze or add what they train)."""
    model.requires_grad_(False)
    return model


def linear_layer_names(model: nn.Module, types: tuple = LINEAR_TYPES) -> list[str]:
    """Distinct last components of the names of ``types`` layers, e.g. ``['q_proj', 'k_proj', ...]``."""
    names: list[str] = []
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if isinstance(module, types) and short not in names:
            names.append(short)
    return names


def matches(name: str, targets: str | Sequence[str]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(model: nn.Module, targets: str | Sequence[str], types: tuple = LINEAR_TYPES,
                 exclude: Sequence[str] = ("lm_head",)) -> list[tuple[str, nn.Module]]:
    """``(dotted name, module)`` of every ``types`` layer matching ``targets``.

    Raises ``ValueError`` naming the candidates when nothing matches or a target matches only layers of
    another type.
    """
    found = [(name, module) for name, module in model.named_modules()
             if name and isinstance(module, types) and matches(name, targets)
             and not any(name == e or name.endswith("." + e) for e in exclude)]
    missing = [] if isinstance(targets, str) else [
        t for t in targets if not any(name == t or name.endswith("." + t) for name, _ in found)]
    if not found or missing:
        what = f"target pattern {targets!r}" if isinstance(targets, str) else \
            f"target module{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing or targets)}"
        kinds = "/".join(t.__name__ for t in types)
        raise ValueError(f"{what} not found; {kinds} layers in this model: "
                         f"{', '.join(linear_layer_names(model, types)) or '(none)'}")
    return found


def replace_module(model: nn.Module, dotted_name: str, new: nn.Module) -> None:
    """Put ``new`` where ``dotted_name`` is (``model.layers.0.mlp`` -> parent ``model.layers.0``, ``mlp``)."""
    parent_name, _, child = dotted_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
