"""Planted mistakes for assignment a02, read by ``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker). Each is a mistake a student would make, and each fails every test cell of its part.
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
}
