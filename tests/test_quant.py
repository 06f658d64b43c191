"""peftlab.quant against bitsandbytes: NF4/FP4 codes, packed bytes, block scales, double quantization.

Run: ``pytest tests/test_quant.py`` (CPU only, a few seconds; one 4096 x 4096 check). Needs bitsandbytes.

Agreement with bitsandbytes 0.50 on the CPU, as measured here:
- 4-bit codes, packed bytes and fp32 absmax: identical on every shape tried (4096 x 4096, 127 x 65, 1000 x 3).
- Double quantization: offset, second-level absmax and the 8-bit absmax codes identical (we round
  through bitsandbytes' 65,536-point grid; the exactly-nearest rule would differ in ~0.2% of codes
  on 4096 x 4096, by one to four steps).
- Dequantization: identical to ``dequantize_4bit`` where bitsandbytes' C kernel is right (rows a
  multiple of the blocksize, or odd rows, which use its PyTorch path). Where a block straddles two rows
  of even length, bitsandbytes' CPU C kernel (AVX-512 build) disagrees with its own quantization and
  with its own PyTorch implementation; we match the latter (``test_bnb_cpu_dequant_kernel_straddling_rows``).
"""
import pytest
import torch

from peftlab import quant as Q

bnb_F = pytest.importorskip("bitsandbytes.functional")

ODD_SHAPES = [(127, 65), (1000, 3), (7,), (33, 3)]


def _bnb(w, quant_type="nf4", double_quant=False):
    packed, state = bnb_F.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    return packed.reshape(-1), state


@pytest.fixture(scope="module")
def big():
    """4096 x 4096 normal weights, quantized by both libraries with double quantization (the QLoRA layout)."""
    torch.manual_seed(0)
    w = torch.randn(4096, 4096)
    return w, Q.quantize_4bit(w, "nf4", 64, double_quant=True), _bnb(w, "nf4", double_quant=True)


