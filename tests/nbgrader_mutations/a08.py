"""Planted mistakes for assignment a08 (4-bit quantization from scratch), read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker; in a cell with two functions, the first one's). Each is a mistake a student would make,
and each fails every test cell of its part.

``MORE_MUTATIONS`` holds further planted mistakes of the kinds students make (name -> (answer grade_id,
body)); each is graded as its own student and must lose its part's points and only those.
``DELEGATIONS`` maps each answer cell to a body that calls ``peftlab`` instead of implementing the
function; the hidden tests switch ``peftlab`` off, so it must lose the part's points (``None``: the
package has no implementation to borrow).
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

MUTATIONS["minmax"] = """
    # Part D: Part A's zero-padding trick reused: a padded zero lowers the last block's minimum
    flat = w.detach().reshape(-1).float()
    n = flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, -n % blocksize)).view(-1, blocksize)
    low = blocks.min(dim=1).values
    step = (blocks.max(dim=1).values - low) / 15
    codes = torch.round((blocks - low[:, None]) / step.clamp(min=1e-38)[:, None]).clamp(0, 15)
    return codes.reshape(-1)[:n].to(torch.uint8), low, step
"""

MORE_MUTATIONS = {
    # Part A: no clamp before dividing: an all-zero block becomes NaN and gets code 0 (-1.0), not NF4's 0
    "blockwise_zero_block_nan": ("blockwise", """
        flat = w.detach().reshape(-1).float()
        n = flat.numel()
        blocks = torch.nn.functional.pad(flat, (0, -n % blocksize)).view(-1, blocksize)
        absmax = blocks.abs().max(dim=1).values
        scaled = blocks / absmax[:, None]
        codes = (scaled.unsqueeze(-1) - code).abs().argmin(dim=-1)
        return codes.reshape(-1)[:n].to(torch.uint8), absmax
    """),
    # Part A: the block size hard-coded to the default 64
    "blockwise_hardcoded_64": ("blockwise", """
        flat = w.detach().reshape(-1).float()
        n = flat.numel()
        blocks = torch.nn.functional.pad(flat, (0, -n % 64)).view(-1, 64)
        absmax = blocks.abs().max(dim=1).values
        scaled = blocks / absmax.clamp(min=1e-38)[:, None]
        codes = (scaled.unsqueeze(-1) - code).abs().argmin(dim=-1)
        return codes.reshape(-1)[:n].to(torch.uint8), absmax
    """),
    # Part A: floor for the number of blocks: the short last block shares the previous block's absmax
    "blockwise_floor_blocks": ("blockwise", """
        flat = w.detach().reshape(-1).float()
        n = flat.numel()
        n_blocks = max(1, n // blocksize)
        absmax = flat[: n_blocks * blocksize].view(n_blocks, -1).abs().max(dim=1).values
        block_of = (torch.arange(n) // blocksize).clamp(max=n_blocks - 1)
        scaled = (flat / absmax[block_of].clamp(min=1e-38)).clamp(-1, 1)
        codes = (scaled.unsqueeze(-1) - code).abs().argmin(dim=-1)
        return codes.to(torch.uint8), absmax
    """),
    # Part B: an odd count always padded with 0, ignoring the pad argument (bitsandbytes pads with 7)
    "packing_pad_ignored": ("packing", """
        codes = codes.reshape(-1).to(torch.uint8)
        if codes.numel() % 2:
            codes = torch.cat([codes, torch.tensor([0], dtype=torch.uint8)])
        return (codes[0::2] << 4) | codes[1::2]
    """),
    # Part C: floor instead of ceil for the number of blocks (right whenever n is a multiple of 64)
    "layout_floor": ("layout_bytes", """
        n_blocks = n // blocksize
        total = math.ceil(n / 2)
        if double_quant:
            total += n_blocks + 4 * math.ceil(n_blocks / blocksize2) + 4
        else:
            total += 4 * n_blocks
        return total
    """),
    # Part C: the second-level block size hard-coded to QLoRA's 256
    "layout_hardcoded_256": ("layout_bytes", """
        n_blocks = math.ceil(n / blocksize)
        total = math.ceil(n / 2)
        if double_quant:
            total += n_blocks + 4 * math.ceil(n_blocks / 256) + 4
        else:
            total += 4 * n_blocks
        return total
    """),
    # Part C: bits computed in floating point and returned as a float
    "layout_float": ("layout_bytes", """
        n_blocks = n / blocksize
        total = n / 2
        if double_quant:
            total += n_blocks + 4 * n_blocks / blocksize2 + 4
        else:
            total += 4 * n_blocks
        return total
    """),
    # Part D: floor instead of round: every number falls to the level below it
    "minmax_floor": ("minmax", """
        flat = w.detach().reshape(-1).float()
        n = flat.numel()
        padded = torch.cat([flat, flat[-1:].expand(-n % blocksize)])
        blocks = padded.view(-1, blocksize)
        low = blocks.min(dim=1).values
        step = (blocks.max(dim=1).values - low) / 15
        codes = torch.floor((blocks - low[:, None]) / step.clamp(min=1e-38)[:, None]).clamp(0, 15)
        return codes.reshape(-1)[:n].to(torch.uint8), low, step
    """),
    # Part D: 16 steps between the minimum and the maximum instead of 15 (the maximum is never reached)
    "minmax_sixteen_steps": ("minmax", """
        flat = w.detach().reshape(-1).float()
        n = flat.numel()
        padded = torch.cat([flat, flat[-1:].expand(-n % blocksize)])
        blocks = padded.view(-1, blocksize)
        low = blocks.min(dim=1).values
        step = (blocks.max(dim=1).values - low) / 16
        codes = torch.round((blocks - low[:, None]) / step.clamp(min=1e-38)[:, None]).clamp(0, 15)
        return codes.reshape(-1)[:n].to(torch.uint8), low, step
    """),
}

DELEGATIONS = {
    "blockwise": """
        return quant.quantize_blockwise(w, code, blocksize)
    """,
    "packing": """
        codes = codes.reshape(-1).to(torch.uint8)
        if codes.numel() % 2:
            codes = torch.cat([codes, torch.tensor([pad], dtype=torch.uint8)])
        return quant.pack_4bit(codes)
    """,
    "layout_bytes": """
        n_blocks = math.ceil(n / blocksize)
        stored = quant.stored_bytes(quant.quantize_4bit(torch.zeros(n), "nf4", blocksize, double_quant))
        return stored if not double_quant else stored - 4 * math.ceil(n_blocks / 256) + 4 * math.ceil(n_blocks / blocksize2)
    """,
    "minmax": None,  # peftlab has no asymmetric (min-max) quantizer to call: Part D is new
}
