"""Planted mistakes for assignment a01, read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker). Each is a mistake a student would make, and each fails every test cell of its part.

``MORE_MUTATIONS`` holds further plausible mistakes, name -> (answer grade_id, body): each is graded
as its own student and must lose the points of that answer's part and only those.

``DELEGATIONS`` maps each answer cell to a body that calls peftlab's implementation instead of
writing it (the hidden tests switch those functions off, so it must lose the part's points), or to
None where peftlab has no function that answers the cell.
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
    # Part F: average the micro-batch losses with equal weights (right only when token counts are equal)
    "accumulated_step": """
        total_loss = 0.0
        for batch in micro_batches:
            loss = model(**batch).loss / len(micro_batches)
            loss.backward()
            total_loss += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total_loss
    """,
}

MORE_MUTATIONS = {
    # Part A: the mean of each row's mean (rows with unequal token counts weigh the same)
    "loss_mean_of_row_means": ("causal_lm_loss", """
        shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
        per_token = F.cross_entropy(shifted_logits.transpose(1, 2).float(), shifted_labels, ignore_index=-100,
                                    reduction="none")
        counted = (shifted_labels != -100).sum(1)
        rows = counted > 0
        return (per_token.sum(1)[rows] / counted[rows]).mean()
    """),
    # Part B: count the state dict, so the tied head is counted twice and frozen tensors too
    "count_state_dict": ("count_trainable", """
        return sum(t.numel() for name, t in model.state_dict().items())
    """),
    # Part C: unfreeze the whole model before the step (a frozen model trains, frozen tensors keep gradients)
    "train_step_unfreezes": ("train_step", """
        model.requires_grad_(True)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
    """),
    # Part C: clip the gradient norm as Lecture 01's loop does (the spec says no clipping)
    "train_step_clips": ("train_step", """
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
    """),
    # Part C: return the loss computed after the update
    "train_step_loss_after": ("train_step", """
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            return float(model(**batch).loss)
    """),
    # Part D: write the result into the caller's dict
    "forgetting_overwrites_before": ("forgetting", """
        for name in list(before):
            before[name] = after[name] - before[name] if name in lower_is_better else before[name] - after[name]
        return before
    """),
    # Part F: the right weights, but gradients left in .grad after the step
    "accumulate_leaves_grads": ("accumulated_step", """
        counted = [int((batch["labels"][:, 1:] != -100).sum()) for batch in micro_batches]
        total_loss = 0.0
        for batch, n_counted in zip(micro_batches, counted):
            loss = model(**batch).loss * (n_counted / sum(counted))
            loss.backward()
            total_loss += float(loss.detach())
        optimizer.step()
        return total_loss
    """),
    # Part F: a micro-batch's counted tokens taken over every label position, not the positions whose next label
    # counts (the same count while every micro-batch masks position 0; wrong for one without a prompt)
    "accumulate_counts_every_position": ("accumulated_step", """
        model.train()
        counted = [int((batch["labels"] != -100).sum()) for batch in micro_batches]
        total_counted = sum(counted)
        total_loss = 0.0
        for batch, n_counted in zip(micro_batches, counted):
            loss = model(**batch).loss * (n_counted / total_counted)
            loss.backward()
            total_loss += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total_loss
    """),
}

DELEGATIONS = {
    # peftlab has no standalone causal-LM loss: the closest borrowing is transformers' own, switched off too
    "causal_lm_loss": """
        from transformers.loss.loss_utils import ForCausalLMLoss
        return ForCausalLMLoss(logits, labels, vocab_size=logits.size(-1))
    """,
    "count_trainable": """
        return peftlab.count_parameters(model).trainable
    """,
    # peftlab has no single-step function: its training loop, peftlab.train, needs a tokenizer and examples
    "train_step": None,
    "forgetting": """
        out = learning_and_forgetting(Evaluation(target=0.0, source=before), Evaluation(target=0.0, source=after))
        return {name: out[f"forgetting_{name}"] for name in before}
    """,
    "adamw_fp32_bytes": """
        from peftlab import memory
        per = memory.bytes_per_param("fp32", "adamw")
        return {"weights": int(per.weights * n_params), "gradients": int(per.gradients * n_params),
                "optimizer_state": int(per.optimizer * n_params), "total": int(per.total * n_params)}
    """,
    # peftlab's training loop has no gradient accumulation
    "accumulated_step": None,
}