def test_code_tables_equal_bitsandbytes():
    assert torch.equal(Q.NF4_CODE, bnb_F.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(Q.FP4_CODE, bnb_F.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(Q.DYNAMIC_CODE, bnb_F.create_dynamic_map())
    assert Q.INT4_CODE.numel() == 16 and torch.allclose(Q.INT4_CODE * 7, torch.arange(-8, 8).float())


def test_nf4_derivation_from_normal_quantiles():
    derived = Q.nf4_code_from_quantiles()
    assert (derived - Q.NF4_CODE).abs().max() < 1e-6  # measured: 0 (bit-identical)
    assert derived[7] == 0 and derived[0] == -1 and derived[-1] == 1
    # the point of NF4: equal probability mass between neighbouring levels of N(0, 1) (roughly)
    assert not torch.allclose(Q.nf4_code_from_quantiles(0.99), Q.NF4_CODE, atol=1e-3)


def test_big_codes_bytes_scales_equal_bitsandbytes(big):
    w, ours, (packed, state) = big
    assert torch.equal(ours.packed, packed)  # every one of the 8,388,608 bytes
    assert torch.equal(ours.state2.offset, state.offset)
    assert torch.equal(ours.state2.absmax, state.state2.absmax)


def test_big_double_quant_codes_equal_bitsandbytes(big):
    """8-bit absmax codes: identical to bitsandbytes', every one of the 262,144."""
    _, ours, (_, state) = big
    assert torch.equal(ours.absmax, state.absmax)


def test_nearest_rounding_differs_from_bitsandbytes_grid_by_little(big):
    """The exactly-nearest rule differs from bitsandbytes' grid rounding in a few codes, never farther."""
    w, ours, (_, state) = big
    raw = Q.quantize_4bit(w, "nf4", 64).absmax
    nearest, state2 = Q.double_quantize(raw, 256, rounding="nearest")
    differ = nearest != state.absmax
    assert 0 < int(differ.sum()) <= 0.005 * nearest.numel()  # measured: 480 of 262,144 (0.18%)
    assert (nearest.long() - state.absmax.long())[differ].abs().max() <= 4
    normed = (raw - state2.offset) / state2.absmax.repeat_interleave(256)[: raw.numel()]
    code = Q.DYNAMIC_CODE.clone()
    code[0] = -1.0  # the table the nearest rule searches: the block's most negative value is exactly -1
    assert torch.all((normed - code[nearest.long()]).abs() <= (normed - code[state.absmax.long()]).abs())


def test_big_dequantize_equals_bitsandbytes(big):
    w, ours, (packed, state) = big
    restored_bnb = bnb_F.dequantize_4bit(packed.view(-1, 1), state)
    # bitsandbytes' own state, decoded by us: bit-identical
    from peftlab.methods.qlora import from_bnb
    assert torch.equal(Q.dequantize_4bit(from_bnb(packed, state)), restored_bnb)
    # our own state: identical except the elements of blocks whose 8-bit scale code differs (one step)
    diff = (Q.dequantize_4bit(ours) - restored_bnb).abs()
    assert diff.max() < 0.05, diff.max()  # measured 0.0376: one 8-bit step of one absmax, times |code| <= 1


@pytest.mark.parametrize("shape", [(512, 64), (256, 128)] + ODD_SHAPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_small_shapes_equal_bitsandbytes(shape, quant_type, double_quant):
    torch.manual_seed(1)
    w = torch.randn(shape)
    ours = Q.quantize_4bit(w, quant_type, 64, double_quant)
    packed, state = _bnb(w, quant_type, double_quant)
    assert torch.equal(ours.packed, packed)
    assert torch.equal(ours.absmax, state.absmax)
    if double_quant:
        assert torch.equal(ours.state2.absmax, state.state2.absmax) and torch.equal(ours.state2.offset, state.offset)
    assert torch.equal(Q.dequantize_4bit(ours), bnb_F.dequantize_4bit(packed.view(-1, 1), state))


def test_bnb_cpu_dequant_kernel_straddling_rows():
    """Rows of even length that are not a multiple of 64: bitsandbytes' C kernel disagrees with itself."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    torch.manual_seed(2)
    w = torch.randn(48, 96)
    ours = Q.quantize_4bit(w, "nf4")
    packed, state = _bnb(w)
    assert torch.equal(ours.packed, packed) and torch.equal(ours.absmax, state.absmax)  # quantization agrees
    bnb_torch = _dequantize_4bit_compute(packed, state.absmax, bnb_F.get_4bit_type("nf4", device="cpu"), 64,
                                         (48, 96), torch.float32)
    assert torch.equal(Q.dequantize_4bit(ours), bnb_torch)  # bitsandbytes' PyTorch path: identical
    bnb_c = bnb_F.dequantize_4bit(packed.view(-1, 1), state)
    if not torch.equal(bnb_c, bnb_torch):  # the C kernel on this build: wrong scales for straddling blocks
        assert (Q.dequantize_4bit(ours) - w).norm() < (bnb_c - w).norm()


def test_pack_order_and_padding():
    codes = torch.tensor([1, 2, 3, 4, 5], dtype=torch.uint8)
    packed = Q.pack_4bit(codes)
    assert packed.tolist() == [0x12, 0x34, 0x57]  # high nibble first; odd count padded with 7 (NF4's zero)
    assert torch.equal(Q.unpack_4bit(packed, 5), codes)
    wrong_order = (codes[1::2] << 4) | codes[0:4:2]  # a low-nibble-first packing is not bitsandbytes'
    assert not torch.equal(wrong_order, packed[:2])


def test_blockwise_roundtrip_any_code():
    torch.manual_seed(3)
    w = torch.randn(10, 13)
    codes, absmax = Q.quantize_blockwise(w, Q.NF4_CODE, blocksize=64)
    assert codes.dtype == torch.uint8 and codes.numel() == 130 and absmax.numel() == 3
    restored = Q.dequantize_blockwise(codes, absmax, Q.NF4_CODE, w.shape, 64)
    brute = (w.reshape(-1, 1) / absmax.repeat_interleave(64)[:130, None] - Q.NF4_CODE).abs().argmin(-1)
    assert torch.equal(codes.long(), brute)  # nearest code (no ties on random data)
    assert torch.all((restored - w).abs() <= absmax.repeat_interleave(64)[:130].view(10, 13) * 0.17)


def test_double_quant_roundtrip_and_bits():
    torch.manual_seed(4)
    w = torch.randn(4096, 1024)
    single = Q.quantize_4bit(w, "nf4", 64)
    double = Q.quantize_4bit(w, "nf4", 64, double_quant=True)
    assert Q.bits_per_parameter(single) == 4.5
    assert abs(Q.bits_per_parameter(double) - (4 + 8 / 64 + 32 / (64 * 256))) < 1e-4
    assert torch.allclose(double.scales(), single.absmax, rtol=0.02, atol=1e-3)
    assert Q.stored_bytes(double) < Q.stored_bytes(single)


def test_bits_per_parameter_4096(big):
    assert round(Q.bits_per_parameter(big[1]), 3) == 4.127


def test_roundtrip_error_order():
    torch.manual_seed(5)
    w = torch.randn(1024, 1024)
    nf4, fp4, int4 = (Q.roundtrip_error(w, t) for t in ("nf4", "fp4", "int4"))
    # NF4 wins. Measured: nf4 0.092, int4 0.108, fp4 0.122: our symmetric int4 (15 evenly spaced levels,
    # scale absmax / 7) beats bitsandbytes' FP4 on normal weights, whose levels crowd near zero
    assert nf4 < int4 and nf4 < fp4, (nf4, fp4, int4)
    assert abs(nf4 - 0.092) < 0.005 and abs(fp4 - 0.122) < 0.005  # the figures bitsandbytes gives
    packed, state = _bnb(w)
    bnb_nf4 = ((bnb_F.dequantize_4bit(packed.view(-1, 1), state) - w).norm() / w.norm()).item()
    assert abs(bnb_nf4 - nf4) < 1e-6
