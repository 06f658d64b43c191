"""Planted mistakes for assignment a04, read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from the first ``### BEGIN SOLUTION`` to the first ``### END SOLUTION`` of that cell (written
unindented; the test indents it like the marker). Each is a mistake a student would make, and each
fails every test cell of its part.
"""

MUTATIONS = {
    # Part A: keep nn.Linear's random init for up: the adapter is no longer the identity at the start
    # (and a gradient reaches down at step 0)
    "adapter": """
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
    """,
    # Part B: wrap the MLPs but forget to freeze the base: everything trains
    "add_pfeiffer_adapters": """
        hidden_size = model.config.hidden_size
        names = [name for name, module in model.named_modules()
                 if name.endswith(".mlp") and not isinstance(module, WithAdapter)]
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, WithAdapter(getattr(parent, child), Adapter(hidden_size, bottleneck)))
        return model
    """,
    # Part C: forget the biases
    "adapter_parameters": """
        return n_layers * per_layer * 2 * hidden_size * bottleneck
    """,
    # Part D: the branch reads the module's output instead of its input (a serial adapter in disguise)
    "parallel_adapter": """
        self.module = module
        self.module.requires_grad_(False)
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale
        self.forward = lambda x: self.module(x) + self.scale * self.up(torch.relu(self.down(self.module(x))))
    """,
}

MORE_MUTATIONS = {
    # Part A: GELU instead of the ReLU the formula asks for
    "adapter_gelu": ("adapter", """
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.forward = lambda h: h + self.up(torch.nn.functional.gelu(self.down(h)))
    """),
    # Part A: zero only up's weight; its bias keeps nn.Linear's random init
    "adapter_bias_not_zero": ("adapter", """
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
    """),
    # Part A: down without a bias
    "adapter_down_no_bias": ("adapter", """
        self.down = nn.Linear(hidden_size, bottleneck, bias=False)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
    """),
    # Part B: freeze the model after inserting the adapters (nothing trains)
    "pfeiffer_freezes_adapters": ("add_pfeiffer_adapters", """
        hidden_size = model.config.hidden_size
        names = [name for name, module in model.named_modules()
                 if name.endswith(".mlp") and not isinstance(module, WithAdapter)]
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, WithAdapter(getattr(parent, child), Adapter(hidden_size, bottleneck)))
        model.requires_grad_(False)
        return model
    """),
    # Part B: not idempotent: a second call wraps the wrapped blocks again
    "pfeiffer_twice": ("add_pfeiffer_adapters", """
        model.requires_grad_(False)
        hidden_size = model.config.hidden_size
        names = [name for name, module in model.named_modules() if name.endswith(".mlp")]
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, WithAdapter(getattr(parent, child), Adapter(hidden_size, bottleneck)))
        return model
    """),
    # Part B: freeze only what requires grad... of the base, and trust new adapters to be trainable, but walk
    # model.model.layers (a Llama path: GPT-2's blocks are elsewhere)
    "pfeiffer_llama_only": ("add_pfeiffer_adapters", """
        model.requires_grad_(False)
        hidden_size = model.config.hidden_size
        for layer in model.model.layers:
            if not isinstance(layer.mlp, WithAdapter):
                layer.mlp = WithAdapter(layer.mlp, Adapter(hidden_size, bottleneck))
        return model
    """),
    # Part C: one adapter per layer whatever per_layer says
    "count_ignores_per_layer": ("adapter_parameters", """
        return n_layers * (2 * hidden_size * bottleneck + bottleneck + hidden_size)
    """),
    # Part D: the scale ignored
    "parallel_no_scale": ("parallel_adapter", """
        self.module = module
        self.module.requires_grad_(False)
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale
        self.forward = lambda x: self.module(x) + self.up(torch.relu(self.down(x)))
    """),
    # Part D: the wrapped module left trainable
    "parallel_module_trains": ("parallel_adapter", """
        self.module = module
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale
    """),
}

DELEGATIONS = {
    "adapter": """
        inner = peftlab_adapters.Adapter(hidden_size, bottleneck, "relu")
        self.down, self.up = inner.down, inner.up
    """,
    "add_pfeiffer_adapters": """
        return peftlab.apply_method(model, "pfeiffer", bottleneck=bottleneck, nonlinearity="relu")
    """,
    "adapter_parameters": """
        from transformers import LlamaConfig, LlamaForCausalLM
        config = LlamaConfig(vocab_size=8, hidden_size=hidden_size, intermediate_size=8, num_hidden_layers=n_layers,
                             num_attention_heads=1, num_key_value_heads=1)
        method = "houlsby" if per_layer == 2 else "pfeiffer"
        return peftlab.count_parameters(peftlab.apply_method(LlamaForCausalLM(config), method, bottleneck=bottleneck)).trainable
    """,
    "parallel_adapter": """
        self.module = module
        self.module.requires_grad_(False)
        inner = peftlab_adapters.Adapter(hidden_size, bottleneck, "relu", residual=False)
        self.down, self.up, self.scale = inner.down, inner.up, scale
        self.forward = lambda x: self.module(x) + self.scale * inner(x)
    """,
}
