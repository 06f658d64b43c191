"""NF4 kernels: dequantization, and the fused QLoRA forward, in Triton beside a plain PyTorch reference.

Why a kernel at all? Dequantizing a 4-bit weight is pure memory traffic: read half a byte and a
share of one scale per weight, write 2 or 4 bytes. PyTorch's reference (``peftlab.quant.dequantize_4bit``)
does it in several passes (unpack, look up, index the scales, multiply), each reading and writing the
whole tensor; one Triton program does all of it while the bytes sit in registers, so it can run at
the speed of memory. The fused QLoRA forward goes one step further and never writes the dequantized
weight at all: each tile of the weight is dequantized inside the matrix multiplication that uses it.

    dequantize_nf4(q)                          W = code[q] * absmax            (one pass)
    qlora_linear(x, q, bias, A, B, scaling)    y = x W^T + bias + scaling * (x A^T) B^T   (one kernel)

Every entry point takes ``backend``: ``"torch"`` (the reference), ``"triton"`` (the kernel; on a CPU
only under the Triton interpreter, ``TRITON_INTERPRET=1`` set before ``triton`` is imported), or
``"auto"`` (Triton for CUDA tensors when ``triton`` imports, else the reference). ``last_backend()``
says which path ran: "triton", "triton-interpreter" or "torch". The interpreter runs the kernel with
NumPy, slowly, one program at a time, which is how the tests check the index arithmetic on a CPU; it
mishandles bf16 arithmetic, so test in fp32.

The kernels read the ``Quantized4bit`` layout of ``peftlab.quant`` (= bitsandbytes'): element i of the
flattened weight is nibble ``i % 2`` (high nibble first) of byte ``i // 2``, scaled by absmax block
``i // blocksize``; with double quantization the scale itself is ``code2[qabsmax[b]] * absmax2[b // 256] + offset``.
"""
from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F

from ..quant import Quantized4bit, dequantize_4bit

# The package works without triton (every entry point falls back to the reference), and imports it
# only when a Triton path runs: ``import peftlab`` stays fast and never initialises triton.
HAS_TRITON = importlib.util.find_spec("triton") is not None

_LAST_BACKEND: str | None = None


def last_backend() -> str | None:
    """Which path the last call of ``dequantize_nf4`` / ``qlora_linear`` took: "triton",
    "triton-interpreter" or "torch"."""
    return _LAST_BACKEND


def interpreting() -> bool:
    """True when Triton runs kernels in its NumPy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn "auto" / "torch" / "triton" into the path that will run, or explain why it cannot."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "torch" or (backend == "auto" and not (HAS_TRITON and device.type == "cuda")):
        return "torch"
    if not HAS_TRITON:
        raise RuntimeError("backend='triton' needs the triton package (pip install triton); "
                           "use backend='torch' or 'auto' to run the PyTorch reference")
    if device.type == "cuda":
        return "triton"
    if interpreting():
        return "triton-interpreter"
    raise RuntimeError(f"Triton kernels run on CUDA tensors, these are on {device}. To run them on a CPU, "
                       "set TRITON_INTERPRET=1 in the environment before triton is imported (slow; tests only), "
                       "or use backend='torch'")


def _record(name: str) -> None:
    global _LAST_BACKEND
    _LAST_BACKEND = name


# --------------------------------------------------------------------------------------------------
# Dequantization
# --------------------------------------------------------------------------------------------------


def dequantize_nf4_torch(q: Quantized4bit, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The reference: ``peftlab.quant.dequantize_4bit`` (unpack, look up, scale), in PyTorch ops."""
    return dequantize_4bit(q, dtype)


def dequantize_nf4_triton(q: Quantized4bit, dtype: torch.dtype | None = None, block: int = 1024) -> torch.Tensor:
    """One Triton pass over the weight (``peftlab.kernels.nf4_triton``, imported on first use)."""
    from .nf4_triton import dequantize_nf4_triton as run

    return run(q, dtype, block)


def dequantize_nf4(q: Quantized4bit, backend: str = "auto", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dequantize a 4-bit weight (any of nf4 / fp4 / int4: the code table is an input) to ``dtype``
    (default: the dtype it was quantized from). ``backend``: "auto", "torch" or "triton"."""
    path = resolve_backend(backend, q.packed.device)
    out = dequantize_nf4_torch(q, dtype) if path == "torch" else dequantize_nf4_triton(q, dtype)
    _record(path)
    return out


# --------------------------------------------------------------------------------------------------
# The QLoRA forward
# --------------------------------------------------------------------------------------------------


def qlora_linear_torch(x, q: Quantized4bit, bias=None, lora_A=None, lora_B=None, scaling: float = 1.0):
    """The reference: dequantize W to x's dtype, ``F.linear``, then the LoRA update in the adapter's dtype
    (as ``peftlab.methods.lora.LoraLayer`` and peft compute it). Differentiable in x, A and B."""
    out = F.linear(x, dequantize_4bit(q, x.dtype), None if bias is None else bias.to(x.dtype))
    if lora_A is not None and lora_B is not None:
        lora_x = x.to(lora_A.dtype)
        out = out + (F.linear(F.linear(lora_x, lora_A), lora_B) * scaling).to(out.dtype)  # (..., r) -> (..., d_out)
    return out


def qlora_linear_triton(x, q: Quantized4bit, bias=None, lora_A=None, lora_B=None, scaling: float = 1.0,
                        block_m: int = 32, block_n: int = 64, block_k: int = 64):
    """One fused Triton kernel, forward only (``peftlab.kernels.nf4_triton``, imported on first use)."""
    from .nf4_triton import qlora_linear_triton as run

    return run(x, q, bias, lora_A, lora_B, scaling, block_m, block_n, block_k)


def qlora_linear(x, q: Quantized4bit, bias=None, lora_A=None, lora_B=None, scaling: float = 1.0,
                 backend: str = "auto"):
    """``x W^T + bias + scaling * (x A^T) B^T`` with W the 4-bit weight ``q`` (shape (d_out, d_in)),
    ``lora_A`` (r, d_in) and ``lora_B`` (d_out, r) plain tensors (or None: no adapter).

    The Triton path is forward-only; when gradients are needed (training) "auto" uses the reference,
    which autograd differentiates.
    """
    if len(q.shape) != 2:
        raise ValueError(f"qlora_linear needs a 2-D (d_out, d_in) weight, got shape {q.shape}")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, bias, lora_A, lora_B))
    if backend == "auto" and needs_grad:
        backend = "torch"
    path = resolve_backend(backend, x.device)
    if path == "torch":
        out = qlora_linear_torch(x, q, bias, lora_A, lora_B, scaling)
    else:
        if needs_grad:
            raise RuntimeError("the Triton QLoRA kernel is forward-only: call it under torch.no_grad() "
                               "or use backend='torch' (or 'auto') to train")
        out = qlora_linear_triton(x, q, bias, lora_A, lora_B, scaling)
    _record(path)
    return out
