"""Planted mistakes for assignment a07 (sparse fine-tuning with a Fisher mask), read by
``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker; in a cell with two functions, the first one's). Each is a mistake a student would make,
and each fails every test cell of its part.

``MORE_MUTATIONS`` holds further planted mistakes of the kinds students make (name -> (answer grade_id,
body)); each is graded as its own student and must lose its part's points and only those.
``DELEGATIONS`` maps each answer cell to a body that calls ``peftlab`` instead of implementing the
function; the hidden tests switch ``peftlab`` off, so it must lose the part's points (``None``: the
package has no implementation to borrow).
"""

MUTATIONS = {
    # Part A: square the gradient of the summed loss (one backward for all examples), not per example
    "empirical_fisher": """
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        model.requires_grad_(True)
        model.zero_grad()
        total = 0
        for example in examples:
            batch = collate([encode_example(tokenizer, example)], tokenizer.pad_token_id)
            n_target_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total = total + model(**batch).loss * n_target_tokens
        total.backward()
        fisher = {name: p.grad.float() ** 2 for name, p in model.named_parameters()}
        model.zero_grad()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        return fisher
    """,
    # Part B: keep the top fraction of each tensor instead of the top k over all of them
    "top_k_mask": """
        masks = {}
        for name, s in scores.items():
            k = max(1, round(keep_fraction * s.numel()))
            keep = torch.zeros(s.numel(), dtype=torch.bool)
            keep[torch.topk(s.flatten(), k).indices] = True
            masks[name] = keep.view(s.shape)
        return masks
    """,
    # Part C: mask the gradient only; AdamW's weight decay then moves the weights outside the mask
    "masked_step": """
        params = dict(model.named_parameters())
        loss = model(**batch).loss
        loss.backward()
        for name, mask in masks.items():
            if params[name].grad is not None:
                params[name].grad.mul_(mask)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
    """,
    # Part D: store new - base (a delta) where the new values belong
    "sparse_difference": """
        diff = {}
        for name, p in model.named_parameters():
            new, old = p.detach().flatten(), base_state[name].flatten()
            indices = (new != old).nonzero().flatten()
            if indices.numel():
                diff[name] = (indices, (new - old)[indices])
        return diff
    """,
}

# Part E: the best rows of each matrix (a per-tensor budget) instead of one ranking over all rows
MUTATIONS["row_mask"] = """
    masks = {}
    for name, s in scores.items():
        if s.dim() != 2:
            masks[name] = torch.zeros(s.shape, dtype=torch.bool)
            continue
        k = max(1, round(keep_fraction * s.shape[0]))
        keep = torch.zeros(s.shape[0], dtype=torch.bool)
        keep[torch.topk(s.sum(dim=1), k).indices] = True
        masks[name] = keep[:, None].expand(s.shape).clone()
    return masks
"""

