"""Planted mistakes for assignment a10 (AdaLoRA's rank allocation), read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like the
marker). Each is a mistake a student would make, and each fails every test cell of its part; the parts
do not call each other, so no mistake costs another part's points.

``MORE_MUTATIONS`` holds further planted mistakes of the kinds students make (name -> (answer grade_id,
body)); each is graded as its own student and must lose its part's points and only those.
``DELEGATIONS`` maps each answer cell to a body that calls ``peftlab`` instead of implementing the
function; the hidden tests switch ``peftlab`` (and ``peft``) off, so it must lose the part's points.
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

# Part F: the Conv1D layout forgotten: the (d_out, d_in) update returned for GPT-2 as well
MUTATIONS["adalora_delta_weight"] = """
    return lora_B @ (lora_A * lora_E) * lora_alpha / (ranknum + 1e-5)
"""

MORE_MUTATIONS = {
    # Part A: round() where peft truncates with int()
    "schedule_round": ("budget_schedule", """
        if step <= tinit:
            return init_budget, False
        if step > total_step - tfinal:
            return target_budget, True
        remaining = 1 - (step - tinit) / (total_step - tfinal - tinit)
        return round((init_budget - target_budget) * remaining ** 3 + target_budget), step % delta_t == 0
    """),
    # Part A: the warm-up ends one step early (step < tinit)
    "schedule_warmup_off_by_one": ("budget_schedule", """
        if step < tinit:
            return init_budget, False
        if step > total_step - tfinal:
            return target_budget, True
        remaining = 1 - (step - tinit) / (total_step - tfinal - tinit)
        return int((init_budget - target_budget) * remaining ** 3 + target_budget), step % delta_t == 0
    """),
    # Part A: the final phase starts one step early (step >= total_step - tfinal)
    "schedule_final_off_by_one": ("budget_schedule", """
        if step <= tinit:
            return init_budget, False
        if step >= total_step - tfinal:
            return target_budget, True
        remaining = 1 - (step - tinit) / (total_step - tfinal - tinit)
        return int((init_budget - target_budget) * remaining ** 3 + target_budget), step % delta_t == 0
    """),
    # Part B: the moving averages updated in place: the caller's previous averages are overwritten
    "smoothed_in_place": ("smoothed_importance", """
        current = (param * grad).abs()
        sensitivity.mul_(beta1).add_((1 - beta1) * current)
        uncertainty.mul_(beta2).add_((1 - beta2) * (current - sensitivity).abs())
        return sensitivity, uncertainty
    """),
    # Part B: the sensitivity without the absolute value (w * g can be negative)
    "smoothed_no_abs": ("smoothed_importance", """
        current = param * grad
        new_sensitivity = beta1 * sensitivity + (1 - beta1) * current
        new_uncertainty = beta2 * uncertainty + (1 - beta2) * (current - new_sensitivity).abs()
        return new_sensitivity, new_uncertainty
    """),
    # Part C: squeeze() on Λ's scores: a rank-1 matrix gets a 0-d importance
    "triplet_squeeze": ("triplet_importance", """
        return score_E.squeeze() + score_A.mean(dim=1).squeeze() + score_B.mean(dim=0).squeeze()
    """),
    # Part C: the means taken over the wrong axes (runs whenever the matrices are square)
    "triplet_axes_swapped": ("triplet_importance", """
        return score_E.view(-1) + score_A.mean(dim=0)[: score_E.numel()] + score_B.mean(dim=1)[: score_E.numel()]
    """),
    # Part D: exactly `budget` triplets with torch.topk: right without ties, not peft's rule with them
    "keep_topk": ("keep_to_budget", """
        everything = torch.cat([s.flatten() for s in scores.values()])
        keep = torch.zeros(everything.numel(), dtype=torch.bool)
        keep[torch.topk(everything, min(budget, everything.numel())).indices] = True
        masks, offset = {}, 0
        for name, s in scores.items():
            masks[name] = keep[offset:offset + s.numel()].view(s.shape)
            offset += s.numel()
        return masks
    """),
    # Part D: >= the threshold where the spec says strictly greater (ties at the threshold all kept)
    "keep_greater_equal": ("keep_to_budget", """
        everything = torch.cat([s.flatten() for s in scores.values()])
        n_prune = everything.numel() - budget
        if n_prune <= 0:
            return {name: torch.ones(s.shape, dtype=torch.bool) for name, s in scores.items()}
        threshold = torch.kthvalue(everything, n_prune).values
        return {name: s >= threshold for name, s in scores.items()}
    """),
    # Part E: a Python float (via .item()): no gradient reaches P or Q
    "orthogonality_item": ("orthogonality_penalty", """
        r = P.shape[1]
        eye = torch.eye(r, dtype=P.dtype)
        norm_P = torch.linalg.matrix_norm(P.T @ P - eye).item()
        norm_Q = torch.linalg.matrix_norm(Q @ Q.T - eye).item()
        return norm_P ** 2 + norm_Q ** 2 if squared else norm_P + norm_Q
    """),
    # Part E: the squared flag ignored (always the paper's form)
    "orthogonality_always_squared": ("orthogonality_penalty", """
        r = P.shape[1]
        eye = torch.eye(r, dtype=P.dtype)
        return torch.linalg.matrix_norm(P.T @ P - eye) ** 2 + torch.linalg.matrix_norm(Q @ Q.T - eye) ** 2
    """),
    # Part F: scaled by the kept rank (non-zero λ) instead of peft's fixed ranknum
    "delta_kept_rank": ("adalora_delta_weight", """
        kept = max(1, int((lora_E != 0).sum()))
        delta = lora_B @ (lora_A * lora_E) * lora_alpha / (kept + 1e-5)
        return delta.T if fan_in_fan_out else delta
    """),
    # Part F: Λ forgotten (P Q, as in plain LoRA)
    "delta_without_lambda": ("adalora_delta_weight", """
        delta = lora_B @ lora_A * lora_alpha / (ranknum + 1e-5)
        return delta.T if fan_in_fan_out else delta
    """),
}

DELEGATIONS = {
    "budget_schedule": """
        config = padalora.AdaLoraConfig(init_r=init_budget, target_r=target_budget, tinit=tinit, tfinal=tfinal,
                                        total_step=total_step, deltaT=delta_t)
        return padalora.budget_schedule(step, config, 1)
    """,
    "smoothed_importance": """
        allocator = padalora.RankAllocator.__new__(padalora.RankAllocator)
        allocator.config = padalora.AdaLoraConfig(total_step=10, beta1=beta1, beta2=beta2)
        allocator.sensitivity = {"p": None}
        allocator.exp_avg_ipt, allocator.exp_avg_unc = {"p": sensitivity.clone()}, {"p": uncertainty.clone()}
        weight = param.detach().clone().requires_grad_(True)
        weight.grad = grad.clone()
        allocator.triplet_parameters = lambda model: {"p": weight}
        allocator.update_importance(None)
        return allocator.exp_avg_ipt["p"], allocator.exp_avg_unc["p"]
    """,
    "triplet_importance": """
        r, d_in = score_A.shape
        model = torch.nn.ModuleDict({"m": padalora.SVDLinear(torch.nn.Linear(d_in, score_B.shape[0]), r=r, alpha=1.0)})
        allocator = padalora.RankAllocator(model, padalora.AdaLoraConfig(total_step=10))
        allocator.exp_avg_ipt = {"m.lora_A": score_A, "m.lora_E": score_E, "m.lora_B": score_B}
        allocator.exp_avg_unc = {key: torch.ones_like(value) for key, value in allocator.exp_avg_ipt.items()}
        return allocator.triplet_importance(model)["m"]
    """,
    "keep_to_budget": """
        model = torch.nn.ModuleDict({f"m{i}": padalora.SVDLinear(torch.nn.Linear(2, 2), r=s.numel(), alpha=1.0)
                                     for i, s in enumerate(scores.values())})
        allocator = padalora.RankAllocator(model, padalora.AdaLoraConfig(total_step=10))
        allocator.triplet_importance = lambda m: {f"m{i}": s for i, s in enumerate(scores.values())}
        allocator.mask_to_budget(model, budget)
        return {name: layer.rank_mask.clone() for name, layer in zip(scores, model.values())}
    """,
    "orthogonality_penalty": """
        layer = padalora.SVDLinear(torch.nn.Linear(Q.shape[1], P.shape[0]), r=P.shape[1], alpha=1.0)
        del layer.lora_A, layer.lora_B
        layer.lora_A, layer.lora_B = Q, P
        return 2 * padalora.orthogonality_regularizer(torch.nn.Sequential(layer), squared=squared)
    """,
    "adalora_delta_weight": """
        d_out, r = lora_B.shape
        layer = padalora.SVDLinear(torch.nn.Linear(lora_A.shape[1], d_out), r=r, alpha=lora_alpha)
        with torch.no_grad():
            layer.lora_A.copy_(lora_A)
            layer.lora_E.copy_(lora_E)
            layer.lora_B.copy_(lora_B)
        delta = layer.delta_weight()
        return delta.T if fan_in_fan_out else delta
    """,
}
