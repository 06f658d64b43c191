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
}
