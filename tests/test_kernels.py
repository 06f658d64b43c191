"""peftlab.kernels: Triton kernels against their PyTorch references, on the CPU under the interpreter.

Run: ``pytest tests/test_kernels.py`` (CPU only, ~15 s). ``TRITON_INTERPRET=1`` must be set before
triton is imported, so the kernel checks run in a subprocess with it set. Shapes are chosen so that an
off-by-one in the kernels' index arithmetic changes the result: odd element counts (a half-used last
byte), rows that are not a multiple of the blocksize (absmax blocks straddle rows), and sizes that
are not multiples of the tile sizes (masked edges). The last check runs a deliberately wrong scale
index and asserts the comparison catches it. GPU timing lives in ``bench/quant_kernels_gpu.py``.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from peftlab import kernels, quant as Q

INTERPRETER_SCRIPT = textwrap.dedent("""
    import torch
    from peftlab import kernels, quant as Q
    from peftlab.kernels import nf4 as K, nf4_triton as KT  # the kernels live in nf4_triton (imported lazily)
    assert kernels.interpreting()
    torch.manual_seed(0)
    cases = [((37, 70), "nf4", True), ((33, 129), "nf4", False), ((64, 64), "fp4", True), ((5, 3), "int4", False)]
    for shape, quant_type, double_quant in cases:
        w = torch.randn(shape)
        q = Q.quantize_4bit(w, quant_type, 64, double_quant)
        out = kernels.dequantize_nf4(q, backend="triton")
        assert kernels.last_backend() == "triton-interpreter"
        assert torch.equal(out, kernels.dequantize_nf4(q, backend="torch")), shape
        x = torch.randn(3, 5, shape[1])
        A, B, bias = torch.randn(4, shape[1]), torch.randn(shape[0], 4), torch.randn(shape[0])
        for args in [(bias, A, B, 2.0), (None, None, None, 1.0)]:
            fused = kernels.qlora_linear(x, q, *args, backend="triton")
            ref = kernels.qlora_linear(x, q, *args, backend="torch")
            assert fused.shape == ref.shape
            err = ((fused - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-5, (shape, err)  # fp32 sums in another order: ~1e-7 relative
    # a deliberately wrong index must be caught: read the scale of block i // 32 instead of i // 64
    q = Q.quantize_4bit(torch.randn(37, 70), "nf4", 64, True)
    out = torch.empty(q.shape)
    absmax, absmax2, code2, offset = KT._scale_args(q)
    KT._dequantize_kernel[(3,)](q.packed, absmax, absmax2, code2, offset, q.code, out, out.numel(),
                               BLOCKSIZE=32, BLOCKSIZE2=256, DOUBLE_QUANT=True, BLOCK=1024)
    assert not torch.allclose(out, kernels.dequantize_nf4(q, backend="torch"))
    print("KERNELS OK")
""")


def _run(script: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full_env, timeout=300)


def test_kernels_match_reference_under_interpreter():
    pytest.importorskip("triton")
    result = _run(INTERPRETER_SCRIPT, TRITON_INTERPRET="1")
    assert result.returncode == 0 and "KERNELS OK" in result.stdout, result.stdout + result.stderr[-3000:]


def test_package_works_without_triton():
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # importing triton now fails, as if it were not installed
        import torch
        from peftlab import kernels, quant as Q
        assert not kernels.HAS_TRITON
        q = Q.quantize_4bit(torch.randn(8, 64))
        out = kernels.dequantize_nf4(q)
        assert kernels.last_backend() == "torch" and torch.equal(out, Q.dequantize_4bit(q))
        try:
            kernels.dequantize_nf4(q, backend="triton")
        except RuntimeError as err:
            assert "pip install triton" in str(err)
        else:
            raise AssertionError("backend='triton' without triton must fail")
        print("NO TRITON OK")
    """)
    result = _run(script)
    assert result.returncode == 0 and "NO TRITON OK" in result.stdout, result.stdout + result.stderr[-3000:]


def test_auto_uses_reference_on_cpu():
    q = Q.quantize_4bit(torch.randn(16, 64), double_quant=True)
    x = torch.randn(2, 64, requires_grad=True)
    A = torch.randn(4, 64, requires_grad=True)
    B = torch.randn(16, 4, requires_grad=True)
    y = kernels.qlora_linear(x, q, None, A, B, 2.0)
    assert kernels.last_backend() == "torch"
    y.sum().backward()  # the reference is differentiable in x, A and B
    assert x.grad is not None and A.grad is not None and B.grad is not None
    assert torch.equal(kernels.dequantize_nf4(q), Q.dequantize_4bit(q)) and kernels.last_backend() == "torch"


def test_triton_on_cpu_without_interpreter_explains():
    if kernels.interpreting() or not kernels.HAS_TRITON:
        pytest.skip("needs triton imported without TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.dequantize_nf4(Q.quantize_4bit(torch.randn(4, 64)), backend="triton")
    with pytest.raises(ValueError, match="backend"):
        kernels.dequantize_nf4(Q.quantize_4bit(torch.randn(4, 64)), backend="cuda")
