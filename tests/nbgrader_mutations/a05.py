"""Planted mistakes for assignment a05, read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker). Each is a mistake a student would make, and each fails every test cell of its part.

``MORE_MUTATIONS`` holds further plausible mistakes, name -> (answer grade_id, body): each is graded
as its own student and must lose the points of that answer's part and only those.

``DELEGATIONS`` maps each answer cell to a body that calls peftlab's implementation instead of
writing it (the hidden tests switch those functions off, so it must lose the part's points).
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
    # Part D: stack the layers' keys first, then their values (the layout Part B's mistake reads)
    "prefix_from_tokens": """
        with torch.no_grad():
            out = model(input_ids=token_ids.view(1, -1), use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        keys = torch.stack([layer.keys[0] for layer in cache.layers])  # (L, H, P, D)
        values = torch.stack([layer.values[0] for layer in cache.layers])
        kv = torch.stack([keys, values])  # (2, L, H, P, D)
        return kv.permute(3, 0, 1, 2, 4).reshape(token_ids.numel(), -1).float().clone()
    """,
}

_PROMPT = """
    n_virtual = prompt.shape[0]
    batch_size = input_ids.shape[0]
    embeds = model.get_input_embeddings()(input_ids)
    inputs_embeds = torch.cat([PROMPT.expand(batch_size, -1, -1), embeds], dim=1)
    attention_mask = torch.cat([torch.FILL(batch_size, n_virtual, dtype=attention_mask.dtype), attention_mask], dim=1)
    if labels is not None:
        labels = torch.cat([torch.full((batch_size, n_virtual), LABEL, dtype=labels.dtype), labels], dim=1)
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels)
    return out.logits[:, n_virtual:], out.loss
"""


def _prompt(fill="ones", label="IGNORE_INDEX", prompt="prompt"):
    return _PROMPT.replace("FILL", fill).replace("LABEL", label).replace("PROMPT", prompt)


MORE_MUTATIONS = {
    # Part A: the prompt masked out (zeros in front of the attention mask): the model never sees it
    "prompt_masked_out": ("prompt_tuning_forward", _prompt(fill="zeros")),
    # Part A: the prompt positions labelled with token 0 instead of -100: loss on the prompt
    "prompt_positions_labelled": ("prompt_tuning_forward", _prompt(label="0")),
    # Part A: the prompt detached: no gradient reaches it
    "prompt_detached": ("prompt_tuning_forward", _prompt(prompt="prompt.detach()")),
    # Part B: heads and dims swapped in the view (the right shapes, the numbers in the wrong places)
    "split_head_dim_swapped": ("split_prefix", """
        n_virtual = flat.shape[0]
        kv = flat.view(n_virtual, n_layers, 2, head_dim, n_kv_heads).permute(1, 2, 4, 0, 3)
        return [(kv[layer, 0].expand(batch_size, -1, -1, -1), kv[layer, 1].expand(batch_size, -1, -1, -1))
                for layer in range(n_layers)]
    """),
    # Part B: detached from flat: no gradient reaches the prefix
    "split_detached": ("split_prefix", """
        n_virtual = flat.shape[0]
        kv = flat.detach().view(n_virtual, n_layers, 2, n_kv_heads, head_dim).permute(1, 2, 3, 0, 4)
        return [(kv[layer, 0].expand(batch_size, -1, -1, -1), kv[layer, 1].expand(batch_size, -1, -1, -1))
                for layer in range(n_layers)]
    """),
    # Part C: head_dim read without handling None
    "count_head_dim_none": ("virtual_token_parameters", """
        n_heads = config.num_attention_heads
        n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
        head_dim = getattr(config, "head_dim", config.hidden_size // n_heads)
        return {"prompt": n_virtual * config.hidden_size,
                "prefix": n_virtual * config.num_hidden_layers * 2 * n_kv_heads * head_dim}
    """),
    # Part D: the positions of the written tokens and heads mixed up (per token [all heads' keys of layer 0, ...] by D first)
    "tokens_wrong_permute": ("prefix_from_tokens", """
        with torch.no_grad():
            out = model(input_ids=token_ids.view(1, -1), use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])  # (L, 2, H, P, D)
        return kv.permute(3, 0, 1, 4, 2).reshape(token_ids.numel(), -1).float().clone()
    """),
}

DELEGATIONS = {
    "prompt_tuning_forward": """
        wrapper = pprefix.PromptTuningModel(model, pprefix.PromptConfig(num_virtual_tokens=prompt.shape[0]))
        del wrapper.prompt
        wrapper.prompt = prompt
        out = wrapper(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return out.logits, out.loss
    """,
    "split_prefix": """
        class Holder:
            pass
        holder = Holder()
        holder.prefix_config = pprefix.PrefixConfig(num_virtual_tokens=flat.shape[0])
        holder.base_model = torch.nn.Linear(1, 1)
        holder.n_layers, holder.n_kv_heads, holder.head_dim = n_layers, n_kv_heads, head_dim
        holder.flat_prefix = lambda: flat
        return pprefix.PrefixTuningModel.prefix_key_values(holder, batch_size)
    """,
    "virtual_token_parameters": """
        model = LlamaForCausalLM(config) if isinstance(config, LlamaConfig) else GPT2LMHeadModel(config)
        n_layers, n_kv_heads, head_dim = pprefix.kv_shape(model)
        return {"prompt": n_virtual * config.hidden_size, "prefix": n_virtual * n_layers * 2 * n_kv_heads * head_dim}
    """,
    # peftlab's own token initialisation (PrefixTuningModel with init="tokens") draws its tokens at random:
    # nothing in peftlab answers for given tokens (the hidden tests switch PrefixTuningModel off all the same)
    "prefix_from_tokens": None,
}
