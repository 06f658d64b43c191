"""Where the bytes of a training step go: an analytic estimator, checked against a measured probe.

One training step holds five kinds of bytes on the device:

    weights + gradients + fp32 master weights + optimizer state + activations (saved for backward)

The first four are *bytes per parameter* times a parameter count (Rajbhandari et al. 2020, "ZeRO:
Memory Optimizations Toward Training Trillion Parameter Models": mixed-precision Adam needs
2 + 2 + K bytes per parameter with K = 12, i.e. 16 B/param). Activations scale with
batch x sequence and come from the model's shape (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", count them per layer; here we count what PyTorch and
Hugging Face ``transformers`` actually keep, term by term).

The package, one job per file, in reading order (every name is re-exported here, so
``from peftlab import memory; memory.estimate(...)`` is all a lecture needs):

- ``regimes``: bytes per parameter (``bytes_per_param``: fp32; pure fp16/bf16; mixed precision with
  fp32 master weights and states; 8-bit AdamW states), ``NF4_BYTES_PER_PARAM``, ``claimed_totals``;
- ``breakdown``: ``MemoryBreakdown``, the one result type the estimator and the probe both return,
  printed side by side with ``side_by_side``;
- ``shapes``: ``ModelShape`` / ``PRESETS`` / ``parameter_count``: parameter counts from a Hugging Face
  config alone (analytic, and on the ``meta`` device), for the tiny base up to GPT-3 175B;
- ``activations``: ``activation_terms`` / ``activation_bytes``, the fifth bucket;
- ``estimate``: ``estimate_memory`` (the parameter buckets from counts, ZeRO stages 1/2/3 over N
  devices), ``method_counts`` (from each method's declared ``Sizing``) and ``estimate(model, method, ...)``,
  the whole step;
- ``probe``: ``probe_training_step`` (one real step, bytes counted tensor by tensor; on CUDA,
  ``torch.cuda.max_memory_allocated``), ``measure_training_memory``, ``optimizer_state_bytes``
  (the one count of an optimizer's state bytes), ``weight_bytes``, ``adamw_8bit``;
- ``fit``: ``GPUS`` / ``will_it_fit`` / ``plot_will_it_fit``: presets x methods x GPUs;
- ``widget``: ``calculator()``, the ipywidgets memory calculator, and ``plot_breakdown``.
"""
from __future__ import annotations

from .activations import ActivationTerm, activation_bytes, activation_terms
from .breakdown import BUCKETS, MemoryBreakdown, save_json, side_by_side
from .estimate import MethodCounts, Sizing, estimate, estimate_memory, method_counts, sized_methods
from .fit import FIT_MARGIN, GPU, GPUS, fit_verdict, format_fit_table, plot_will_it_fit, will_it_fit
from .probe import adamw_8bit, measure_training_memory, optimizer_state_bytes, probe_training_step, weight_bytes
from .regimes import (ADAM8BIT_STATE_BYTES, GB, NF4_BITS_PER_PARAM, NF4_BYTES_PER_PARAM, OPTIMIZERS, PRECISIONS,
                      BytesPerParam, GiB, OptimizerSpec, Precision, bytes_per_param, claimed_totals)
from .shapes import LLAMA_FAMILY, PRESETS, PUBLISHED_PARAMETERS, ModelShape, parameter_count, parameter_count_meta, preset_config

__all__ = [
    "ADAM8BIT_STATE_BYTES", "BUCKETS", "FIT_MARGIN", "GB", "GPU", "GPUS", "GiB", "LLAMA_FAMILY",
    "NF4_BITS_PER_PARAM", "NF4_BYTES_PER_PARAM", "OPTIMIZERS", "PRECISIONS", "PRESETS",
    "PUBLISHED_PARAMETERS", "ActivationTerm", "BytesPerParam", "MemoryBreakdown", "MethodCounts",
    "Sizing", "ModelShape", "OptimizerSpec", "Precision", "activation_bytes", "activation_terms", "adamw_8bit",
    "bytes_per_param", "claimed_totals", "estimate", "estimate_memory", "fit_verdict", "format_fit_table",
    "measure_training_memory", "method_counts", "optimizer_state_bytes", "parameter_count", "parameter_count_meta",
    "plot_will_it_fit", "preset_config", "probe_training_step", "save_json", "side_by_side", "sized_methods", "weight_bytes",
    "will_it_fit",
]
