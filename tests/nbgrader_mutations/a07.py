"""Planted mistakes for assignment a07 (sparse fine-tuning with a Fisher mask), read by
``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker; in a cell with two functions, the first one's). Each is a mistake a student would make,
and each fails every test cell of its part.
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
