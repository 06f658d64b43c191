"""Planted mistakes for assignment a09 (QLoRA: a 4-bit layer with a LoRA update), read by
``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker; in a cell with two functions or methods, the first one's). Each is a mistake a student
would make, and each fails every test cell of its part.

``MORE_MUTATIONS`` holds further planted mistakes of the kinds students make (name -> (answer grade_id,
body)); each is graded as its own student and must lose its part's points and only those.
``DELEGATIONS`` maps each answer cell to a body that calls ``peftlab`` (or ``bitsandbytes``) instead of
implementing the function; the hidden tests switch them off, so it must lose the part's points.
"""

MUTATIONS = {
    # Part A: decode the 8-bit scales but forget to add back the mean subtracted before quantizing them
    "dequantize_weight": """
        n = math.prod(q.shape)
        packed = q.packed.reshape(-1)
        codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)[:n].long()
        if q.double_quant:
            s = q.state2
            second = torch.arange(q.absmax.numel(), device=packed.device) // s.blocksize
            absmax = s.code[q.absmax.long()] * s.absmax[second]
        else:
            absmax = q.absmax
        block_of = torch.arange(n, device=packed.device) // q.blocksize
        return (q.code[codes] * absmax[block_of]).float().reshape(q.shape)
    """,
    # Part B: the LoRA update added without its scaling (alpha / r)
    "qlora_forward": """
        out = F.linear(x, dequantize_weight(q), bias)
        return out + F.linear(F.linear(x, lora_A), lora_B)
    """,
    # Part C: the 4-bit weights counted as half a byte each, forgetting the block scales and their state
    "qlora_counts": """
        targets = [m for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules]
        quantized_ids = {id(m.weight) for m in targets}
        trainable = sum(r * (m.in_features + m.out_features) for m in targets)
        total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in quantized_ids)
        total += sum(math.ceil(m.weight.numel() / 2) for m in targets)
        return trainable, total + 4 * trainable
    """,
}

# Part D: the dequantized weight saved for backward (the memory the part is about)
MUTATIONS["frozen_dequant_matmul"] = """
    weight = dequantize_weight(q)
    ctx.save_for_backward(weight)
    ctx.q = q
    return x @ weight.T
"""

