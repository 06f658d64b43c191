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

import os

import torch
import torch.nn.functional as F

from ..quant import Quantized4bit, dequantize_4bit

try:  # the package works without triton: every entry point falls back to the reference
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = tl = None
    HAS_TRITON = False

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


def _scale_args(q: Quantized4bit):
    """The scale tensors a kernel reads: (absmax, absmax2, code2, offset) with placeholders when the
    weight is not double-quantized (the kernel never reads them then)."""
    if q.double_quant:
        s = q.state2
        return q.absmax, s.absmax, s.code.to(q.absmax.device), float(s.offset)
    return q.absmax, q.absmax, q.absmax, 0.0


# --------------------------------------------------------------------------------------------------
# The Triton kernels
# --------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _block_scale(flat, mask, absmax_ptr, absmax2_ptr, code2_ptr, offset,
                     BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, DOUBLE_QUANT: tl.constexpr):
        """The fp32 absmax of the block that holds flat index ``flat`` (decoded from 8 bits if needed)."""
        block = flat // BLOCKSIZE
        if DOUBLE_QUANT:
            qabs = tl.load(absmax_ptr + block, mask=mask, other=0).to(tl.int32)
            scale = tl.load(code2_ptr + qabs, mask=mask, other=0.0) * \
                tl.load(absmax2_ptr + block // BLOCKSIZE2, mask=mask, other=0.0) + offset
        else:
            scale = tl.load(absmax_ptr + block, mask=mask, other=0.0)
        return scale

    @triton.jit
    def _dequantize_kernel(packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset, code_ptr, out_ptr, n,
                           BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
                           BLOCK: tl.constexpr):
        # one program writes BLOCK consecutive elements of the flattened weight
        pid = tl.program_id(0)
        flat = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: big tensors overflow int32 offsets
        mask = flat < n
        byte = tl.load(packed_ptr + flat // 2, mask=mask, other=0)
        nibble = tl.where(flat % 2 == 0, byte >> 4, byte & 0xF).to(tl.int32)  # high nibble = even element
        value = tl.load(code_ptr + nibble, mask=mask, other=0.0)  # the 16-entry table stays in cache
        scale = _block_scale(flat, mask, absmax_ptr, absmax2_ptr, code2_ptr, offset,
                             BLOCKSIZE, BLOCKSIZE2, DOUBLE_QUANT)
        tl.store(out_ptr + flat, (value * scale).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _qlora_matmul_kernel(x_ptr, packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset, code_ptr,
                             bias_ptr, a_ptr, b_ptr, out_ptr, scaling, M, N, K, R,
                             stride_xm, stride_xk, stride_om, stride_on,
                             BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
                             HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, R_PAD: tl.constexpr,
                             PRECISION: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # one program computes the (BLOCK_M, BLOCK_N) tile of y = x W^T + bias + scaling (x A^T) B^T
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows of x and y
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output features = rows of W
        ranks = tl.arange(0, R_PAD)  # LoRA rank, padded to a tl.dot-friendly size
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        xa = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)  # x A^T, accumulated in the same K loop
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            x_mask = (rows[:, None] < M) & (ks[None, :] < K)
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk, mask=x_mask, other=0.0)
            # dequantize the (BLOCK_N, BLOCK_K) tile of W in registers: it never goes back to memory
            w_mask = (cols[:, None] < N) & (ks[None, :] < K)
            flat = cols[:, None].to(tl.int64) * K + ks[None, :]  # (BLOCK_N, BLOCK_K) flat indices into W
            byte = tl.load(packed_ptr + flat // 2, mask=w_mask, other=0)
            nibble = tl.where(flat % 2 == 0, byte >> 4, byte & 0xF).to(tl.int32)
            scale = _block_scale(flat, w_mask, absmax_ptr, absmax2_ptr, code2_ptr, offset,
                                 BLOCKSIZE, BLOCKSIZE2, DOUBLE_QUANT)
            w = tl.where(w_mask, tl.load(code_ptr + nibble, mask=w_mask, other=0.0) * scale, 0.0)
            acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision=PRECISION)  # (BM, BK) @ (BK, BN)
            if HAS_LORA:
                a_mask = (ranks[:, None] < R) & (ks[None, :] < K)
                a = tl.load(a_ptr + ranks[:, None] * K + ks[None, :], mask=a_mask, other=0.0)  # (R_PAD, BK)
                xa += tl.dot(x, tl.trans(a.to(x.dtype)), input_precision=PRECISION)  # (BM, R_PAD)
        if HAS_LORA:  # the low-rank update, added before the tile is written: y never makes a round trip
            b_mask = (ranks[:, None] < R) & (cols[None, :] < N)
            b_t = tl.load(b_ptr + cols[None, :] * R + ranks[:, None], mask=b_mask, other=0.0)  # B^T tile (R_PAD, BN)
            acc += scaling * tl.dot(xa, b_t.to(tl.float32), input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        out_mask = (rows[:, None] < M) & (cols[None, :] < N)
        tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on,
                 acc.to(out_ptr.dtype.element_ty), mask=out_mask)


# --------------------------------------------------------------------------------------------------
# Dequantization
# --------------------------------------------------------------------------------------------------


def dequantize_nf4_torch(q: Quantized4bit, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The reference: ``peftlab.quant.dequantize_4bit`` (unpack, look up, scale), in PyTorch ops."""
    return dequantize_4bit(q, dtype)


def dequantize_nf4_triton(q: Quantized4bit, dtype: torch.dtype | None = None, block: int = 1024) -> torch.Tensor:
    """One Triton pass over the weight: each program unpacks, looks up and scales ``block`` elements."""
    out = torch.empty(q.shape, dtype=dtype or q.dtype, device=q.packed.device)
    n = out.numel()
    absmax, absmax2, code2, offset = _scale_args(q)
    blocksize2 = q.state2.blocksize if q.double_quant else 1
    grid = (triton.cdiv(n, block),)
    _dequantize_kernel[grid](q.packed, absmax, absmax2, code2, offset, q.code.to(q.packed.device), out, n,
                             BLOCKSIZE=q.blocksize, BLOCKSIZE2=blocksize2, DOUBLE_QUANT=q.double_quant, BLOCK=block)
    return out


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
    """One fused kernel: dequantize-in-the-tile matmul + bias + LoRA. Forward only (no autograd)."""
    n_out, n_in = q.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n_in)  # (M, K)
    m = x2.shape[0]
    out = torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    absmax, absmax2, code2, offset = _scale_args(q)
    has_lora = lora_A is not None and lora_B is not None
    rank = lora_A.shape[0] if has_lora else 1
    r_pad = max(16, triton.next_power_of_2(rank))  # tl.dot wants every dimension >= 16
    a = lora_A.contiguous() if has_lora else x2  # placeholders are never read
    b = lora_B.contiguous() if has_lora else x2
    # fp32 inputs: exact IEEE products (the GPU would otherwise use TF32); 16-bit inputs: tensor cores
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    grid = (triton.cdiv(m, block_m), triton.cdiv(n_out, block_n))
    _qlora_matmul_kernel[grid](
        x2, q.packed, absmax, absmax2, code2, offset, q.code.to(x.device),
        bias if bias is not None else x2, a, b, out, float(scaling), m, n_out, n_in, rank,
        x2.stride(0), x2.stride(1), out.stride(0), out.stride(1),
        BLOCKSIZE=q.blocksize, BLOCKSIZE2=q.state2.blocksize if q.double_quant else 1, DOUBLE_QUANT=q.double_quant,
        HAS_BIAS=bias is not None, HAS_LORA=has_lora, R_PAD=r_pad, PRECISION=precision,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return out.reshape(*lead, n_out)


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
