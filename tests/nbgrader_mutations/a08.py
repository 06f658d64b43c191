"""Planted mistakes for assignment a08 (4-bit quantization from scratch), read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker; in a cell with two functions, the first one's). Each is a mistake a student would make,
and each fails every test cell of its part.
"""

MUTATIONS = {
    # Part A: one absmax for the whole tensor (per-tensor scaling) instead of one per block
    "blockwise": """
        flat = w.detach().reshape(-1).float()
        absmax = flat.abs().max().reshape(1)
        scaled = flat / absmax.clamp(min=1e-38)
        codes = (scaled.unsqueeze(-1) - code).abs().argmin(dim=-1)
        return codes.to(torch.uint8), absmax
    """,
    # Part B: the first element of each pair in the low nibble, the second in the high one
    "packing": """
        codes = codes.reshape(-1).to(torch.uint8)
        if codes.numel() % 2:
            codes = torch.cat([codes, torch.tensor([pad], dtype=torch.uint8)])
        return codes[0::2] | (codes[1::2] << 4)
    """,
    # Part C: double quantization counted as 1 byte per scale, forgetting the second-level scales and the mean
    "layout_bytes": """
        n_blocks = math.ceil(n / blocksize)
        total = math.ceil(n / 2)
        total += n_blocks if double_quant else 4 * n_blocks
        return total
    """,
}
