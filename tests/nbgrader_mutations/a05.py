"""Planted mistakes for assignment a05, read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker). Each is a mistake a student would make, and each fails every test cell of its part.
"""

MUTATIONS = {
    # Part A: forget to drop the prompt positions: logits no longer line up with input_ids
    "prompt_tuning_forward": """
        n_virtual = prompt.shape[0]
        batch_size = input_ids.shape[0]
        embeds = model.get_input_embeddings()(input_ids)
        inputs_embeds = torch.cat([prompt.expand(batch_size, -1, -1), embeds], dim=1)
        ones = torch.ones(batch_size, n_virtual, dtype=attention_mask.dtype)
        attention_mask = torch.cat([ones, attention_mask], dim=1)
        if labels is not None:
            labels = torch.cat([torch.full((batch_size, n_virtual), IGNORE_INDEX), labels], dim=1)
        out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels)
        return out.logits, out.loss
    """,
    # Part B: read the flat layout as (P, 2, L, H, D): keys of every layer first, then values
    "split_prefix": """
        n_virtual = flat.shape[0]
        kv = flat.view(n_virtual, 2, n_layers, n_kv_heads, head_dim).permute(2, 1, 3, 0, 4)
        return [(kv[layer, 0].expand(batch_size, -1, -1, -1), kv[layer, 1].expand(batch_size, -1, -1, -1))
                for layer in range(n_layers)]
    """,
    # Part C: size the prefix by the attention heads, forgetting grouped-query attention
    "virtual_token_parameters": """
        return {"prompt": n_virtual * config.hidden_size,
                "prefix": n_virtual * config.num_hidden_layers * 2 * config.hidden_size}
    """,
}
