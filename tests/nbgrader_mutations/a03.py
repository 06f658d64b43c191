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
    # Part E: c_proj counted once per block (only the attention projection)
    "gpt2_lora_parameter_count": """
        d = config.n_embd
        inner = config.n_inner or 4 * d
        layers = {"c_attn": (d, 3 * d), "c_proj": (d, d), "c_fc": (d, inner)}
        return config.n_layer * sum(r * (d_in + d_out) for name, (d_in, d_out) in layers.items() if name in targets)
    """,
}

_INIT = """
    self.base = base
    self.base.requires_grad_(False)
    weight = base.weight
    self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=weight.device, dtype=weight.dtype))
    self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=weight.device, dtype=weight.dtype))
    nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
    self.scaling = alpha / r
    self.merged = False
"""

MORE_MUTATIONS = {
    # Part A: form the d_out x d_in matrix B A (right values, the cost LoRA exists to avoid)
    "forward_forms_BA": ("lora_forward", """
        return F.linear(x, weight + scaling * lora_B @ lora_A, bias)
    """),
    # Part B: "transpose" for Conv1D by reshaping (right shape, wrong numbers unless B A is symmetric)
    "merge_reshape_not_transpose": ("merge_weight", """
        delta = scaling * lora_B @ lora_A
        return weight + delta.reshape(weight.shape)
    """),
    # Part C: merge() assigns a new nn.Parameter instead of writing into the base weight
    "merge_new_parameter": ("lora_linear", _INIT + """
    def merge_by_new_parameter():
        if not self.merged:
            with torch.no_grad():
                self.base.weight = nn.Parameter(merge_weight(self.base.weight, self.lora_A, self.lora_B, self.scaling))
            self.merged = True
    self.merge = merge_by_new_parameter
    """),
    # Part C: freeze only the base weight; its bias keeps training
    "base_bias_trains": ("lora_linear", _INIT.replace("self.base.requires_grad_(False)",
                                                      "self.base.weight.requires_grad_(False)")),
    # Part D: read head_dim and num_key_value_heads without handling None
    "count_ignores_none": ("lora_parameter_count", """
        h, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        head_dim = config.head_dim
        shapes = {
            "q_proj": (h, heads * head_dim), "k_proj": (h, kv_heads * head_dim), "v_proj": (h, kv_heads * head_dim),
            "o_proj": (heads * head_dim, h), "gate_proj": (h, config.intermediate_size),
            "up_proj": (h, config.intermediate_size), "down_proj": (config.intermediate_size, h),
        }
        return config.num_hidden_layers * sum(r * (d_in + d_out) for name, (d_in, d_out) in shapes.items() if name in targets)
    """),
    # Part D: count repeated names twice
    "count_repeats": ("lora_parameter_count", """
        h, heads = config.hidden_size, config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or h // heads
        shapes = {
            "q_proj": (h, heads * head_dim), "k_proj": (h, kv_heads * head_dim), "v_proj": (h, kv_heads * head_dim),
            "o_proj": (heads * head_dim, h), "gate_proj": (h, config.intermediate_size),
            "up_proj": (h, config.intermediate_size), "down_proj": (config.intermediate_size, h),
        }
        return config.num_hidden_layers * sum(r * sum(shapes[name]) for name in targets)
    """),
    # Part E: n_inner taken as given (None crashes; GPT-2's default is 4 * n_embd)
    "gpt2_n_inner_none": ("gpt2_lora_parameter_count", """
        d, inner = config.n_embd, config.n_inner
        layers = {"c_attn": [(d, 3 * d)], "c_proj": [(d, d), (inner, d)], "c_fc": [(d, inner)]}
        return config.n_layer * sum(r * (a + b) for name, shapes in layers.items() if name in targets for a, b in shapes)
    """),
}

DELEGATIONS = {
    "lora_forward": """
        base = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer = LoraLayer(base, r=lora_A.shape[0], alpha=scaling * lora_A.shape[0])
        with torch.no_grad():
            base.weight.copy_(weight)
            if bias is not None:
                base.bias.copy_(bias)
            layer.lora_A.weight.copy_(lora_A)
            layer.lora_B.weight.copy_(lora_B)
        return layer(x)
    """,
    "merge_weight": """
        d_out, d_in = lora_B.shape[0], lora_A.shape[1]
        layer = LoraLayer(nn.Linear(d_in, d_out, bias=False), r=lora_A.shape[0], alpha=scaling * lora_A.shape[0])
        with torch.no_grad():
            layer.lora_A.weight.copy_(lora_A)
            layer.lora_B.weight.copy_(lora_B)
            delta = layer.delta_weight()
        return weight + (delta.T if fan_in_fan_out else delta)
    """,
    "lora_linear": """
        self.inner = LoraLayer(base, r, alpha)
        self.base = base
        self.lora_A = self.inner.lora_A.weight
        self.lora_B = self.inner.lora_B.weight
        self.scaling = self.inner.scaling
        self.merged = False
    """,
    "lora_parameter_count": """
        from peftlab import memory
        return memory.method_counts(config, "lora", rank=r, targets=list(dict.fromkeys(targets))).trainable
    """,
    "gpt2_lora_parameter_count": """
        peftlab.set_seed(0)
        model = apply_lora(GPT2LMHeadModel(config), LoraConfig(r=r, alpha=r, target_modules=list(targets)))
        return peftlab.count_parameters(model).trainable
    """,
}
