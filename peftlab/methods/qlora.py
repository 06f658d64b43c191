"""QLoRA: a frozen 4-bit NF4 base weight, dequantized on the fly, plus a trainable LoRA update.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs":

    y = dequant(NF4(W)) x + (alpha / r) * B A x,     W stored in 4.127 bits, A and B in fp32

The base weight is quantized once, blockwise (64 weights per fp32 absmax), to NormalFloat4, and the
absmax values themselves to 8 bits in blocks of 256 (double quantization); ``peftlab.quant`` does
both exactly as bitsandbytes does. Each forward pass dequantizes the weight to the compute dtype
(``peftlab.kernels.dequantize_nf4``: a Triton kernel on a GPU, PyTorch elsewhere) and multiplies.
Gradients flow through the dequantized weight to the input, so the LoRA matrices of earlier layers
train; the 4-bit weight itself never gets a gradient or optimizer state.

``Linear4bit`` is the quantized stand-in for ``nn.Linear`` (like ``bitsandbytes.nn.Linear4bit``);
the adapter is ``peftlab.methods.lora.LoraLayer`` wrapped around it, so everything LoRA has (scaling,
dropout, rsLoRA, ``lora_layers``, saving in peft's format) works unchanged. With no gradients
needed (inference), ``QLoraLayer`` runs the fused kernel ``peftlab.kernels.qlora_linear`` on CUDA.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..quant import DYNAMIC_CODE, DoubleQuantState, Quantized4bit, dequantize_4bit, quantize_4bit, stored_bytes
from . import register
from ..memory.estimate import Sizing
from .lora import LoraLayer, find_lora_targets, low_rank_counts, low_rank_setting
from .targets import Conv1D, freeze, replace_module


@dataclass
class QLoraConfig:
    r: int = 8  # rank of the update B @ A
    alpha: float = 16  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the input of A, training only
    # name suffixes or one regex for the whole name; None: every linear layer but the output head (as LoRA)
    target_modules: list[str] | str | None = None
    quant_type: str = "nf4"  # 4-bit data type of the frozen base: "nf4", "fp4" or "int4"
    blocksize: int = 64  # weights per absmax scale
    double_quant: bool = True  # quantize the absmax values to 8 bits in blocks of 256 (4.127 instead of 4.5 bits)
    compute_dtype: str = "float32"  # dtype the weight is dequantized to for the matmul: float32, bfloat16, float16


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name).replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"compute_dtype must be a float dtype name such as 'float32' or 'bfloat16', got {name!r}")
    return dtype


class DequantLinear(torch.autograd.Function):
    """``y = x W^T + bias`` with W dequantized from 4 bits in forward *and again* in backward.

    ``F.linear(x, dequantize(q))`` would make autograd keep the dequantized fp32 weight until backward
    (4 bytes per weight: the very memory QLoRA saves). W is frozen, so backward needs only
    ``grad_x = grad_y W``: we keep the 4-bit state instead and dequantize a second time, as
    bitsandbytes' ``MatMul4Bit`` does. Nor is x saved: it would only serve W's gradient.
    """

    @staticmethod
    def forward(ctx, x, q: Quantized4bit, bias, compute_dtype):
        ctx.q, ctx.compute_dtype = q, compute_dtype
        ctx.bias_needs_grad = bias is not None and bias.requires_grad
        return F.linear(x, kernels.dequantize_nf4(q, dtype=compute_dtype), bias)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ kernels.dequantize_nf4(ctx.q, dtype=grad_out.dtype)  # (..., d_out) @ (d_out, d_in)
        if ctx.bias_needs_grad:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, None, grad_bias, None


class Linear4bit(nn.Linear):
    """A frozen linear layer whose weight is stored in 4 bits (``peftlab.quant.Quantized4bit``).

    The quantized state lives in buffers (``weight_packed``, ``weight_absmax`` and, with double
    quantization, ``weight_absmax2`` / ``weight_offset``): they move with ``.to(device)`` and are saved
    in the ``state_dict``, and they are not parameters, so no optimizer ever sees them. ``weight`` is a
    read-only property that dequantizes (for code that asks for the weight's shape, dtype or values).
    It subclasses ``nn.Linear`` so that layer-finding code (``find_targets``, ``LoraLayer``) accepts it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, quant_type: str = "nf4",
                 blocksize: int = 64, double_quant: bool = True, compute_dtype: str | torch.dtype = "float32",
                 device=None):
        nn.Module.__init__(self)  # not nn.Linear.__init__: there is no fp32 weight parameter to allocate
        self.in_features, self.out_features = in_features, out_features
        self.quant_type, self.blocksize, self.double_quant = quant_type, blocksize, double_quant
        self.compute_dtype = _dtype(compute_dtype)
        self.weight_dtype = torch.float32  # dtype of the weight that was quantized
        n = in_features * out_features
        n_blocks = -(-n // blocksize)
        self.register_buffer("weight_packed", torch.zeros((n + 1) // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_absmax", torch.zeros(n_blocks, dtype=torch.uint8 if double_quant else torch.float32,
                                                          device=device))
        if double_quant:
            self.register_buffer("weight_absmax2", torch.zeros(-(-n_blocks // 256), device=device))
            self.register_buffer("weight_offset", torch.zeros((), device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    @property
    def quantized_numel(self) -> int:
        """How many weights the 4-bit buffers stand for (``count_parameters`` counts them as frozen)."""
        return self.in_features * self.out_features

    @classmethod
    def from_linear(cls, linear: nn.Module, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = True,
                    compute_dtype: str | torch.dtype = "float32") -> Linear4bit:
        """Quantize an ``nn.Linear`` (or GPT-2 ``Conv1D``, whose weight is stored transposed)."""
        weight = linear.weight.detach()
        if Conv1D and isinstance(linear, Conv1D):
            weight = weight.T  # Conv1D keeps (d_in, d_out); a Linear4bit is always (d_out, d_in)
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, linear.bias is not None, quant_type, blocksize, double_quant,
                    compute_dtype, device=weight.device)
        layer.set_quantized(quantize_4bit(weight.contiguous(), quant_type, blocksize, double_quant))
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def set_quantized(self, q: Quantized4bit) -> None:
        """Load a ``Quantized4bit`` (ours, or one built from bitsandbytes' state by ``from_bnb``)."""
        if tuple(q.shape) != (self.out_features, self.in_features) or q.double_quant != self.double_quant:
            raise ValueError(f"quantized weight of shape {tuple(q.shape)} (double_quant={q.double_quant}) does not fit "
                             f"this layer ({self.out_features}, {self.in_features}), double_quant={self.double_quant}")
        self.quant_type, self.blocksize, self.weight_dtype = q.quant_type, q.blocksize, q.dtype
        self.weight_packed = q.packed.reshape(-1).clone()
        self.weight_absmax = q.absmax.clone()
        if q.double_quant:
            if q.state2.blocksize != 256:
                raise ValueError("Linear4bit stores double quantization with blocks of 256 absmax values")
            self.weight_absmax2 = q.state2.absmax.clone()
            self.weight_offset = q.state2.offset.reshape(()).clone()

    @property
    def quantized(self) -> Quantized4bit:
        """The stored weight as a ``Quantized4bit`` (views of the buffers, no copy)."""
        state2 = None
        if self.double_quant:
            state2 = DoubleQuantState(self.weight_absmax2, self.weight_offset, 256,
                                      DYNAMIC_CODE.to(self.weight_absmax2.device))
        return Quantized4bit(self.weight_packed, self.weight_absmax, (self.out_features, self.in_features),
                             self.weight_dtype, self.blocksize, self.quant_type, self.double_quant, state2)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in the compute dtype (a fresh tensor: writing to it changes nothing)."""
        return kernels.dequantize_nf4(self.quantized, dtype=self.compute_dtype)

    def stored_bytes(self) -> int:
        """Bytes of the 4-bit weight as stored (packed codes + scales), bias not included."""
        return stored_bytes(self.quantized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return DequantLinear.apply(x.to(self.compute_dtype), self.quantized, bias, self.compute_dtype).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"quant_type={self.quant_type}, blocksize={self.blocksize}, double_quant={self.double_quant}, "
                f"compute_dtype={self.compute_dtype}")


def from_bnb(packed: torch.Tensor, quant_state) -> Quantized4bit:
    """A ``Quantized4bit`` holding exactly bitsandbytes' quantized weight (``Params4bit.data`` and its
    ``QuantState``), e.g. to load the very same 4-bit numbers into a ``Linear4bit``."""
    state2 = None
    if getattr(quant_state, "nested", False):
        s2 = quant_state.state2
        state2 = DoubleQuantState(s2.absmax, quant_state.offset, s2.blocksize, s2.code)
    return Quantized4bit(packed.reshape(-1).view(torch.uint8), quant_state.absmax, tuple(quant_state.shape),
                         quant_state.dtype, quant_state.blocksize, quant_state.quant_type, state2 is not None, state2)


class QLoraLayer(LoraLayer):
    """``LoraLayer`` around a ``Linear4bit``; merging re-quantizes (lossy), and inference without
    gradients runs the fused kernel where one is available."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        fused = (not self.merged and not torch.is_grad_enabled() and x.is_cuda and kernels.HAS_TRITON
                 and isinstance(self.lora_dropout, nn.Identity))
        if not fused:
            return super().forward(x)
        bias = None if base.bias is None else base.bias.to(base.compute_dtype)
        out = kernels.qlora_linear(x.to(base.compute_dtype), base.quantized, bias,
                                   self.lora_A.weight, self.lora_B.weight, self.scaling)
        return out.to(x.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the 4-bit weight: dequantize, add, quantize again. Unlike LoRA's merge this
        is not exact (the sum is rounded to 4 bits), so ``unmerge`` does not restore the original."""
        if not self.merged:
            warnings.warn("merging LoRA into a 4-bit weight re-quantizes it: the result is rounded", stacklevel=2)
            self._requantize(dequantize_4bit(self.base_layer.quantized, torch.float32) + self.delta_weight().float())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._requantize(dequantize_4bit(self.base_layer.quantized, torch.float32) - self.delta_weight().float())
            self.merged = False

    def _requantize(self, weight: torch.Tensor) -> None:
        base = self.base_layer
        base.set_quantized(quantize_4bit(weight, base.quant_type, base.blocksize, base.double_quant))


def qlora_layers(model: nn.Module) -> dict[str, QLoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QLoraLayer)}


@register("qlora", QLoraConfig, family="reparameterization", lr=3e-3, grid_centre=3e-3, identity_at_init=False, removable=False,
          description="QLoRA: frozen NF4 4-bit base (double-quantized scales) + a LoRA update",
          sizing=Sizing("QLoRA: LoRA as above on a base whose layer matrices are NF4 (4.127 bits); "
                        "embeddings, norms, head 16-bit",
                        lambda shape, total, setting: low_rank_counts(shape, total, setting, quantize_base=True),
                        {"rank": 16, "targets": "attention"}, low_rank_setting))
def apply_qlora(model: nn.Module, config: QLoraConfig, context=None) -> nn.Module:
    """Freeze ``model``, quantize each target layer to 4 bits and wrap it in a LoRA adapter (in place)."""
    freeze(model)
    for name, layer in find_lora_targets(model, config.target_modules):
        base = Linear4bit.from_linear(layer, config.quant_type, config.blocksize, config.double_quant,
                                      config.compute_dtype)
        replace_module(model, name, QLoraLayer(base, config.r, config.alpha, config.dropout))
    for layer in qlora_layers(model).values():
        layer.lora_A.weight.requires_grad_(True)
        layer.lora_B.weight.requires_grad_(True)
    return model


__all__ = ["Linear4bit", "QLoraConfig", "QLoraLayer", "apply_qlora", "from_bnb", "qlora_layers"]
