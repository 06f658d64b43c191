"""The estimator: the whole training step of a method on a model, from counts and shapes alone.

``estimate_memory`` turns parameter counts into the four parameter buckets, with ZeRO stages 1/2/3
over N devices; ``method_counts`` splits a model's parameters for a method by name (the estimator's
method presets, ``METHOD_PRESETS``); ``estimate`` adds the activations.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
class MethodPreset:
    """A method as the estimator sizes it: the registered method it stands for and its settings.

    These are *named presets* for large models, not the registered defaults (``peftlab.methods``),
    which are sized for the tiny base (LoRA r=8 on every linear layer, 10 prompt tokens): at 7B scale
    the common published setting is rank 16 on the attention projections (q, k, v, o; GPT-2: c_attn,
    attn.c_proj) and 20 virtual tokens. ``estimate(..., rank=, targets=)`` sizes any other setting.
    """

    method: str  # the registered method (peftlab.methods.METHODS) this preset sizes
    help: str
    rank: int = 0  # LoRA rank (lora, qlora)
    tokens: int = 0  # virtual tokens (prompt)


METHOD_PRESETS: dict[str, MethodPreset] = {
    "full": MethodPreset("full", "full fine-tuning: every parameter trains"),
    "lora": MethodPreset("lora", "LoRA, rank 16 on the attention projections; frozen base in the precision's weight dtype",
                         rank=16),
    "qlora": MethodPreset("qlora", "QLoRA: LoRA as above on a base whose layer matrices are NF4 (4.127 bits); "
                          "embeddings, norms, head 16-bit", rank=16),
    "bitfit": MethodPreset("bitfit", "BitFit: only bias terms train (Llama-2/3 have none)"),
    "prompt": MethodPreset("prompt", "prompt tuning: 20 trainable virtual-token embeddings, prepended to every sequence",
                           tokens=20),
}
METHOD_HELP = {name: preset.help for name, preset in METHOD_PRESETS.items()}
PROMPT_TOKENS = METHOD_PRESETS["prompt"].tokens


@dataclass(frozen=True)
class MethodCounts:
    trainable: int
    frozen: int
    quantized: int
    train_weights: bool  # do the base's matrices train (so they keep their inputs)?
    norms_train: bool  # do the norms' gains or biases train?
    lora_targets: tuple[str, ...] = ()
    extra_tokens: int = 0  # tokens the method prepends (prompt tuning)


def method_counts(model, method: str = "full", *, rank: int | None = None,
                  targets: Sequence[str] | None = None) -> MethodCounts:
    """Trainable / frozen / quantized parameter counts of ``method`` (a ``METHOD_PRESETS`` name) on
    ``model`` (a shape, config or preset); ``rank`` and ``targets`` override the preset's LoRA setting."""
    s = ModelShape.from_config(model)
    total = parameter_count(s)
    key = method.lower()
    preset = lookup(METHOD_PRESETS, key, "method")
    rank = preset.rank if rank is None else rank
    if key == "full":
        return MethodCounts(total, 0, 0, True, True)
    if key in ("lora", "qlora"):
        targets = tuple(targets or s.attention_targets())
        dims = s.linear_dims()
        unknown = [t for t in targets if t not in dims]
        if unknown:
            raise KeyError(f"LoRA target(s) {', '.join(unknown)} not in a {s.family} layer; matrices: {', '.join(dims)}")
        lora = s.layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)
        quantized = s.layers * s.layer_matrix_parameters() if key == "qlora" else 0
        return MethodCounts(lora, total - quantized, quantized, False, False, targets)
    if key == "bitfit":
        biases = s.bias_parameters()
        return MethodCounts(biases, total - biases, 0, False, s.family == "gpt2")  # LayerNorm biases
    if key == "prompt":
        return MethodCounts(preset.tokens * s.hidden, total, 0, False, False, extra_tokens=preset.tokens)
    raise AssertionError(f"method preset {key!r} has no count rule")  # a preset added without one


def estimate(model="tiny", method: str = "full", *, precision: str = "mixed", optimizer: str = "adamw",
             batch: int = 1, seq: int = 512, rank: int | None = None, targets: Sequence[str] | None = None,
             checkpointing: bool = False, zero_stage: int = 0, n_devices: int = 1, attention: str = "sdpa",
             padded: bool = False, label: str | None = None) -> MemoryBreakdown:
    """The whole training step of ``method`` on ``model`` (preset name, config, dict or ``ModelShape``)."""
    s = ModelShape.from_config(model)
    counts = method_counts(s, method, rank=rank, targets=targets)
    rank = METHOD_PRESETS[method.lower()].rank if rank is None else rank
    activation_element = lookup(PRECISIONS, precision, "precision", normalize=True).activation
    acts = activation_bytes(s, batch, seq + counts.extra_tokens, checkpointing=checkpointing,
                            bytes_per_element=activation_element, attention=attention,
                            train_weights=counts.train_weights, lora_targets=counts.lora_targets,
                            lora_rank=rank, padded=padded, input_needs_grad=counts.train_weights or counts.extra_tokens > 0,
                            norms_train=counts.norms_train)
    result = estimate_memory(counts.trainable, counts.frozen, counts.quantized, precision=precision,
                             optimizer=optimizer, activations=acts, zero_stage=zero_stage, n_devices=n_devices,
                             label=label or f"{method} estimate")
    result.notes.update(model=model if isinstance(model, str) else s.family, method=method, batch=batch, seq=seq,
                        rank=rank, checkpointing=checkpointing, attention=attention)
    return result
