"""The Triton kernels of ``peftlab.kernels.nf4``: imported only when a Triton path runs.

Same layout and arithmetic as the PyTorch references in ``nf4.py`` (see its docstring).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quant import Quantized4bit


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
