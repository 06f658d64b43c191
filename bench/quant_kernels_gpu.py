"""NF4 kernels on a GPU: Triton vs the PyTorch reference vs bitsandbytes' CUDA kernels, in GB/s.

Dequantization moves bytes and does almost no arithmetic, so the yardstick is the device's own copy
bandwidth (measured here with ``tensor.copy_``): a kernel that reaches most of it cannot get much
faster. For each weight size the script times

- dequantization: ``peftlab.quant.dequantize_4bit`` (the reference, several PyTorch passes), the Triton
  kernel (``peftlab.kernels.dequantize_nf4``, one pass), and ``bitsandbytes.functional.dequantize_4bit``;
  GB/s = (packed codes + scales read + weight written) / time;
- the QLoRA forward y = x W^T + bias + s (x A^T) B^T: the reference (dequantize, then ``F.linear`` and
  the LoRA matmuls), the fused Triton kernel, and bitsandbytes' ``matmul_4bit`` plus the same LoRA
  matmuls; TFLOP/s of the base matmul;

checks every output against the reference (max abs difference, relative to the output's scale),
prints a table with ratios, and writes the numbers to a JSON file with the command in its ``meta``.

Run on a CUDA machine (about a minute):

    python bench/quant_kernels_gpu.py                       # writes results/quant_kernels_gpu.json
    TRITON_INTERPRET=1 python bench/quant_kernels_gpu.py --dry-run   # the same code on a CPU, tiny sizes

Weights are random normal (NF4, blocksize 64, double quantization, bf16 compute); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

GB = 1e9


def timed(fn, device, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds per call (CUDA events on a GPU, wall clock on a CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(device, nbytes: int, repeats: int) -> float:
    """Device copy bandwidth in GB/s: reading and writing ``nbytes`` each."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * 4 / seconds / GB


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-30)).item()


def dequant_bytes(q, out_dtype) -> int:
    """Bytes a one-pass dequantization must move: read codes + scales, write the weight."""
    from peftlab.quant import stored_bytes

    return stored_bytes(q) + q.numel * torch.empty((), dtype=out_dtype).element_size()


def bench_dequant(d_out: int, d_in: int, device, dtype, repeats: int, has_bnb: bool, use_triton: bool) -> dict:
    from peftlab import kernels
    from peftlab.methods.qlora import from_bnb
    from peftlab.quant import dequantize_4bit, quantize_4bit

    torch.manual_seed(0)
    w = torch.randn(d_out, d_in, device=device)
    q = quantize_4bit(w, "nf4", 64, double_quant=True)
    ref = dequantize_4bit(q, dtype)
    row = {"shape": [d_out, d_in], "params": d_out * d_in, "bytes_moved": dequant_bytes(q, dtype)}
    row["torch_s"] = timed(lambda: dequantize_4bit(q, dtype), device, repeats)
    if use_triton:
        out = kernels.dequantize_nf4(q, backend="triton", dtype=dtype)
        row["triton_path"] = kernels.last_backend()
        row["triton_max_rel_err"] = rel_err(out, ref)
        row["triton_s"] = timed(lambda: kernels.dequantize_nf4(q, backend="triton", dtype=dtype), device, repeats)
    if has_bnb:
        import bitsandbytes.functional as bnb_F

        packed, state = bnb_F.quantize_4bit(w.to(dtype), blocksize=64, quant_type="nf4", compress_statistics=True)
        bnb_out = bnb_F.dequantize_4bit(packed, state)
        row["bnb_s"] = timed(lambda: bnb_F.dequantize_4bit(packed, state), device, repeats)
        row["bnb_vs_ours_same_state_max_rel_err"] = rel_err(dequantize_4bit(from_bnb(packed, state), dtype), bnb_out)
        row["bnb_codes_equal_ours"] = bool(torch.equal(packed.reshape(-1), quantize_4bit(w.to(dtype), "nf4", 64).packed))
    for name in ("torch", "triton", "bnb"):
        if f"{name}_s" in row:
            row[f"{name}_GBps"] = row["bytes_moved"] / row[f"{name}_s"] / GB
    return row


