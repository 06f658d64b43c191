"""Planted mistakes for assignment a10 (AdaLoRA's rank allocation), read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like the
marker). Each is a mistake a student would make, and each fails every test cell of its part; the parts
do not call each other, so no mistake costs another part's points.
"""

MUTATIONS = {
    # Part A: a linear decay where the schedule is cubic
    "budget_schedule": """
        if step <= tinit:
            return init_budget, False
        if step > total_step - tfinal:
            return target_budget, True
        remaining = 1 - (step - tinit) / (total_step - tfinal - tinit)
        return int((init_budget - target_budget) * remaining + target_budget), step % delta_t == 0
    """,
    # Part B: the uncertainty measured against the previous smoothed sensitivity instead of the new one
    "smoothed_importance": """
        current = (param * grad).abs()
        new_uncertainty = beta2 * uncertainty + (1 - beta2) * (current - sensitivity).abs()
        new_sensitivity = beta1 * sensitivity + (1 - beta1) * current
        return new_sensitivity, new_uncertainty
    """,
    # Part C: sums over P's column and Q's row where the paper takes means (wide matrices win)
    "triplet_importance": """
        return score_E.view(-1) + score_A.sum(dim=1) + score_B.sum(dim=0)
    """,
    # Part D: the budget shared out evenly per matrix instead of one global ranking
    "keep_to_budget": """
        total = sum(s.numel() for s in scores.values())
        keep = {}
        for name, s in scores.items():
            k = round(budget * s.numel() / total)
            mask = torch.zeros(s.shape, dtype=torch.bool)
            if k > 0:
                mask[torch.topk(s, min(k, s.numel())).indices] = True
            keep[name] = mask
        return keep
    """,
    # Part E: the outer products P P^T and Q^T Q (d x d) where the Gram matrices are r x r
    "orthogonality_penalty": """
        norm_P = torch.linalg.matrix_norm(P @ P.T - torch.eye(P.shape[0], dtype=P.dtype))
        norm_Q = torch.linalg.matrix_norm(Q.T @ Q - torch.eye(Q.shape[1], dtype=Q.dtype))
        return norm_P ** 2 + norm_Q ** 2 if squared else norm_P + norm_Q
    """,
}
