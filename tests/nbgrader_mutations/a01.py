"""Planted mistakes for assignment a01, read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker). Each is a mistake a student would make, and each fails every test cell of its part.
"""

MUTATIONS = {
    # Part A: forget the shift, so position t is scored against its own token
    "causal_lm_loss": """
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
    """,
    # Part B: count every parameter, frozen ones included
    "count_trainable": """
        return sum(p.numel() for p in model.parameters())
    """,
    # Part C: forget optimizer.step(): gradients are computed and thrown away
    "train_step": """
        loss = model(**batch).loss
        loss.backward()
        optimizer.zero_grad()
        return float(loss)
    """,
    # Part D: ignore lower_is_better, so a rising perplexity reads as an improvement
    "forgetting": """
        return {name: value - after[name] for name, value in before.items()}
    """,
    # Part E: forget Adam's second moment
    "adamw_fp32_bytes": """
        return {"weights": 4 * n_params, "gradients": 4 * n_params, "optimizer_state": 4 * n_params,
                "total": 12 * n_params}
    """,
}
