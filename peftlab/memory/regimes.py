"""Bytes per parameter: the precision and optimizer regimes of a training step.

Rajbhandari et al. 2020 ("ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"):
mixed-precision Adam holds 2 + 2 + K bytes per trainable parameter, K = 12 (16 B/param). The table of
``bytes_per_param`` gives every regime the course uses; ``claimed_totals`` turns the common
"a 7B model needs N GB" claims into arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..utils import lookup

GB = 10**9  # what spec sheets and the common claims call a gigabyte
GiB = 1024**3  # what the GPU actually has ("24 GB" on an RTX 3090 is 24 GiB)

#: NF4 with double quantization (QLoRA, Dettmers et al. 2023): 4 bits per weight, plus one 8-bit
#: absmax per block of 64 weights, plus one fp32 scale per block of 256 of those absmax values.
NF4_BITS_PER_PARAM = 4 + 8 / 64 + 32 / (64 * 256)  # 4.127 bits
NF4_BYTES_PER_PARAM = NF4_BITS_PER_PARAM / 8


@dataclass(frozen=True)
class Precision:
    name: str
    weight: int  # bytes of each weight the forward pass reads
    grad: int  # bytes of each gradient
    master: int  # bytes of an extra fp32 copy of each trainable weight (mixed precision only)
    state: int  # bytes of each 32-bit-optimizer state value (momentum, variance)
    activation: int  # bytes of each activation value kept for backward
    help: str


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", 4, 4, 0, 4, 4, "everything in fp32"),
    "fp16": Precision("fp16", 2, 2, 0, 2, 2, "pure fp16: weights, gradients and optimizer states in 16 bits"),
    "bf16": Precision("bf16", 2, 2, 0, 2, 2, "pure bf16: weights, gradients and optimizer states in 16 bits"),
    "mixed": Precision("mixed", 2, 2, 4, 4, 2,
                       "mixed precision (ZeRO/Megatron): 16-bit weights and gradients, fp32 master weights and states"),
}


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    states: int  # state values per trainable parameter
    state_bytes: float | None  # fixed bytes per state value (8-bit), or None: the precision's
    help: str


#: 8-bit AdamW (bitsandbytes): each state is 1 byte plus one fp32 absmax per block of 256 values.
#: (bitsandbytes keeps 32-bit states for tensors under 4096 values; the estimator, which sees only
#: counts, ignores that.)
ADAM8BIT_STATE_BYTES = 1 + 4 / 256

OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("sgd", 0, None, "plain SGD: no state"),
    "sgd-momentum": OptimizerSpec("sgd-momentum", 1, None, "SGD with momentum: one buffer"),
    "adam": OptimizerSpec("adam", 2, None, "Adam: first and second moments"),
    "adamw": OptimizerSpec("adamw", 2, None, "AdamW: first and second moments"),
    "adamw8bit": OptimizerSpec("adamw8bit", 2, ADAM8BIT_STATE_BYTES, "8-bit AdamW: two 1-byte states + block scales"),
}




@dataclass(frozen=True)
class BytesPerParam:
    weights: float
    gradients: float
    master: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.master + self.optimizer


def bytes_per_param(precision: str = "fp32", optimizer: str = "adamw") -> BytesPerParam:
    """Bytes held per *trainable* parameter, before activations.

    regime      weights  grads  master  AdamW states  total
    fp32        4        4      0       4 + 4         16
    fp16/bf16   2        2      0       2 + 2         8    (the "56 GB for a 7B model" regime)
    mixed       2        2      4       4 + 4         16   (ZeRO: 2 + 2 + K, K = 12)

    SGD keeps no state, SGD with momentum one value, Adam/AdamW two; 8-bit AdamW keeps two 1-byte
    states (+ 4/256 bytes of block scales each) whatever the precision. A *frozen* parameter holds
    only its weight (``PRECISIONS[p].weight`` bytes, or ``NF4_BYTES_PER_PARAM`` when quantized).
    Note that PyTorch's ``torch.autocast`` keeps fp32 weights, gradients and states: its bytes per
    parameter are the fp32 row (16), only its activations are 16-bit.
    """
    prec = lookup(PRECISIONS, precision, "precision", normalize=True)
    opt = lookup(OPTIMIZERS, optimizer, "optimizer", normalize=True)
    state_bytes = opt.state_bytes if opt.state_bytes is not None else prec.state
    return BytesPerParam(prec.weight, prec.grad, prec.master, opt.states * state_bytes)


def claimed_totals(n_params: float = 7e9) -> dict:
    """Bytes of an ``n_params`` model's weights + gradients + AdamW states in each precision regime
    (what "a 7B model needs 56 GB" is arithmetic of; lecture 02 and lecture 13 read it)."""
    return {name: n_params * bytes_per_param(name, "adamw").total for name in PRECISIONS}
