"""Planted mistakes for assignment a06 (BitFit), read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker). Each is a mistake a student would make, and each fails every test cell of its part.

``MORE_MUTATIONS`` holds further plausible mistakes, name -> (answer grade_id, body): each is graded
as its own student and must lose the points of that answer's part and only those.

``DELEGATIONS`` maps each answer cell to a body that calls peftlab's implementation instead of
writing it (the hidden tests switch those functions off, so it must lose the part's points).
"""

MUTATIONS = {
    # Part A: list the modules that have a bias instead of the bias parameters themselves
    "bias_names": """
        return [name for name, module in model.named_modules() if getattr(module, "bias", None) is not None]
    """,
    # Part B: unfreeze the biases but forget to freeze everything else
    "apply_bitfit": """
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.requires_grad_(True)
        return model
    """,
    # Part C: a freshly initialised (random) bias, as nn.Linear would make it, instead of zeros
    "add_zero_biases": """
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        added = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and module.bias is None and module is not head:
                module.bias = nn.Parameter(torch.randn(module.out_features, dtype=module.weight.dtype) * 0.02)
                added.append(name)
        return added
    """,
    # Part D: forget the LayerNorm shifts (ln_1, ln_2, ln_f)
    "gpt2_bias_count": """
        n_inner = 4 * n_embd if n_inner is None else n_inner
        return n_layer * (3 * n_embd + n_embd + n_inner + n_embd)
    """,
    # Part E: every parameter named like the second MLP layer: the attention's output projection too
    "apply_bitfit_qm2": """
        model.requires_grad_(False)
        trainable = 0
        for name, parameter in model.named_parameters():
            if name.endswith("query.bias") or name.endswith("output.dense.bias"):
                parameter.requires_grad_(True)
                trainable += parameter.numel()
        return trainable
    """,
}

MORE_MUTATIONS = {
    # Part A: any parameter whose name contains "bias" (bias_scale too)
    "names_substring": ("bias_names", """
        return [name for name, _ in model.named_parameters() if "bias" in name]
    """),
    # Part A: only names with a dot before "bias" (a bias on the root module is missed)
    "names_dot_bias": ("bias_names", """
        return [name for name, _ in model.named_parameters() if name.endswith(".bias")]
    """),
    # Part B: freeze the weights, but never re-enable biases on a model that arrives frozen
    "bitfit_never_unfreezes": ("apply_bitfit", """
        for name, parameter in model.named_parameters():
            if name.rsplit(".", 1)[-1] != "bias":
                parameter.requires_grad_(False)
        return model
    """),
    # Part B: train the weights of the layers that have a bias as well
    "bitfit_whole_layers": ("apply_bitfit", """
        model.requires_grad_(False)
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.requires_grad_(True)
        return model
    """),
    # Part C: the new bias in float32 whatever the weight's dtype
    "zero_bias_float32": ("add_zero_biases", """
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        added = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and module.bias is None and module is not head:
                module.bias = nn.Parameter(torch.zeros(module.out_features))
                added.append(name)
        return added
    """),
    # Part C: the output head gets a bias too
    "zero_bias_on_head": ("add_zero_biases", """
        added = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and module.bias is None:
                module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype))
                added.append(name)
        return added
    """),
    # Part D: n_inner taken as given (None crashes)
    "count_n_inner_none": ("gpt2_bias_count", """
        return n_layer * (2 * n_embd + 3 * n_embd + n_embd + n_inner + n_embd) + n_embd
    """),
    # Part D: forget the final LayerNorm ln_f
    "count_no_ln_f": ("gpt2_bias_count", """
        n_inner = 4 * n_embd if n_inner is None else n_inner
        return n_layer * (2 * n_embd + 3 * n_embd + n_embd + n_inner + n_embd)
    """),
    # Part E: query biases only, not the second MLP layer
    "qm2_query_only": ("apply_bitfit_qm2", """
        model.requires_grad_(False)
        trainable = 0
        for name, parameter in model.named_parameters():
            if name.endswith("self.query.bias"):
                parameter.requires_grad_(True)
                trainable += parameter.numel()
        return trainable
    """),
    # Part E: forget to freeze the model first (a model that arrives trainable keeps training everything)
    "qm2_no_freeze": ("apply_bitfit_qm2", """
        trainable = 0
        for name, parameter in model.named_parameters():
            parts = name.split(".")
            second_mlp = parts[-3:] == ["output", "dense", "bias"] and parts[-4] != "attention"
            if parts[-3:] == ["self", "query", "bias"] or second_mlp:
                parameter.requires_grad_(True)
                trainable += parameter.numel()
        return trainable
    """),
    # Part E: only the BERT body frozen, so a classifier's fresh head stays trainable
    "qm2_freezes_only_bert": ("apply_bitfit_qm2", """
        getattr(model, "bert", model).requires_grad_(False)
        trainable = 0
        for name, parameter in model.named_parameters():
            parts = name.split(".")
            second_mlp = parts[-3:] == ["output", "dense", "bias"] and parts[-4] != "attention"
            if parts[-3:] == ["self", "query", "bias"] or second_mlp:
                parameter.requires_grad_(True)
                trainable += parameter.numel()
        return trainable
    """),
}

DELEGATIONS = {
    "bias_names": """
        return [name for name, _ in peftlab_bitfit.bias_parameters(model)]
    """,
    "apply_bitfit": """
        return peftlab.apply_method(model, "bitfit")
    """,
    "add_zero_biases": """
        return peftlab_bitfit.add_zero_biases(model)
    """,
    "gpt2_bias_count": """
        from peftlab import memory
        config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_inner=n_inner, n_head=1)
        return memory.method_counts(config, "bitfit").trainable
    """,
    "apply_bitfit_qm2": """
        peftlab.apply_method(model, "bitfit")
        trainable = 0
        for name, parameter in peftlab_bitfit.bias_parameters(model):
            keep = name.endswith("self.query.bias") or (name.endswith("output.dense.bias") and "attention" not in name)
            parameter.requires_grad_(keep)
            trainable += parameter.numel() if keep else 0
        return trainable
    """,
}