MORE_MUTATIONS = {
    # Part A: the low nibble taken as the first element of each pair
    "dequantize_low_nibble_first": ("dequantize_weight", """
        n = math.prod(q.shape)
        packed = q.packed.reshape(-1)
        codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(-1)[:n].long()
        if q.double_quant:
            s = q.state2
            second = torch.arange(q.absmax.numel()) // s.blocksize
            absmax = s.code[q.absmax.long()] * s.absmax[second] + s.offset
        else:
            absmax = q.absmax
        return (q.code[codes] * absmax[torch.arange(n) // q.blocksize]).float().reshape(q.shape)
    """),
    # Part A: the second-level block size hard-coded to QLoRA's 256
    "dequantize_hardcoded_256": ("dequantize_weight", """
        n = math.prod(q.shape)
        packed = q.packed.reshape(-1)
        codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)[:n].long()
        if q.double_quant:
            s = q.state2
            second = torch.arange(q.absmax.numel()) // 256
            absmax = s.code[q.absmax.long()] * s.absmax[second] + s.offset
        else:
            absmax = q.absmax
        return (q.code[codes] * absmax[torch.arange(n) // q.blocksize]).float().reshape(q.shape)
    """),
    # Part A: the first-level block size hard-coded to 64
    "dequantize_hardcoded_64": ("dequantize_weight", """
        n = math.prod(q.shape)
        packed = q.packed.reshape(-1)
        codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)[:n].long()
        if q.double_quant:
            s = q.state2
            second = torch.arange(q.absmax.numel()) // s.blocksize
            absmax = s.code[q.absmax.long()] * s.absmax[second] + s.offset
        else:
            absmax = q.absmax
        return (q.code[codes] * absmax[torch.arange(n) // 64]).float().reshape(q.shape)
    """),
    # Part B: the bias added to the LoRA branch too (scaled), not once
    "forward_bias_scaled": ("qlora_forward", """
        out = F.linear(x, dequantize_weight(q))
        update = F.linear(F.linear(x, lora_A), lora_B, bias)
        return out + update * scaling
    """),
    # Part B: the scaling applied to the whole output, frozen layer included
    "forward_scales_everything": ("qlora_forward", """
        out = F.linear(x, dequantize_weight(q), bias)
        return (out + F.linear(F.linear(x, lora_A), lora_B)) * scaling
    """),
    # Part C: the tied embedding counted twice (state_dict lists both names)
    "counts_tied_twice": ("qlora_counts", """
        targets = [m for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules]
        quantized_ids = {id(m.weight) for m in targets}
        trainable = sum(r * (m.in_features + m.out_features) for m in targets)
        total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in quantized_ids)
        total += sum(t.numel() * t.element_size() for name, t in model.state_dict().items() if name == "lm_head.weight"
                     and getattr(model.config, "tie_word_embeddings", False))
        for m in targets:
            n = m.weight.numel()
            n_blocks = math.ceil(n / 64)
            total += math.ceil(n / 2) + n_blocks + 4 * math.ceil(n_blocks / 256) + 4
        return trainable, total + 4 * trainable
    """),
    # Part C: floor instead of ceil for the blocks (right whenever the weight is a multiple of 64)
    "counts_floor_blocks": ("qlora_counts", """
        targets = [m for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules]
        quantized_ids = {id(m.weight) for m in targets}
        trainable = sum(r * (m.in_features + m.out_features) for m in targets)
        total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in quantized_ids)
        for m in targets:
            n = m.weight.numel()
            n_blocks = n // 64
            total += math.ceil(n / 2) + n_blocks + 4 * math.ceil(n_blocks / 256) + 4
        return trainable, total + 4 * trainable
    """),
    # Part C: only parameters that require gradients counted as stored (a frozen model loses its bytes)
    "counts_trainable_only": ("qlora_counts", """
        targets = [m for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules]
        quantized_ids = {id(m.weight) for m in targets}
        trainable = sum(r * (m.in_features + m.out_features) for m in targets)
        total = sum(p.numel() * p.element_size() for p in model.parameters()
                    if id(p) not in quantized_ids and p.requires_grad)
        for m in targets:
            n = m.weight.numel()
            n_blocks = math.ceil(n / 64)
            total += math.ceil(n / 2) + n_blocks + 4 * math.ceil(n_blocks / 256) + 4
        return trainable, total + 4 * trainable
    """),
    # Part D: the input kept as a ctx attribute (it is not needed: the base weight is frozen)
    "matmul_keeps_x": ("frozen_dequant_matmul", """
        ctx.q, ctx.x = q, x
        return x @ dequantize_weight(q).T
    """),
    # Part D: the dense fp32 weight cached on ctx inside a container, for a backward that would reuse it
    "matmul_caches_dense_weight": ("frozen_dequant_matmul", """
        weight = dequantize_weight(q)
        ctx.q, ctx.cache = q, {"weight": weight}
        return x @ weight.T
    """),
}

DELEGATIONS = {
    "dequantize_weight": """
        return quant.dequantize_4bit(q).float()
    """,
    "qlora_forward": """
        return kernels.qlora_linear_torch(x, q, bias, lora_A, lora_B, scaling)
    """,
    "qlora_counts": """
        applied = peftlab.apply_method(copy.deepcopy(model), "qlora", r=r, target_modules=list(target_modules))
        return peftlab.count_parameters(applied).trainable, memory.weight_bytes(applied)
    """,
    "frozen_dequant_matmul": """
        ctx.q = q
        return pqlora.DequantLinear.forward(ctx, x, q, None, torch.float32)
    """,
}
