"""Planted mistakes for assignment a06 (BitFit), read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker). Each is a mistake a student would make, and each fails every test cell of its part.
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
}
