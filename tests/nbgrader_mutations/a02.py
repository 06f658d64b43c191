"""Planted mistakes for assignment a02, read by ``tests/test_nbgrader.py``.

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
    # Part A: AdamW keeps one state per parameter instead of two
    "bytes_per_param": """
        weight, gradient, master, state = {"fp32": (4, 4, 0, 4), "bf16": (2, 2, 0, 2), "mixed": (2, 2, 4, 4),
                                           "nf4": (0.5, 0, 0, 0)}[precision]
        if not trainable:
            return {"weights": weight, "gradients": 0, "master": 0, "optimizer": 0, "total": weight}
        optimizer_bytes = {"sgd": 0, "sgd-momentum": 1, "adamw": 1, "adamw8bit": 1}[optimizer] * state
        return {"weights": weight, "gradients": gradient, "master": master, "optimizer": optimizer_bytes,
                "total": weight + gradient + master + optimizer_bytes}
    """,
    # Part B: forget that the SiLU output is kept too (only the gate and up outputs)
    "llama_layer_activation_bytes": """
        tokens = batch * seq
        norms = 2 * tokens * (hidden + 1 + hidden)
        matrix_inputs = tokens * (hidden + hidden + hidden + intermediate)
        qkv = 3 * tokens * hidden
        mlp = 2 * tokens * intermediate  # gate output, up output
        core = tokens * heads if attention == "sdpa" else batch * heads * seq * seq
        return 4 * (norms + matrix_inputs + qkv + mlp + core)
    """,
    # Part C: off by one: return the first batch that no longer fits
    "largest_batch": """
        batch = 1
        while memory.fit_verdict(memory.estimate(model, method, batch=batch, seq=seq,
                                                 checkpointing=checkpointing).total, gpu) == "fits":
            batch += 1
        return batch
    """,
    # Part D: each stage shards only its own bucket (== instead of >=)
    "zero_bytes_per_device": """
        weights, gradients, optimizer_state = 2 * n_params, 2 * n_params, 12 * n_params
        if stage == 1:
            optimizer_state /= n_devices
        if stage == 2:
            gradients /= n_devices
        if stage == 3:
            weights /= n_devices
        return {"weights": weights, "gradients": gradients, "optimizer": optimizer_state,
                "total": weights + gradients + optimizer_state}
    """,
    # Part E: frozen and 4-bit weights sharded from stage 1 on (as if they were optimizer state)
    "zero_peft_bytes_per_device": """
        nf4_bytes = (4 + 8 / 64 + 32 / (64 * 256)) / 8
        weights = 2 * (trainable + frozen) + nf4_bytes * quantized
        gradients, optimizer_state = 2 * trainable, 12 * trainable
        if stage >= 1:
            optimizer_state /= n_devices
            weights = 2 * trainable + (2 * frozen + nf4_bytes * quantized) / n_devices
        if stage >= 2:
            gradients /= n_devices
        if stage >= 3:
            weights = (2 * (trainable + frozen) + nf4_bytes * quantized) / n_devices
        return {"weights": weights, "gradients": gradients, "optimizer": optimizer_state,
                "total": weights + gradients + optimizer_state}
    """,
}

MORE_MUTATIONS = {
    # Part A: 8-bit AdamW without its block scales (1 byte per state, not 1 + 4/256)
    "adam8bit_no_scales": ("bytes_per_param", """
        regimes = {"fp32": (4, 4, 0, 4), "bf16": (2, 2, 0, 2), "mixed": (2, 2, 4, 4)}
        if precision == "nf4":
            if trainable:
                raise ValueError("nf4 is frozen only")
            return {"weights": 4.127 / 8, "gradients": 0, "master": 0, "optimizer": 0, "total": 4.127 / 8}
        weight, gradient, master, state = regimes[precision]
        if not trainable:
            return {"weights": weight, "gradients": 0, "master": 0, "optimizer": 0, "total": weight}
        if optimizer == "adamw8bit":
            state = 1
        optimizer_bytes = {"sgd": 0, "sgd-momentum": 1, "adamw": 2, "adamw8bit": 2}[optimizer] * state
        return {"weights": weight, "gradients": gradient, "master": master, "optimizer": optimizer_bytes,
                "total": weight + gradient + master + optimizer_bytes}
    """),
    # Part A: a frozen mixed-precision parameter keeps its fp32 master copy
    "frozen_keeps_master": ("bytes_per_param", """
        regimes = {"fp32": (4, 4, 0, 4), "bf16": (2, 2, 0, 2), "mixed": (2, 2, 4, 4)}
        if precision == "nf4":
            if trainable:
                raise ValueError("nf4 is frozen only")
            weight = (4 + 8 / 64 + 32 / (64 * 256)) / 8
            return {"weights": weight, "gradients": 0, "master": 0, "optimizer": 0, "total": weight}
        weight, gradient, master, state = regimes[precision]
        if not trainable:
            return {"weights": weight, "gradients": 0, "master": master, "optimizer": 0, "total": weight + master}
        if optimizer == "adamw8bit":
            state = 1 + 4 / 256
        optimizer_bytes = {"sgd": 0, "sgd-momentum": 1, "adamw": 2, "adamw8bit": 2}[optimizer] * state
        return {"weights": weight, "gradients": gradient, "master": master, "optimizer": optimizer_bytes,
                "total": weight + gradient + master + optimizer_bytes}
    """),
    # Part B: eager attention's probabilities counted per sequence, not per head
    "eager_forgets_heads": ("llama_layer_activation_bytes", """
        tokens = batch * seq
        norms = 2 * tokens * (hidden + 1 + hidden)
        matrix_inputs = tokens * (hidden + hidden + hidden + intermediate)
        qkv = 3 * tokens * hidden
        mlp = 3 * tokens * intermediate
        core = tokens * heads if attention == "sdpa" else batch * seq * seq
        return 4 * (norms + matrix_inputs + qkv + mlp + core)
    """),
    # Part C: Lecture 02's helper, capped at 64
    "largest_batch_capped": ("largest_batch", """
        best = 0
        for batch in range(1, 65):
            step = memory.estimate(model, method, batch=batch, seq=seq, checkpointing=checkpointing)
            if memory.fit_verdict(step.total, gpu) != "fits":
                break
            best = batch
        return best
    """),
    # Part C: "tight" counted as fitting
    "largest_batch_tight": ("largest_batch", """
        def fits(batch):
            step = memory.estimate(model, method, batch=batch, seq=seq, checkpointing=checkpointing)
            return memory.fit_verdict(step.total, gpu) != "no"

        if not fits(1):
            return 0
        low, high = 1, 2
        while fits(high):
            low, high = high, 2 * high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low
    """),
    # Part D: stage 3 shards the weights but forgets that stages 1-2 stay sharded
    "zero_stage3_only_weights": ("zero_bytes_per_device", """
        weights, gradients, optimizer_state = 2 * n_params, 2 * n_params, 12 * n_params
        if stage in (1, 2):
            optimizer_state /= n_devices
        if stage == 2:
            gradients /= n_devices
        if stage == 3:
            weights /= n_devices
        return {"weights": weights, "gradients": gradients, "optimizer": optimizer_state,
                "total": weights + gradients + optimizer_state}
    """),
    # Part E: gradients and optimizer state counted for every parameter, frozen ones included
    "peft_frozen_have_state": ("zero_peft_bytes_per_device", """
        nf4_bytes = (4 + 8 / 64 + 32 / (64 * 256)) / 8
        n = trainable + frozen + quantized
        weights = 2 * (trainable + frozen) + nf4_bytes * quantized
        gradients, optimizer_state = 2 * n, 12 * n
        if stage >= 1:
            optimizer_state /= n_devices
        if stage >= 2:
            gradients /= n_devices
        if stage >= 3:
            weights /= n_devices
        return {"weights": weights, "gradients": gradients, "optimizer": optimizer_state,
                "total": weights + gradients + optimizer_state}
    """),
    # Part E: 4-bit weights counted as half a byte, without their scales
    "peft_nf4_half_byte": ("zero_peft_bytes_per_device", """
        weights = 2 * (trainable + frozen) + 0.5 * quantized
        gradients, optimizer_state = 2 * trainable, 12 * trainable
        if stage >= 1:
            optimizer_state /= n_devices
        if stage >= 2:
            gradients /= n_devices
        if stage >= 3:
            weights /= n_devices
        return {"weights": weights, "gradients": gradients, "optimizer": optimizer_state,
                "total": weights + gradients + optimizer_state}
    """),
}

DELEGATIONS = {
    "bytes_per_param": """
        if precision == "nf4":
            if trainable:
                raise ValueError("nf4 is frozen only")
            return {"weights": memory.NF4_BYTES_PER_PARAM, "gradients": 0, "master": 0, "optimizer": 0,
                    "total": memory.NF4_BYTES_PER_PARAM}
        ref = memory.bytes_per_param(precision, optimizer)
        if not trainable:
            return {"weights": ref.weights, "gradients": 0, "master": 0, "optimizer": 0, "total": ref.weights}
        return {"weights": ref.weights, "gradients": ref.gradients, "master": ref.master,
                "optimizer": ref.optimizer, "total": ref.total}
    """,
    "llama_layer_activation_bytes": """
        from transformers import LlamaConfig
        config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                             num_attention_heads=heads, num_key_value_heads=heads, vocab_size=64)
        shape = memory.ModelShape.from_config(config)
        return int(sum(t.bytes for t in memory.activation_terms(shape, batch, seq, attention=attention)
                       if t.per_layer))
    """,
    # peftlab has no largest-batch search: the part asks to search with memory.estimate and memory.fit_verdict
    "largest_batch": None,
    "zero_bytes_per_device": """
        ref = memory.estimate_memory(n_params, precision="mixed", zero_stage=stage, n_devices=n_devices)
        return {"weights": ref.weights, "gradients": ref.gradients, "optimizer": ref.master + ref.optimizer,
                "total": ref.total}
    """,
    "zero_peft_bytes_per_device": """
        ref = memory.estimate_memory(trainable, frozen, quantized, precision="mixed", zero_stage=stage, n_devices=n_devices)
        return {"weights": ref.weights, "gradients": ref.gradients, "optimizer": ref.master + ref.optimizer,
                "total": ref.total}
    """,
}