MORE_MUTATIONS = {
    # Part A: the gradients zeroed once at the start, not before each example (and left-over ones kept)
    "fisher_gradients_accumulate": ("empirical_fisher", """
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        model.requires_grad_(True)
        fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in model.named_parameters()}
        for example in examples:
            batch = collate([encode_example(tokenizer, example)], tokenizer.pad_token_id)
            n_target_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            (model(**batch).loss * n_target_tokens).backward()
            for name, p in model.named_parameters():
                if p.grad is not None:
                    fisher[name] += p.grad.float() ** 2
        model.zero_grad()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        return fisher
    """),
    # Part A: the model unfrozen for the backward passes and left that way, its gradients left behind
    "fisher_leaves_model_unfrozen": ("empirical_fisher", """
        model.requires_grad_(True)
        fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in model.named_parameters()}
        for example in examples:
            batch = collate([encode_example(tokenizer, example)], tokenizer.pad_token_id)
            n_target_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            model.zero_grad()
            (model(**batch).loss * n_target_tokens).backward()
            for name, p in model.named_parameters():
                if p.grad is not None:
                    fisher[name] += p.grad.float() ** 2
        return fisher
    """),
    # Part A: the mean loss (per token) squared, not log p of the whole target (the sum)
    "fisher_mean_loss": ("empirical_fisher", """
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        model.requires_grad_(True)
        fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in model.named_parameters()}
        for example in examples:
            batch = collate([encode_example(tokenizer, example)], tokenizer.pad_token_id)
            model.zero_grad()
            model(**batch).loss.backward()
            for name, p in model.named_parameters():
                if p.grad is not None:
                    fisher[name] += p.grad.float() ** 2
        model.zero_grad()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        return fisher
    """),
    # Part B: a threshold at the k-th largest score: every tie at the cut is kept, more than k in all
    "top_k_threshold_ties": ("top_k_mask", """
        flat = torch.cat([s.flatten() for s in scores.values()])
        k = max(1, round(keep_fraction * flat.numel()))
        threshold = torch.topk(flat, k).values.min()
        return {name: s >= threshold for name, s in scores.items()}
    """),
    # Part B: k truncated with int() and no floor of one
    "top_k_int_no_floor": ("top_k_mask", """
        flat = torch.cat([s.flatten() for s in scores.values()])
        k = int(keep_fraction * flat.numel())
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[torch.topk(flat, k).indices] = True
        masks, offset = {}, 0
        for name, s in scores.items():
            masks[name] = keep[offset:offset + s.numel()].view(s.shape)
            offset += s.numel()
        return masks
    """),
    # Part C: the whole model unfrozen so every tensor gets a gradient (the flags are never restored)
    "step_unfreezes_model": ("masked_step", """
        model.requires_grad_(True)
        params = dict(model.named_parameters())
        loss = model(**batch).loss
        loss.backward()
        for name, mask in masks.items():
            params[name].grad.mul_(mask)
        optimizer.step()
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].copy_(torch.where(mask, params[name], reference[name]))
        model.zero_grad(set_to_none=True)
        return float(loss.detach())
    """),
    # Part C: the loss returned is the one after the update (a second forward pass)
    "step_loss_after_update": ("masked_step", """
        params = dict(model.named_parameters())
        model(**batch).loss.backward()
        for name, mask in masks.items():
            if params[name].grad is not None:
                params[name].grad.mul_(mask)
        optimizer.step()
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].copy_(torch.where(mask, params[name], reference[name]))
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        return float(loss)
    """),
    # Part C: the restore done by writing the new weights into the caller's reference first
    "step_writes_reference": ("masked_step", """
        params = dict(model.named_parameters())
        loss = model(**batch).loss
        loss.backward()
        for name, mask in masks.items():
            if params[name].grad is not None:
                params[name].grad.mul_(mask)
        optimizer.step()
        with torch.no_grad():
            for name, mask in masks.items():
                reference[name][mask] = params[name][mask]
                params[name].copy_(reference[name])
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
    """),
    # Part D: isclose where the spec asks for exact inequality (a change of one ulp is missed)
    "difference_isclose": ("sparse_difference", """
        diff = {}
        for name, p in model.named_parameters():
            new, old = p.detach().flatten(), base_state[name].flatten()
            indices = (~torch.isclose(new, old)).nonzero().flatten()
            if indices.numel():
                diff[name] = (indices, new[indices].clone())
        return diff
    """),
    # Part D: only the trainable parameters compared (a frozen tensor that changed is missed)
    "difference_trainable_only": ("sparse_difference", """
        diff = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            new, old = p.detach().flatten(), base_state[name].flatten()
            indices = (new != old).nonzero().flatten()
            if indices.numel():
                diff[name] = (indices, new[indices].clone())
        return diff
    """),
    # Part E: the mean of a row where the spec says the sum (narrow matrices win)
    "row_mean": ("row_mask", """
        matrices = {name: s for name, s in scores.items() if s.dim() == 2}
        kept_rows = top_k_mask({name: s.mean(dim=1) for name, s in matrices.items()}, keep_fraction)
        return {name: kept_rows[name][:, None].expand(s.shape).clone() if name in kept_rows
                else torch.zeros(s.shape, dtype=torch.bool) for name, s in scores.items()}
    """),
    # Part E: 1-D tensors (biases) ranked as rows of one weight each
    "row_counts_biases": ("row_mask", """
        as_rows = {name: s.sum(dim=1) if s.dim() == 2 else s.flatten() for name, s in scores.items()}
        kept_rows = top_k_mask(as_rows, keep_fraction)
        return {name: kept_rows[name][:, None].expand(s.shape).clone() if s.dim() == 2 else kept_rows[name].view(s.shape)
                for name, s in scores.items()}
    """),
}

DELEGATIONS = {
    "empirical_fisher": """
        return sparse.fisher_information(model, tokenizer, examples)
    """,
    "top_k_mask": """
        return sparse.top_k_mask(scores, keep_fraction)
    """,
    "masked_step": """
        if sparse.get_mask_hook(model) is None:
            sparse.apply_mask(model, masks)
        hook = sparse.get_mask_hook(model)
        loss = model(**batch).loss
        loss.backward()
        hook.before_step(model, 0, optimizer)
        optimizer.step()
        hook.after_step(model, 0, optimizer)
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
    """,
    "sparse_difference": """
        return {name: (indices.long(), values) for name, (indices, values) in sparse.sparse_difference(model, base_state).items()}
    """,
    "row_mask": None,  # peftlab has no structured (row) mask to call: Part E is new
}
