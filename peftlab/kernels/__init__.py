"""Kernels: Triton implementations beside the plain PyTorch references they are tested against.

``dequantize_nf4`` and ``qlora_linear`` take ``backend="auto" | "torch" | "triton"``; ``last_backend()``
reports which path ran. Without triton or without a GPU everything falls back to the reference.
See ``peftlab/kernels/nf4.py`` (the Triton kernels: ``nf4_triton.py``); the GPU benchmark is ``bench/quant_kernels_gpu.py``.
"""
from .nf4 import (HAS_TRITON, dequantize_nf4, dequantize_nf4_torch, interpreting, last_backend, qlora_linear,
                  qlora_linear_torch, resolve_backend)

__all__ = ["HAS_TRITON", "dequantize_nf4", "dequantize_nf4_torch", "interpreting", "last_backend", "qlora_linear",
           "qlora_linear_torch", "resolve_backend"]
