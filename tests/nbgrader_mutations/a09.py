"""Planted mistakes for assignment a09 (QLoRA: a 4-bit layer with a LoRA update), read by
``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker). Each is a mistake a student would make, and each fails every test cell of its part.
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
