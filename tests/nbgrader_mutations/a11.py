"""Planted mistakes for assignment a11 (the AdapterFusion attention), read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like the
marker). Each is a mistake a student would make, and each fails every test cell of its part; Part B's
tests feed it weights computed by peftlab or by hand, so a mistake in Part A costs only Part A.
"""

MUTATIONS = {
    # Part A: the softmax over the positions (dim 1) instead of over the adapters
    "fusion_weights": """
        query = h @ W_q.T + b_q
        keys = deltas @ W_k.T
        scores = torch.einsum("btd,btnd->btn", query, keys)
        return torch.softmax(scores / temperature, dim=1)
    """,
    # Part B: the residual h left out (the layer then drops the frozen block's output)
    "fusion_output": """
        mixed = (weights.unsqueeze(-1) * deltas).sum(dim=-2)
        return mixed @ W_v.T + b_v
    """,
}
