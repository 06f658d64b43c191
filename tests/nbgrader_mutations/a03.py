"""Planted mistakes for assignment a03 (LoRA), read by ``tests/test_nbgrader.py``.

Each maps an answer cell's grade_id to a wrong but runnable body for its first BEGIN/END SOLUTION
region. Part C's layer calls Part A's and Part B's functions, so each mistake is one that the other
parts' tests do not exercise: it must cost exactly the points of its own part.
"""

MUTATIONS = {
    # Part A: assume the layer always has a bias (GPT-style layers without one crash)
    "lora_forward": """
        out = x @ weight.T + bias  # (..., d_out)
        down = x @ lora_A.T  # (..., r)
        return out + scaling * (down @ lora_B.T)
    """,
    # Part B: merge in place, so the caller's weight changes (and an unmerged layer adds the update twice)
    "merge_weight": """
        delta = scaling * lora_B @ lora_A
        if fan_in_fan_out:
            delta = delta.T
        weight += delta
        return weight
    """,
    # Part C: scaling inverted (r / alpha instead of alpha / r)
    "lora_linear": """
        self.base = base
        self.base.requires_grad_(False)
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = r / alpha
        self.merged = False
    """,
    # Part D: count one transformer layer and forget to multiply by the number of layers
    "lora_parameter_count": """
        h, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        head_dim = config.head_dim
        shapes = {
            "q_proj": (h, heads * head_dim), "k_proj": (h, kv_heads * head_dim), "v_proj": (h, kv_heads * head_dim),
            "o_proj": (heads * head_dim, h), "gate_proj": (h, config.intermediate_size),
            "up_proj": (h, config.intermediate_size), "down_proj": (config.intermediate_size, h),
        }
        return sum(r * (d_in + d_out) for name, (d_in, d_out) in shapes.items() if name in targets)
    """,
}