def bench_fused(m: int, d_out: int, d_in: int, rank: int, device, dtype, repeats: int, has_bnb: bool,
                use_triton: bool) -> dict:
    from peftlab import kernels
    from peftlab.methods.qlora import from_bnb
    from peftlab.quant import quantize_4bit

    torch.manual_seed(0)
    w = torch.randn(d_out, d_in, device=device) / d_in ** 0.5
    q = quantize_4bit(w, "nf4", 64, double_quant=True)
    x = torch.randn(m, d_in, device=device, dtype=dtype)
    bias = torch.randn(d_out, device=device, dtype=dtype)
    lora_A = torch.randn(rank, d_in, device=device) / d_in ** 0.5
    lora_B = torch.randn(d_out, rank, device=device) * 0.01
    scaling = 2.0
    row = {"m": m, "shape": [d_out, d_in], "rank": rank, "flops": 2 * m * d_out * d_in}
    with torch.no_grad():
        ref = kernels.qlora_linear(x, q, bias, lora_A, lora_B, scaling, backend="torch")
        row["torch_s"] = timed(lambda: kernels.qlora_linear(x, q, bias, lora_A, lora_B, scaling, backend="torch"),
                               device, repeats)
        if use_triton:
            out = kernels.qlora_linear(x, q, bias, lora_A, lora_B, scaling, backend="triton")
            row["triton_path"] = kernels.last_backend()
            row["triton_max_rel_err"] = rel_err(out, ref)
            row["triton_s"] = timed(lambda: kernels.qlora_linear(x, q, bias, lora_A, lora_B, scaling,
                                                                 backend="triton"), device, repeats)
        if has_bnb:
            import bitsandbytes as bnb
            import bitsandbytes.functional as bnb_F

            packed, state = bnb_F.quantize_4bit(w.to(dtype), blocksize=64, quant_type="nf4", compress_statistics=True)
            state.dtype = dtype

            def bnb_forward():
                y = bnb.matmul_4bit(x, packed.t(), quant_state=state, bias=bias)
                return y + (F.linear(F.linear(x.float(), lora_A), lora_B) * scaling).to(y.dtype)

            bnb_ref = kernels.qlora_linear(x, from_bnb(packed, state), bias, lora_A, lora_B, scaling, backend="torch")
            row["bnb_max_rel_err_vs_torch_same_state"] = rel_err(bnb_forward(), bnb_ref)
            row["bnb_s"] = timed(bnb_forward, device, repeats)
    for name in ("torch", "triton", "bnb"):
        if f"{name}_s" in row:
            row[f"{name}_TFLOPs"] = row["flops"] / row[f"{name}_s"] / 1e12
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/quant_kernels_gpu.json")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dry-run", action="store_true",
                        help="run on the CPU at tiny sizes (Triton only under TRITON_INTERPRET=1): checks the script")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available() and not args.dry_run:
        print("bench/quant_kernels_gpu.py needs a CUDA GPU: none is visible to PyTorch, so nothing was timed.\n"
              "On a CPU, `TRITON_INTERPRET=1 python bench/quant_kernels_gpu.py --dry-run` runs the same code at tiny "
              "sizes (correctness only), and `pytest tests/test_kernels.py` checks the kernels.", file=sys.stderr)
        return 2

    from peftlab import kernels

    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    use_triton = kernels.HAS_TRITON and (device.type == "cuda" or kernels.interpreting())
    try:
        import bitsandbytes  # noqa: F401

        has_bnb = True
    except ImportError:
        has_bnb = False
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        dequant_sizes = [(4096, 4096), (8192, 8192), (16384, 16384)]
        fused_sizes = [(16, 4096, 4096), (2048, 4096, 4096), (16, 8192, 8192), (2048, 8192, 8192)]
        copy_bytes, repeats = 1 << 30, args.repeats
    else:  # the interpreter is slow and mishandles bf16: fp32, tiny shapes
        dtype = torch.float32
        dequant_sizes, fused_sizes, copy_bytes, repeats = [(64, 96)], [(8, 40, 96)], 1 << 20, 2

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name}; compute dtype {dtype}; triton: {'yes' if use_triton else 'no'}; "
          f"bitsandbytes: {'yes' if has_bnb else 'no'}")
    copy_gbps = copy_bandwidth(device, copy_bytes, repeats)
    print(f"device copy bandwidth (read + write): {copy_gbps:,.0f} GB/s\n")

    dequant_rows = [bench_dequant(o, i, device, dtype, repeats, has_bnb, use_triton) for o, i in dequant_sizes]
    print(f"{'dequantize NF4 (+double quant)':<32}{'torch GB/s':>12}{'triton GB/s':>13}{'bnb GB/s':>10}"
          f"{'triton/copy':>13}{'triton/torch':>14}{'triton/bnb':>12}{'max rel err':>13}")
    for r in dequant_rows:
        t, b = r.get("triton_GBps"), r.get("bnb_GBps")
        print(f"{str(tuple(r['shape'])):<32}{r['torch_GBps']:>12,.0f}{(t or 0):>13,.0f}{(b or 0):>10,.0f}"
              f"{(t or 0) / copy_gbps:>13.2f}{(t or 0) / r['torch_GBps']:>14.2f}{(t / b if t and b else 0):>12.2f}"
              f"{r.get('triton_max_rel_err', 0):>13.1e}")

    fused_rows = [bench_fused(m, o, i, 16, device, dtype, repeats, has_bnb, use_triton) for m, o, i in fused_sizes]
    print(f"\n{'QLoRA forward (m x out x in, r=16)':<36}{'torch TF/s':>12}{'fused TF/s':>12}{'bnb TF/s':>10}"
          f"{'fused/torch':>13}{'fused/bnb':>11}{'max rel err':>13}")
    for r in fused_rows:
        t, b = r.get("triton_TFLOPs"), r.get("bnb_TFLOPs")
        label = f"{r['m']} x {r['shape'][0]} x {r['shape'][1]}"
        print(f"{label:<36}{r['torch_TFLOPs']:>12.2f}{(t or 0):>12.2f}{(b or 0):>10.2f}"
              f"{(t or 0) / r['torch_TFLOPs']:>13.2f}{(t / b if t and b else 0):>11.2f}"
              f"{r.get('triton_max_rel_err', 0):>13.1e}")

    tolerance = 1e-2 if dtype != torch.float32 else 1e-5
    problems = [r for r in dequant_rows + fused_rows if r.get("triton_max_rel_err", 0) > tolerance]
    meta = {"command": "python bench/quant_kernels_gpu.py" + (" --dry-run" if args.dry_run else ""),
            "device": name, "dtype": str(dtype), "torch": torch.__version__, "copy_GBps": copy_gbps,
            "triton": getattr(sys.modules.get("triton"), "__version__", None), "repeats": repeats}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "dequantize": dequant_rows, "fused": fused_rows}, indent=2) + "\n")
    print(f"\nsaved {out}" + (f"; {len(problems)} output(s) disagree with the reference" if problems else
                             "; every output agrees with the reference"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
