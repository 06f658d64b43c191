"""The estimator: the whole training step of a method on a model, from counts and shapes alone.

``estimate_memory`` turns parameter counts into the four parameter buckets, with ZeRO stages 1/2/3
over N devices; ``method_counts`` splits a model's parameters for a method by name; ``estimate`` adds
the activations.

The estimator knows no method: each registered method that it can size declares a ``Sizing`` on its
record (``peftlab.methods.Method.sizing``): how it splits a model's parameters, from shapes alone, and
the setting the estimator assumes (the common published one at 7B scale, e.g. LoRA rank 16 on the
attention projections, 20 prompt tokens, not the tiny base's registered defaults).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..utils import lookup
from .activations import activation_bytes
from .breakdown import MemoryBreakdown
from .regimes import NF4_BYTES_PER_PARAM, PRECISIONS, bytes_per_param
from .shapes import ModelShape, parameter_count

def estimate_memory(trainable: int, frozen: int = 0, quantized: int = 0, *, precision: str = "fp32",
                    optimizer: str = "adamw", activations: float = 0, zero_stage: int = 0,
                    n_devices: int = 1, label: str = "estimate") -> MemoryBreakdown:
    """Bytes per device of one training step from parameter counts.

    ``trainable`` parameters hold a weight, a gradient, (a master copy) and optimizer state;
    ``frozen`` ones only a weight in the precision's dtype; ``quantized`` ones only a 4-bit NF4 weight.
    ZeRO across ``n_devices`` data-parallel devices partitions (divides by N):
    stage 1 the optimizer state and master weights, stage 2 also the gradients, stage 3 also the
    weights. Activations are per device (each holds its own micro-batch) and never divided.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0 (off), 1, 2 or 3, not {zero_stage!r}")
    if n_devices < 1:
        raise ValueError(f"n_devices must be at least 1, not {n_devices}")
    per = bytes_per_param(precision, optimizer)
    prec = lookup(PRECISIONS, precision, "precision", normalize=True)
    n = n_devices

    def shard(nbytes: float, stage: int) -> float:
        return nbytes / n if zero_stage >= stage else nbytes

    weights = (trainable + frozen) * prec.weight + quantized * NF4_BYTES_PER_PARAM
    return MemoryBreakdown(
        label=label,
        weights=shard(weights, 3),
        gradients=shard(trainable * per.gradients, 2),
        master=shard(trainable * per.master, 1),
        optimizer=shard(trainable * per.optimizer, 1),
        activations=activations,
        trainable=trainable,
        params=trainable + frozen + quantized,
        notes={"precision": precision, "optimizer": optimizer, "zero_stage": zero_stage, "n_devices": n_devices},
    )


@dataclass(frozen=True)
class MethodCounts:
    """A method's split of a model's parameters, and what the activation model needs to know of it."""

    trainable: int
    frozen: int
    quantized: int
    train_weights: bool  # do the base's matrices train (so they keep their inputs)?
    norms_train: bool  # do the norms' gains or biases train?
    lora_targets: tuple[str, ...] = ()
    extra_tokens: int = 0  # tokens the method prepends (prompt tuning)
    lora_rank: int = 0  # rank of the low-rank updates on ``lora_targets``


@dataclass(frozen=True)
class Sizing:
    """How the estimator counts a method: declared on its record (``register(..., sizing=Sizing(...))``).

    ``count(shape, total, setting) -> MethodCounts``: the split on a model of ``shape`` (a ``ModelShape``)
    with ``total`` parameters, under ``setting``, a dict of the knobs it reads (``rank``, ``targets``:
    ``"attention"``, ``"all"`` or layer names, ``tokens``). ``setting`` here is what the estimator assumes
    unless told otherwise; ``of_config(config)`` is the setting of one of the method's own configs (None:
    the rule cannot size it), so the tests can check the count against the applied model.
    """

    help: str  # one line: the method and the setting assumed
    count: Callable[..., MethodCounts]
    setting: dict = field(default_factory=dict)
    of_config: Callable[[object], dict | None] = lambda config: {}


def _registry() -> dict:
    # Read when asked, not at import: the registry imports the training loop, which imports this package.
    from ..methods import METHODS

    return METHODS


def _sizing(method: str) -> Sizing:
    sizing = lookup(_registry(), method.lower(), "method").sizing
    if sizing is None:
        raise ValueError(f"the memory estimator cannot size {method!r} (its method declares no Sizing); "
                         f"it sizes: {', '.join(sized_methods())}")
    return sizing


def sized_methods() -> dict[str, str]:
    """The methods the estimator sizes, each with one line on the setting it assumes."""
    return {name: m.sizing.help for name, m in _registry().items() if m.sizing is not None}


def method_counts(model, method: str = "full", **setting) -> MethodCounts:
    """Trainable / frozen / quantized parameter counts of registered ``method`` on ``model`` (a shape,
    config or preset), at the estimator's setting for it; ``setting`` overrides it (LoRA's ``rank`` and
    ``targets``, prompt tuning's ``tokens``; a knob the method does not have is ignored, None keeps the default)."""
    s = ModelShape.from_config(model)
    sizing = _sizing(method)
    given = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in setting.items() if v is not None}
    return sizing.count(s, parameter_count(s), {**sizing.setting, **given})


def estimate(model="tiny", method: str = "full", *, precision: str = "mixed", optimizer: str = "adamw",
             batch: int = 1, seq: int = 512, rank: int | None = None, targets: Sequence[str] | None = None,
             checkpointing: bool = False, zero_stage: int = 0, n_devices: int = 1, attention: str = "sdpa",
             padded: bool = False, label: str | None = None) -> MemoryBreakdown:
    """The whole training step of ``method`` on ``model`` (preset name, config, dict or ``ModelShape``)."""
    s = ModelShape.from_config(model)
    counts = method_counts(s, method, rank=rank, targets=targets)
    activation_element = lookup(PRECISIONS, precision, "precision", normalize=True).activation
    acts = activation_bytes(s, batch, seq + counts.extra_tokens, checkpointing=checkpointing,
                            bytes_per_element=activation_element, attention=attention,
                            train_weights=counts.train_weights, lora_targets=counts.lora_targets,
                            lora_rank=counts.lora_rank, padded=padded,
                            input_needs_grad=counts.train_weights or counts.extra_tokens > 0,
                            norms_train=counts.norms_train)
    result = estimate_memory(counts.trainable, counts.frozen, counts.quantized, precision=precision,
                             optimizer=optimizer, activations=acts, zero_stage=zero_stage, n_devices=n_devices,
                             label=label or f"{method} estimate")
    result.notes.update(model=model if isinstance(model, str) else s.family, method=method, batch=batch, seq=seq,
                        rank=counts.lora_rank, checkpointing=checkpointing, attention=attention)
    return result
