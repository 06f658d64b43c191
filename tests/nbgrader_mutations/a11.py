"""Planted mistakes for assignment a11 (the AdapterFusion attention), read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like the
marker). Each is a mistake a student would make, and each fails every test cell of its part; Part B's
tests feed it weights computed by peftlab or by hand, so a mistake in Part A costs only Part A.

``MORE_MUTATIONS`` holds further planted mistakes of the kinds students make (name -> (answer grade_id,
body)); each is graded as its own student and must lose its part's points and only those.
``DELEGATIONS`` maps each answer cell to a body that calls ``peftlab`` instead of implementing the
function; the hidden tests switch ``peftlab``'s fusion off, so it must lose the part's points.
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

# Part C: the mean of per-row means: a token of a short row weighs more than one of a long row
MUTATIONS["routing_summary"] = """
    real = attention_mask.bool()
    rows = [weights[b][real[b]] for b in range(weights.shape[0]) if real[b].any()]
    share = torch.stack([row.mean(dim=0) for row in rows]).mean(dim=0)
    entropies = [-torch.where(row > 0, row * row.clamp(min=1e-38).log(), torch.zeros_like(row)).sum(-1).mean() for row in rows]
    return share, torch.stack(entropies).mean()
"""

MORE_MUTATIONS = {
    # Part A: W h written as h @ W (no transpose): right only for symmetric matrices
    "weights_no_transpose": ("fusion_weights", """
        query = h @ W_q + b_q
        keys = deltas @ W_k
        scores = torch.einsum("btd,btnd->btn", query, keys)
        return torch.softmax(scores / temperature, dim=-1)
    """),
    # Part A: the query's bias forgotten (the visible tests use a zero bias)
    "weights_no_bias": ("fusion_weights", """
        query = h @ W_q.T
        keys = deltas @ W_k.T
        scores = torch.einsum("btd,btnd->btn", query, keys)
        return torch.softmax(scores / temperature, dim=-1)
    """),
    # Part A: the scores multiplied by the temperature instead of divided
    "weights_times_temperature": ("fusion_weights", """
        query = h @ W_q.T + b_q
        keys = deltas @ W_k.T
        scores = torch.einsum("btd,btnd->btn", query, keys)
        return torch.softmax(scores * temperature, dim=-1)
    """),
    # Part B: the value map applied as mixed @ W_v (no transpose)
    "output_no_transpose": ("fusion_output", """
        mixed = (weights.unsqueeze(-1) * deltas).sum(dim=-2)
        return h + mixed @ W_v + b_v
    """),
    # Part B: the value map's bias forgotten
    "output_no_bias": ("fusion_output", """
        mixed = (weights.unsqueeze(-1) * deltas).sum(dim=-2)
        return h + mixed @ W_v.T
    """),
    # Part C: the padding counted as tokens
    "routing_unmasked": ("routing_summary", """
        flat = weights.reshape(-1, weights.shape[-1])
        share = flat.mean(dim=0)
        entropy = -torch.where(flat > 0, flat * flat.clamp(min=1e-38).log(), torch.zeros_like(flat)).sum(dim=-1)
        return share, entropy.mean()
    """),
    # Part C: p log p computed directly: a one-hot token gives 0 * log 0 = NaN
    "routing_nan_entropy": ("routing_summary", """
        kept = weights[attention_mask.bool()]
        return kept.mean(dim=0), -(kept * kept.log()).sum(dim=-1).mean()
    """),
    # Part C: the entropy in bits (log2) where the spec says nats
    "routing_bits": ("routing_summary", """
        kept = weights[attention_mask.bool()]
        entropy = -torch.where(kept > 0, kept * kept.clamp(min=1e-38).log2(), torch.zeros_like(kept)).sum(dim=-1)
        return kept.mean(dim=0), entropy.mean()
    """),
}

DELEGATIONS = {
    "fusion_weights": """
        layer = pfusion.AdapterFusion(h.shape[-1], deltas.shape[2], temperature=temperature)
        with torch.no_grad():
            layer.query.weight.copy_(W_q)
            layer.query.bias.copy_(b_q)
            layer.key.weight.copy_(W_k)
            return layer.attention(h, deltas)
    """,
    "fusion_output": """
        layer = pfusion.AdapterFusion(h.shape[-1], deltas.shape[2])
        with torch.no_grad():
            layer.value.weight.copy_(W_v)
            layer.value.bias.copy_(b_v)
        layer.attention = lambda hidden, updates: weights
        return h + layer(h, deltas)
    """,
    # peftlab pools the weights only inside fusion_attention(model, batch), from a fused model's own
    # forward pass: there is no function of (weights, attention_mask) to call, and no entropy at all
    "routing_summary": None,
}
