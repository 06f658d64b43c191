"""peftlab: full fine-tuning vs parameter-efficient fine-tuning, built from scratch and measured.

Every module, by job (the README has the same map):

The world and the base:
- ``world.py``: the tiny world: invented people, target tasks with train/validation/test splits, English text
- ``models.py``: ``load_base``: the embedded tiny base, hub names, SmolLM2 offline from a GGUF file
- ``pretrain.py``: re-creates the tiny base (tokenizer and weights) from the world
- ``realworld.py``: SmolLM2's source knowledge: the fact probe, held-out English, the next models to try
- ``data.py``: tokenizing examples, batches with the prompt masked, replay of source data

Training and measuring:
- ``train.py``: the one training loop (hooks, schedule, mixed precision); it knows no method
- ``state.py``: ``PeftState``: the one place a method keeps its state on a model, found through DDP/FSDP wrappers
- ``evaluate.py``: target metrics, source recall, perplexity; learning and forgetting
- ``compare.py``: every method on one task at one budget (``CompareConfig``), through the registry only
- ``sweep.py``: learning-rate x seed sweeps written as resumable JSON lines
- ``analysis.py``: means with confidence intervals, Pareto frontiers, forgetting at matched learning
- ``spectral.py``: the rank of a fine-tuning update (energy rank), beside a random matrix's
- ``plots.py``: the figures of the lectures and the README
- ``claims/__init__.py``: the claims ledger of lecture 13: each common claim, its experiment and its verdict rule
- ``claims/core.py``: a verdict, a ledger row, the committed slow results (``claims_results.json``)
- ``claims/arithmetic.py``: rows settled by arithmetic and counting (memory, storage, low rank, prefixes, families)
- ``claims/measured.py``: rows read from committed measurements (the sweep, latency, AdapterFusion)

The methods (methods/):
- ``methods/__init__.py``: the registry and the contract every method keeps (``apply_method``, ``RunContext``,
  ``remove_method``, ``trainable_count``)
- ``methods/targets.py``: choosing layers by name, swapping modules, the output head, norms
- ``methods/full.py``: full fine-tuning, its regularized variants, and the untouched base
- ``methods/lowrank.py``: ``LowRankLayer``: what LoRA, AdaLoRA and QLoRA layers share (checks, layout, dtype, merge)
- ``methods/lora.py``: LoRA, and peft's adapter format both ways
- ``methods/adapters.py``: bottleneck adapters: Houlsby and Pfeiffer placements
- ``methods/prefix.py``: prefix tuning and prompt tuning (wrappers)
- ``methods/bitfit.py``: BitFit, including models without biases
- ``methods/sparse.py``: sparse fine-tuning: the Fisher mask, the random mask, sparse differences
- ``methods/qlora.py``: QLoRA: 4-bit frozen base (``Linear4bit``) plus LoRA
- ``methods/adalora.py``: AdaLoRA: SVD-shaped updates and the rank allocator
- ``methods/fusion.py``: AdapterFusion: task adapters (cached in the user's cache directory) and the fusion layers

Quantization and kernels:
- ``quant.py``: NF4 / FP4 / INT4 block-wise quantization and double quantization, as bitsandbytes stores them
- ``kernels/nf4.py``: dequantization and the QLoRA forward: PyTorch references and the dispatch
- ``kernels/nf4_triton.py``: the Triton kernels (imported only when a Triton path runs)

Memory (memory/):
- ``memory/regimes.py``: bytes per parameter in each precision and optimizer regime
- ``memory/breakdown.py``: ``MemoryBreakdown``, the result type of the estimator and the probe
- ``memory/shapes.py``: model shapes and parameter counts from a config alone (presets up to GPT-3)
- ``memory/activations.py``: the activations autograd keeps, term by term
- ``memory/estimate.py``: the estimator: ZeRO stages, the method presets, the whole step
- ``memory/probe.py``: the measured probe of one real step, and the one optimizer-state byte count
- ``memory/fit.py``: will it fit: presets x methods x GPUs
- ``memory/widget.py``: the ipywidgets memory calculator (``memory_widget.py`` keeps the old import working)

Beyond one device:
- ``distributed.py``: DDP and FSDP2 under torchrun: the same loop, checked against one process
- ``distributed_bytes.py``: the bytes each rank holds, beside the estimator's per-rank figures

Course tooling:
- ``cli.py``: ``python -m peftlab ...`` (``__main__.py`` runs it)
- ``grading.py``: the assignments' locked-cell helpers: warnings to stdout, captured checks, peftlab switched off
- ``grading_preprocessors.py``: nbgrader preprocessors used at autograde time
- ``release.py``: the student repository: lectures, exercises and package without solutions
- ``site.py``: the course website; ``site_render.py`` (pages), ``site_leaks.py`` (no solution published),
  ``site_chromium.py`` (screenshots)
- ``colab.py``: the Colab set-up cell of every notebook
- ``utils.py``: device, seeding, parameter counts, bytes, lookups: shared by everything

"""
from .evaluate import Evaluation, evaluate_model, learning_and_forgetting, source_metrics, task_metric
from .methods import METHODS, RunContext, apply_method, get_method, register, remove_method, trainable_count
from .models import load_base
from .train import Hook, TrainConfig, TrainResult, attach_hook, train
from .utils import count_parameters, format_bytes, get_device, is_quick, print_environment, set_seed, warm_up_cpu_math

warm_up_cpu_math()

__version__ = "0.1.0"

__all__ = [
    "METHODS", "Evaluation", "Hook", "RunContext", "TrainConfig", "TrainResult", "apply_method", "attach_hook",
    "count_parameters", "evaluate_model", "format_bytes", "get_device", "get_method", "is_quick",
    "learning_and_forgetting", "load_base", "print_environment", "register", "remove_method", "set_seed", "source_metrics",
    "task_metric", "train", "trainable_count",
]
