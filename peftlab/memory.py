"""Where the bytes of a training step go: an analytic estimator, checked against a measured probe.

One training step holds five kinds of bytes on the device:

    weights + gradients + fp32 master weights + optimizer state + activations (saved for backward)

The first four are *bytes per parameter* times a parameter count (Rajbhandari et al. 2020, "ZeRO:
Memory Optimizations Toward Training Trillion Parameter Models": mixed-precision Adam needs
2 + 2 + K bytes per parameter with K = 12, i.e. 16 B/param). Activations scale with
batch x sequence and come from the model's shape (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", count them per layer; here we count what PyTorch and
Hugging Face ``transformers`` actually keep, term by term, see ``activation_terms``).

The pieces:

- ``bytes_per_param(precision, optimizer)``: the regimes (fp32; pure fp16/bf16; mixed precision with
  fp32 master weights and states; 8-bit AdamW states) and ``NF4_BYTES_PER_PARAM`` for 4-bit frozen weights;
- ``estimate_memory(trainable, frozen, quantized, ...)``: the four parameter buckets from counts, with
  ZeRO stages 1/2/3 over N devices; ``activation_bytes(shape, batch, seq, ...)`` for the fifth;
- ``ModelShape`` / ``PRESETS`` / ``parameter_count``: parameter counts from a Hugging Face config alone
  (analytic, and on the ``meta`` device, no weights), for the tiny base up to GPT-3 175B;
- ``estimate(model, method, ...)``: the whole step for a preset and a method by name (full, lora, qlora, ...);
- ``probe_training_step(model, batch, optimizer)``: one real step, bytes counted tensor by tensor
  (saved activations via ``torch.autograd.graph.saved_tensors_hooks``, each storage once) and, on
  CUDA, ``torch.cuda.max_memory_allocated``; ``measure_training_memory`` wraps it for the comparison;
- ``MemoryBreakdown``: the one result type both return, printed side by side with ``side_by_side``;
- ``GPUS`` / ``will_it_fit`` / ``plot_will_it_fit``: presets x methods x GPUs.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .utils import format_bytes

GB = 10**9  # what the seed claims and GPU spec sheets call a gigabyte
GiB = 1024**3  # what the GPU actually has ("24 GB" on an RTX 3090 is 24 GiB)

# --------------------------------------------------------------------------------------------------
# Bytes per parameter
# --------------------------------------------------------------------------------------------------

#: NF4 with double quantization (QLoRA, Dettmers et al. 2023): 4 bits per weight, plus one 8-bit
#: absmax per block of 64 weights, plus one fp32 scale per block of 256 of those absmax values.
NF4_BITS_PER_PARAM = 4 + 8 / 64 + 32 / (64 * 256)  # 4.127 bits
NF4_BYTES_PER_PARAM = NF4_BITS_PER_PARAM / 8


@dataclass(frozen=True)
class Precision:
    name: str
    weight: int  # bytes of each weight the forward pass reads
    grad: int  # bytes of each gradient
    master: int  # bytes of an extra fp32 copy of each trainable weight (mixed precision only)
    state: int  # bytes of each 32-bit-optimizer state value (momentum, variance)
    activation: int  # bytes of each activation value kept for backward
    help: str


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", 4, 4, 0, 4, 4, "everything in fp32"),
    "fp16": Precision("fp16", 2, 2, 0, 2, 2, "pure fp16: weights, gradients and optimizer states in 16 bits"),
    "bf16": Precision("bf16", 2, 2, 0, 2, 2, "pure bf16: weights, gradients and optimizer states in 16 bits"),
    "mixed": Precision("mixed", 2, 2, 4, 4, 2,
                       "mixed precision (ZeRO/Megatron): 16-bit weights and gradients, fp32 master weights and states"),
}


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    states: int  # state values per trainable parameter
    state_bytes: float | None  # fixed bytes per state value (8-bit), or None: the precision's
    help: str


#: 8-bit AdamW (bitsandbytes): each state is 1 byte plus one fp32 absmax per block of 256 values.
#: (bitsandbytes keeps 32-bit states for tensors under 4096 values; the estimator, which sees only
#: counts, ignores that.)
ADAM8BIT_STATE_BYTES = 1 + 4 / 256

OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("sgd", 0, None, "plain SGD: no state"),
    "sgd-momentum": OptimizerSpec("sgd-momentum", 1, None, "SGD with momentum: one buffer"),
    "adam": OptimizerSpec("adam", 2, None, "Adam: first and second moments"),
    "adamw": OptimizerSpec("adamw", 2, None, "AdamW: first and second moments"),
    "adamw8bit": OptimizerSpec("adamw8bit", 2, ADAM8BIT_STATE_BYTES, "8-bit AdamW: two 1-byte states + block scales"),
}


def _lookup(table: dict, name: str, what: str):
    key = name.lower().replace("_", "-")
    if key not in table:
        raise KeyError(f"unknown {what} {name!r}; known: {', '.join(table)}")
    return table[key]


@dataclass(frozen=True)
class BytesPerParam:
    weights: float
    gradients: float
    master: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.master + self.optimizer


def bytes_per_param(precision: str = "fp32", optimizer: str = "adamw") -> BytesPerParam:
    """Bytes held per *trainable* parameter, before activations.

    regime      weights  grads  master  AdamW states  total
    fp32        4        4      0       4 + 4         16
    fp16/bf16   2        2      0       2 + 2         8    (the "56 GB for a 7B model" regime)
    mixed       2        2      4       4 + 4         16   (ZeRO: 2 + 2 + K, K = 12)

    SGD keeps no state, SGD with momentum one value, Adam/AdamW two; 8-bit AdamW keeps two 1-byte
    states (+ 4/256 bytes of block scales each) whatever the precision. A *frozen* parameter holds
    only its weight (``PRECISIONS[p].weight`` bytes, or ``NF4_BYTES_PER_PARAM`` when quantized).
    Note that PyTorch's ``torch.autocast`` keeps fp32 weights, gradients and states: its bytes per
    parameter are the fp32 row (16), only its activations are 16-bit.
    """
    prec = _lookup(PRECISIONS, precision, "precision")
    opt = _lookup(OPTIMIZERS, optimizer, "optimizer")
    state_bytes = opt.state_bytes if opt.state_bytes is not None else prec.state
    return BytesPerParam(prec.weight, prec.grad, prec.master, opt.states * state_bytes)


# --------------------------------------------------------------------------------------------------
# The result type shared by the estimator and the probe
# --------------------------------------------------------------------------------------------------

BUCKETS = ("weights", "gradients", "master", "optimizer", "activations")


@dataclass
class MemoryBreakdown:
    """Bytes of one training step by bucket; the estimator and the probe both return this."""

    label: str
    weights: float = 0
    gradients: float = 0
    master: float = 0  # fp32 master weights (mixed precision)
    optimizer: float = 0  # optimizer state tensors
    activations: float = 0  # tensors saved for backward
    peak: float | None = None  # measured: torch.cuda.max_memory_allocated over the step (CUDA only)
    trainable: int | None = None  # parameter counts, when known
    params: int | None = None
    notes: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(getattr(self, b) for b in BUCKETS)

    def as_columns(self) -> dict:
        """Flat columns for a results table (``compare.csv``): bytes per bucket, total and peak."""
        return {"weight_bytes": int(self.weights), "grad_bytes": int(self.gradients),
                "master_bytes": int(self.master), "optimizer_bytes": int(self.optimizer),
                "activation_bytes": int(self.activations), "step_bytes": int(self.total),
                "peak_bytes": None if self.peak is None else int(self.peak)}

    def table(self) -> str:
        return side_by_side(self)

    def __str__(self) -> str:
        return self.table()


def side_by_side(*breakdowns: MemoryBreakdown, unit: str = "auto") -> str:
    """A table with one column per breakdown (and the ratio of the last to the first when there are two)."""
    if not breakdowns:
        raise ValueError("side_by_side needs at least one MemoryBreakdown")
    ratio = len(breakdowns) == 2
    width = max(14, *(len(b.label) + 2 for b in breakdowns))
    header = f"{'bytes':<13}" + "".join(f"{b.label:>{width}}" for b in breakdowns) + ("   ratio" if ratio else "")
    lines = [header, "-" * len(header)]
    rows = list(BUCKETS) + ["total"] + (["cuda peak"] if any(b.peak is not None for b in breakdowns) else [])
    for row in rows:
        values = [b.total if row == "total" else (b.peak if row == "cuda peak" else getattr(b, row)) for b in breakdowns]
        cells = "".join(f"{'-' if v is None else _fmt(v, unit):>{width}}" for v in values)
        if ratio:
            a, b = values
            cells += f"{b / a:>8.3f}" if a and b is not None else f"{'-':>8}"
        lines.append(f"{row:<13}{cells}")
    counts = [b for b in breakdowns if b.params]
    if counts:
        lines.append(f"{'trainable':<13}" + "".join(
            f"{'-' if b.trainable is None else f'{b.trainable:,}':>{width}}" for b in breakdowns))
    return "\n".join(lines)


def _fmt(n: float, unit: str) -> str:
    if unit == "B":
        return f"{n:,.0f}"
    if unit == "GB":
        return f"{n / GB:.2f} GB"
    return format_bytes(n)


# --------------------------------------------------------------------------------------------------
# The estimator: parameter buckets
# --------------------------------------------------------------------------------------------------


def estimate_memory(trainable: int, frozen: int = 0, quantized: int = 0, *, precision: str = "fp32",
                    optimizer: str = "adamw", activations: float = 0, zero_stage: int = 0,
                    n_devices: int = 1, label: str = "estimate") -> MemoryBreakdown:
    """Bytes per device of one training step from parameter counts.

    ``trainable`` parameters hold a weight, a gradient, (a master copy) and optimizer state;
    ``frozen`` ones only a weight in the precision's dtype; ``quantized`` ones only a 4-bit NF4 weight.
    ZeRO across ``n_devices`` data-parallel devices partitions (divides by N):
    stage 1 the optimizer state and master weights, stage 2 also the gradients, stage 3 also the
    weights. Activations are per device (each holds its own micro-batch) and never divided.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0 (off), 1, 2 or 3, not {zero_stage!r}")
    if n_devices < 1:
        raise ValueError(f"n_devices must be at least 1, not {n_devices}")
    per = bytes_per_param(precision, optimizer)
    prec = _lookup(PRECISIONS, precision, "precision")
    n = n_devices

    def shard(nbytes: float, stage: int) -> float:
        return nbytes / n if zero_stage >= stage else nbytes

    weights = (trainable + frozen) * prec.weight + quantized * NF4_BYTES_PER_PARAM
    return MemoryBreakdown(
        label=label,
        weights=shard(weights, 3),
        gradients=shard(trainable * per.gradients, 2),
        master=shard(trainable * per.master, 1),
        optimizer=shard(trainable * per.optimizer, 1),
        activations=activations,
        trainable=trainable,
        params=trainable + frozen + quantized,
        notes={"precision": precision, "optimizer": optimizer, "zero_stage": zero_stage, "n_devices": n_devices},
    )


# --------------------------------------------------------------------------------------------------
# Model shapes and parameter counts from a config alone
# --------------------------------------------------------------------------------------------------

#: Published configs, written out so nothing is downloaded. Rotary settings and norms' epsilons do
#: not change a byte, so they are left at their defaults. Sources: each model's config.json on the
#: Hugging Face hub; GPT-3: Brown et al. 2020, Table 2.1 (dropout set to 0, as when fine-tuning).
PRESETS: dict[str, dict | None] = {
    "tiny": None,  # read from peftlab/base/config.json, so it follows the base when it is re-created
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         max_position_embeddings=8192, tie_word_embeddings=True),
    "smollm2-360m": dict(model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                         max_position_embeddings=8192, tie_word_embeddings=True),
    "smollm2-1.7b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=49152,
                         max_position_embeddings=8192, tie_word_embeddings=True),
    # Qwen2.5 is a Llama with biases on q, k and v; attention_bias=True also counts o_proj's (+21,504 parameters)
    "qwen2.5-0.5b": dict(model_type="llama", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, tie_word_embeddings=True, attention_bias=True),
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                       max_position_embeddings=4096, tie_word_embeddings=False),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=8192, tie_word_embeddings=False),
    "llama-2-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                        max_position_embeddings=4096, tie_word_embeddings=False),
    "llama-2-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
                        max_position_embeddings=4096, tie_word_embeddings=False),
    "gpt3-175b": dict(model_type="gpt2", n_embd=12288, n_layer=96, n_head=96, n_positions=2048,
                      vocab_size=50257, activation_function="gelu_new",
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
}

#: Parameter counts as their authors publish them (model cards; GPT-3's paper gives 175.0B).
PUBLISHED_PARAMETERS: dict[str, float] = {
    "smollm2-135m": 134_515_008, "smollm2-360m": 361_821_120, "smollm2-1.7b": 1_711_376_384, "llama-2-7b": 6_738_415_616, "llama-3-8b": 8_030_261_248,
    "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192, "gpt3-175b": 175.0e9,
}

LLAMA_FAMILY = ("llama", "mistral")


def preset_config(name: str):
    """A ``transformers`` config for preset ``name`` (no weights, no download)."""
    from transformers import AutoConfig

    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    if PRESETS[key] is None:
        from .models import BASE_DIR

        return AutoConfig.from_pretrained(str(BASE_DIR))
    spec = dict(PRESETS[key])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that decide its bytes."""

    family: str  # "llama" (RMSNorm, SwiGLU, rotary) or "gpt2" (LayerNorm, GELU MLP, learned positions)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    positions: int
    tied: bool  # output head shares the token embedding
    attention_bias: bool
    mlp_bias: bool
    activation: str  # hidden_act / activation_function
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    embd_dropout: float = 0.0

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """Read a ``transformers`` config (or a dict, or a preset name)."""
        if isinstance(config, ModelShape):
            return config
        if isinstance(config, str):
            config = preset_config(config)
        if isinstance(config, dict):
            from transformers import AutoConfig

            spec = dict(config)
            config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        kind = config.model_type
        if kind in LLAMA_FAMILY:
            heads = config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            return cls("llama", config.num_hidden_layers, config.hidden_size, heads,
                       getattr(config, "num_key_value_heads", None) or heads, head_dim, config.intermediate_size,
                       config.vocab_size, config.max_position_embeddings, bool(config.tie_word_embeddings),
                       bool(getattr(config, "attention_bias", False)), bool(getattr(config, "mlp_bias", False)),
                       config.hidden_act, attn_dropout=float(getattr(config, "attention_dropout", 0.0)))
        if kind == "gpt2":
            return cls("gpt2", config.n_layer, config.n_embd, config.n_head, config.n_head,
                       config.n_embd // config.n_head, config.n_inner or 4 * config.n_embd, config.vocab_size,
                       config.n_positions, True, True, True, config.activation_function,
                       attn_dropout=config.attn_pdrop, resid_dropout=config.resid_pdrop, embd_dropout=config.embd_pdrop)
        raise ValueError(f"no memory model for model_type {kind!r}; supported: {', '.join(LLAMA_FAMILY)}, gpt2")

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) of every weight matrix in one layer, by the name a LoRA target would use."""
        h, i = self.hidden, self.intermediate
        if self.family == "llama":
            return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                    "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return {"c_attn": (h, 3 * h), "attn.c_proj": (h, h), "c_fc": (h, i), "mlp.c_proj": (i, h)}

    def attention_targets(self) -> tuple[str, ...]:
        return ("q_proj", "k_proj", "v_proj", "o_proj") if self.family == "llama" else ("c_attn", "attn.c_proj")

    def layer_matrix_parameters(self) -> int:
        """Weights of one layer's matrices (what NF4 quantizes; biases and norms stay 16-bit)."""
        return sum(fan_in * fan_out for fan_in, fan_out in self.linear_dims().values())

    def bias_parameters(self) -> int:
        """Every bias term in the model (what BitFit trains)."""
        h = self.hidden
        if self.family == "llama":
            per_layer = ((self.q_dim + 2 * self.kv_dim + h) if self.attention_bias else 0) + \
                        ((2 * self.intermediate + h) if self.mlp_bias else 0)
            return self.layers * per_layer
        # c_attn, attn.c_proj, c_fc, mlp.c_proj biases and the two LayerNorm biases; plus ln_f's bias
        return self.layers * (3 * h + h + self.intermediate + h + 2 * h) + h


def parameter_count(model) -> int:
    """Parameters of a config/preset/shape, counted analytically (each shared tensor once).

    Llama: V*h (embedding; twice if the head is untied) + h (final norm) + L * [
    h*q + 2*h*kv + q*h (attention) + 3*h*i (SwiGLU MLP) + 2*h (norms) + biases].
    GPT-2: V*h + P*h (token and position embeddings; head tied) + 2*h (final LayerNorm) + L * [
    h*3h + 3h + h*h + h (attention) + h*i + i + i*h + h (MLP) + 4*h (two LayerNorms)].
    """
    s = ModelShape.from_config(model)
    h, i = s.hidden, s.intermediate
    if s.family == "llama":
        per_layer = s.layer_matrix_parameters() + 2 * h
        total = s.vocab * h * (1 if s.tied else 2) + s.layers * per_layer + h
        return total + s.bias_parameters()
    per_layer = s.layer_matrix_parameters() + (3 * h + h + i + h) + 4 * h
    return s.vocab * h + s.positions * h + s.layers * per_layer + 2 * h


def parameter_count_meta(config) -> int:
    """Parameters counted by building the model on the ``meta`` device: shapes only, no memory."""
    from transformers import AutoModelForCausalLM

    if isinstance(config, str):
        config = preset_config(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.num_parameters()


# --------------------------------------------------------------------------------------------------
# Activations: what autograd keeps for backward
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationTerm:
    name: str
    elements: int  # numbers kept (for the whole batch; for one layer when per_layer)
    bytes_per_element: float
    per_layer: bool

    @property
    def bytes(self) -> float:
        return self.elements * self.bytes_per_element


# Which saved tensor each weight matrix needs for its own gradient: its input.
_INPUT_OF = {
    "llama": {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o",
              "gate_proj": "gate_up", "up_proj": "gate_up", "down_proj": "down"},
    "gpt2": {"c_attn": "qkv", "attn.c_proj": "o", "c_fc": "gate_up", "mlp.c_proj": "down"},
}


def activation_terms(shape, batch: int, seq: int, *, bytes_per_element: int = 4, attention: str = "sdpa",
                     train_weights: bool = True, lora_targets: Sequence[str] = (), lora_rank: int = 0,
                     padded: bool = False, dropout_mask_bytes: float = 1,
                     input_needs_grad: bool | None = None, norms_train: bool | None = None) -> list[ActivationTerm]:
    """Every tensor autograd keeps for backward in one training step of a decoder-only LM.

    With T = batch*seq tokens, h hidden, q = heads*head_dim, kv = kv_heads*head_dim, i intermediate,
    a heads, s seq, V vocab, c = ``bytes_per_element`` (4 fp32, 2 fp16/bf16), per layer:

    Llama (RMSNorm computes in fp32; SwiGLU MLP; rotary positions)::

        2 norms        2 * T*(4h + 4)            fp32 input, fp32 1/rms
                     + 2 * T*h*c                 normalized x, for the gain's gradient [train_weights]
        q, k, v        T*(q + 2kv)*c             after rotary (eager, or sdpa with padding: k, v repeated to q)
        sdpa           T*q*c + T*a*4             output + fp32 logsumexp   [+ b*s*s*c mask copy if padded]
        eager          b*a*s*s*4 (+ b*a*s*s*c)   fp32 softmax (+ its 16-bit copy)
        MLP            3*T*i*c                   gate output, SiLU output, up output
        matrix inputs  T*(h + q + h + i)*c       inputs of qkv, o, gate/up, down  [train_weights or LoRA]
                                                 (with sdpa the o input is the output it already keeps)

    GPT-2 (LayerNorm; GELU MLP; learned positions)::

        2 LayerNorms   2 * T*(h + 2)*c           input, mean, 1/std
        q, k, v        eager 3*T*h*c; sdpa: q, v copies 2*T*h*c + the fused qkv output 3*T*h*c
                       (k stays a view of it) + output T*h*c + logsumexp T*a*4
        eager          b*a*s*s*c                 softmax
        MLP            T*i*c ("gelu", one op) or 4*T*i*c ("gelu_new": x, tanh, x/2, 1+tanh)
        matrix inputs  T*(h + h + h + i)*c       [train_weights or LoRA]
        dropout        masks of T*h (x2) and b*a*s*s, ``dropout_mask_bytes`` each (1: CUDA's bool
                       mask; on the CPU PyTorch keeps the mask in the compute dtype, pass c)

    Once per step: token ids T*8 (+ GPT-2 position ids s*8) [train_weights]; Llama rotary cos/sin
    2*s*head_dim*c; final norm as above; lm_head input T*h*c [train_weights]; fp32 log-softmax of the
    logits T*V*4; labels T*8; the loss normalizer, 4 bytes. With LoRA on a matrix, its input is kept
    (once, however many targets share it) plus the rank-r output of A: T*r*c per target.

    ``train_weights=False`` is a frozen base through which a gradient still flows to the first layer
    (biases, LoRA, adapters, prompts): frozen matrices and norm gains do not keep their inputs, and
    the first layer's first norm keeps nothing at all when neither its input, the frozen embedding's
    output (``input_needs_grad``, default ``train_weights``; True for prompt tuning), nor its own
    parameters (``norms_train``, default ``train_weights``; GPT-2's LayerNorm biases under BitFit)
    need a gradient. (One more such case is left out: eager attention in the first layer keeps q
    only if k needs a gradient, so LoRA on q and v alone keeps T*q*c less than counted here.)
    Roughly, full fine-tuning of a Llama layer in fp32 with sdpa keeps 4*T*(10h + 4i + a + 2) bytes
    (q = kv = h): compare Korthikanti et al.'s s*b*h*(34 + 5as/h) for GPT-3 in fp16 with dropout.
    The default ``attention="sdpa"`` is what ``peftlab.load_base`` gives (``transformers``' default).
    With torch 2.13 and transformers 5 this count matches ``probe_training_step`` to the byte on the
    CPU (fp32 and bf16, both attentions, full, BitFit and LoRA); other kernels (CUDA flash attention,
    fused norms) keep slightly different sets, which ``bench/memory_gpu.py`` measures.
    """
    s = ModelShape.from_config(shape)
    if attention not in ("sdpa", "eager"):
        raise ValueError(f"attention must be 'sdpa' or 'eager', not {attention!r}")
    unknown = set(lora_targets) - set(_INPUT_OF[s.family])
    if unknown:
        raise KeyError(f"LoRA target(s) {', '.join(sorted(unknown))} not in a {s.family} layer; "
                       f"matrices: {', '.join(_INPUT_OF[s.family])}")
    c, b, T = bytes_per_element, batch, batch * seq
    h, i, a, q, kv = s.hidden, s.intermediate, s.heads, s.q_dim, s.kv_dim
    saved_inputs = set(_INPUT_OF[s.family].values()) if train_weights else {_INPUT_OF[s.family][t] for t in lora_targets}
    input_needs_grad = train_weights if input_needs_grad is None else input_needs_grad
    norms_train = train_weights if norms_train is None else norms_train
    terms: list[ActivationTerm] = []

    def add(name: str, elements: int, nbytes: float, per_layer: bool = True) -> None:
        if elements:  # negative only for the one correction below
            terms.append(ActivationTerm(name, int(elements), nbytes, per_layer))

    def norm(where: str, per_layer: bool = True) -> None:
        if s.family == "llama":
            add(f"{where} norm: input in fp32", T * h, 4, per_layer)
            add(f"{where} norm: 1/rms (fp32)", T, 4, per_layer)
            if train_weights:
                add(f"{where} norm: normalized x (gain's gradient)", T * h, c, per_layer)
        else:
            add(f"{where} LayerNorm: input", T * h, c, per_layer)
            add(f"{where} LayerNorm: mean and 1/std", 2 * T, c, per_layer)

    attn_dropout = s.attn_dropout > 0
    # -- attention block --
    norm("attention")
    if "qkv" in saved_inputs:
        add("q/k/v projection input", T * h, c)
    if s.family == "llama":
        repeated = attention == "eager" or (padded and s.kv_heads != s.heads)
        add("q after rotary", T * q, c)
        add("k, v" + (" (repeated to every head)" if repeated and s.kv_heads != s.heads else ""),
            2 * T * (q if repeated else kv), c)
    elif attention == "eager":
        add("q, k, v (per-head copies)", 3 * T * h, c)
    else:
        add("q, v (contiguous copies)", 2 * T * h, c)
        add("fused qkv output (k is a view of it)", 3 * T * h, c)
    if attention == "sdpa":
        add("attention output (kept by sdpa)", T * q, c)
        add("logsumexp (fp32)", T * a, 4)
        if padded:
            add("padding mask expanded by the kernel", b * seq * seq, c)
    else:
        softmax_bytes = 4 if s.family == "llama" else c
        add("softmax probabilities" + (" (fp32)" if softmax_bytes == 4 else ""), b * a * seq * seq, softmax_bytes)
        if s.family == "llama" and c != 4:
            add("probabilities cast back to 16-bit", b * a * seq * seq, c)
        if attn_dropout:
            add("attention-dropout mask", b * a * seq * seq, dropout_mask_bytes)
            add("probabilities after dropout", b * a * seq * seq, c)
        if "o" in saved_inputs:
            add("output projection input", T * q, c)
    if s.resid_dropout > 0:
        add("residual dropout mask (attention)", T * h, dropout_mask_bytes)
    # -- MLP block --
    norm("MLP")
    if "gate_up" in saved_inputs:
        add("MLP input projection input", T * h, c)
    if s.family == "llama":
        add("gate output, SiLU output, up output", 3 * T * i, c)
    elif s.activation == "gelu_new":
        add("GELU written out (x, tanh, x/2, 1+tanh)", 4 * T * i, c)
    else:
        add("GELU input", T * i, c)
    if "down" in saved_inputs:
        add("MLP output projection input", T * i, c)
    if s.resid_dropout > 0:
        add("residual dropout mask (MLP)", T * h, dropout_mask_bytes)
    for target in lora_targets:
        add(f"LoRA A output ({target})", T * lora_rank, c)
    # -- once per step --
    if train_weights:
        add("token ids (embedding gradient)", T, 8, False)
        if s.family == "gpt2":
            add("position ids", seq, 8, False)
    if s.family == "llama":
        add("rotary cos and sin", 2 * seq * s.head_dim, c, False)
    if s.embd_dropout > 0:
        add("embedding dropout mask", T * h, dropout_mask_bytes, False)
    norm("final", per_layer=False)
    if train_weights:
        add("lm_head input", T * h, c, False)
    add("log-softmax of the logits (fp32)", T * s.vocab, 4, False)
    add("labels", T, 8, False)
    add("loss normalizer", 1, 4, False)
    # Llama's RMSNorm is written out of small ops, each keeping only what a needed gradient uses;
    # GPT-2's LayerNorm is one op that keeps its input if anything about it needs a gradient.
    if not input_needs_grad and not (s.family == "gpt2" and norms_train):
        for term in [t for t in terms if t.name.startswith("attention norm") or t.name.startswith("attention LayerNorm")]:
            add(f"first layer: {term.name}, not kept", -term.elements, term.bytes_per_element, False)
    return terms


def activation_bytes(shape, batch: int, seq: int, *, checkpointing: bool = False, **kwargs) -> float:
    """Bytes of activations kept for backward: per-layer terms x layers + once-per-step terms.

    With gradient checkpointing (every decoder layer, as ``model.gradient_checkpointing_enable()``)
    each layer keeps only its input, T*h*c, and during backward one layer at a time is recomputed:
    L*T*h*c + (one layer's terms) + (once-per-step terms).
    """
    s = ModelShape.from_config(shape)
    terms = activation_terms(s, batch, seq, **kwargs)
    layer = sum(t.bytes for t in terms if t.per_layer)
    once = sum(t.bytes for t in terms if not t.per_layer)
    if checkpointing:
        c = kwargs.get("bytes_per_element", 4)
        return s.layers * batch * seq * s.hidden * c + layer + once
    return s.layers * layer + once


# --------------------------------------------------------------------------------------------------
# Methods by name, and the whole estimate for a model
# --------------------------------------------------------------------------------------------------

#: How each method splits the parameters. ``lora``/``qlora`` default to rank 16 on the attention
#: projections (q, k, v, o; GPT-2: c_attn, attn.c_proj); ``prompt`` to 20 virtual tokens.
METHOD_HELP = {
    "full": "full fine-tuning: every parameter trains",
    "lora": "LoRA, rank r on the attention projections; frozen base in the precision's weight dtype",
    "qlora": "QLoRA: LoRA as above on a base whose layer matrices are NF4 (4.127 bits); embeddings, norms, head 16-bit",
    "bitfit": "BitFit: only bias terms train (Llama-2/3 have none)",
    "prompt": "prompt tuning: 20 trainable virtual-token embeddings, prepended to every sequence",
}
PROMPT_TOKENS = 20


@dataclass(frozen=True)
class MethodCounts:
    trainable: int
    frozen: int
    quantized: int
    train_weights: bool  # do the base's matrices train (so they keep their inputs)?
    norms_train: bool  # do the norms' gains or biases train?
    lora_targets: tuple[str, ...] = ()
    extra_tokens: int = 0  # tokens the method prepends (prompt tuning)


def method_counts(model, method: str = "full", *, rank: int = 16, targets: Sequence[str] | None = None) -> MethodCounts:
    """Trainable / frozen / quantized parameter counts of ``method`` on ``model`` (a shape, config or preset)."""
    s = ModelShape.from_config(model)
    total = parameter_count(s)
    key = method.lower()
    if key == "full":
        return MethodCounts(total, 0, 0, True, True)
    if key in ("lora", "qlora"):
        targets = tuple(targets or s.attention_targets())
        dims = s.linear_dims()
        unknown = [t for t in targets if t not in dims]
        if unknown:
            raise KeyError(f"LoRA target(s) {', '.join(unknown)} not in a {s.family} layer; matrices: {', '.join(dims)}")
        lora = s.layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)
        quantized = s.layers * s.layer_matrix_parameters() if key == "qlora" else 0
        return MethodCounts(lora, total - quantized, quantized, False, False, targets)
    if key == "bitfit":
        biases = s.bias_parameters()
        return MethodCounts(biases, total - biases, 0, False, s.family == "gpt2")  # LayerNorm biases
    if key == "prompt":
        return MethodCounts(PROMPT_TOKENS * s.hidden, total, 0, False, False, extra_tokens=PROMPT_TOKENS)
    raise KeyError(f"unknown method {method!r}; methods: {', '.join(METHOD_HELP)}")


def estimate(model="tiny", method: str = "full", *, precision: str = "mixed", optimizer: str = "adamw",
             batch: int = 1, seq: int = 512, rank: int = 16, targets: Sequence[str] | None = None,
             checkpointing: bool = False, zero_stage: int = 0, n_devices: int = 1, attention: str = "sdpa",
             padded: bool = False, label: str | None = None) -> MemoryBreakdown:
    """The whole training step of ``method`` on ``model`` (preset name, config, dict or ``ModelShape``)."""
    s = ModelShape.from_config(model)
    counts = method_counts(s, method, rank=rank, targets=targets)
    acts = activation_bytes(s, batch, seq + counts.extra_tokens, checkpointing=checkpointing,
                            bytes_per_element=_lookup(PRECISIONS, precision, "precision").activation, attention=attention,
                            train_weights=counts.train_weights, lora_targets=counts.lora_targets,
                            lora_rank=rank, padded=padded, input_needs_grad=counts.train_weights or counts.extra_tokens > 0,
                            norms_train=counts.norms_train)
    result = estimate_memory(counts.trainable, counts.frozen, counts.quantized, precision=precision,
                             optimizer=optimizer, activations=acts, zero_stage=zero_stage, n_devices=n_devices,
                             label=label or f"{method} estimate")
    result.notes.update(model=model if isinstance(model, str) else s.family, method=method, batch=batch, seq=seq,
                        rank=rank, checkpointing=checkpointing, attention=attention)
    return result


# --------------------------------------------------------------------------------------------------
# The probe: one real training step, counted tensor by tensor
# --------------------------------------------------------------------------------------------------


def _unique_parameters(model) -> list[torch.nn.Parameter]:
    seen, params = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes(model) -> int:
    """Bytes of the parameters (each shared tensor once), plus a 4-bit weight's quantization state."""
    total = 0
    for p in _unique_parameters(model):
        total += _tensor_bytes(p)
        state = getattr(p, "quant_state", None)  # bitsandbytes Params4bit: absmax, nested scales
        if state is not None:
            for t in (getattr(state, "absmax", None), getattr(getattr(state, "state2", None), "absmax", None)):
                if torch.is_tensor(t):
                    total += _tensor_bytes(t)
    for module in model.modules():  # peftlab's 4-bit layers keep the packed weight in buffers, not parameters
        stored = getattr(module, "stored_bytes", None)
        if callable(stored):
            total += stored()
    return total


def adamw_8bit(model_or_params, lr: float = 1e-3, weight_decay: float = 0.0, **kwargs) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW over the trainable parameters (Dettmers et al. 2022, "8-bit Optimizers
    via Block-wise Quantization"): both Adam states stored as 1 byte each with one fp32 absmax per block
    of 256 values (``ADAM8BIT_STATE_BYTES``), dequantized for each update and quantized again.

    Pass it to ``measure_training_memory(..., optimizer=adamw_8bit(model))`` to see its state bytes next
    to fp32 AdamW's. bitsandbytes keeps 32-bit states for tensors under ``min_8bit_size`` (4096)
    values; that is its default and kept here. The paged variant (``bnb.optim.PagedAdamW8bit``, states in
    CUDA unified memory that can spill to the CPU) needs a GPU.
    """
    try:
        import bitsandbytes as bnb
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("8-bit AdamW needs bitsandbytes (pip install bitsandbytes)") from err
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    trainable = [p for p in params if p.requires_grad]
    return bnb.optim.AdamW8bit(trainable, lr=lr, weight_decay=weight_decay, **kwargs)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors, each storage once.

    The ``step`` counters (one scalar per parameter tensor) are left out: they are not bytes per
    parameter, and the estimator does not count them.
    """
    seen: dict[int, int] = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if key != "step" and torch.is_tensor(value) and value.numel():
                storage = value.untyped_storage()
                seen.setdefault(storage.data_ptr(), storage.nbytes())
    return sum(seen.values())


def probe_training_step(model, batch: dict, optimizer: torch.optim.Optimizer | None = None, *,
                        mixed_precision: bool = False, loss_fn=None, label: str = "probe") -> MemoryBreakdown:
    """Run one real training step (forward, backward, optimizer step) and count its bytes.

    - weights: every parameter (shared ones once);
    - gradients: every ``.grad`` after backward;
    - optimizer: the optimizer's state tensors after the step (``optimizer_state_bytes``);
    - activations: every tensor autograd saves for backward, caught by
      ``torch.autograd.graph.saved_tensors_hooks`` and counted by its storage, once per storage
      (views share a storage; parameters' storages are weights, not activations);
    - peak, on CUDA: ``torch.cuda.max_memory_allocated`` over the step (it also sees temporaries).

    ``optimizer`` defaults to the training loop's AdamW over the trainable parameters. The model is
    updated by the step (use ``measure_training_memory`` to leave it unchanged).
    """
    from .train import TrainConfig, make_optimizer
    from .utils import get_autocast_dtype

    params = _unique_parameters(model)
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    optimizer = optimizer if optimizer is not None else make_optimizer(model, TrainConfig())
    device = params[0].device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without a storage (e.g. sparse) are not counted
            return tensor
        ptr = storage.data_ptr()
        if ptr not in param_storages and ptr not in saved:
            saved[ptr] = storage.nbytes()
        return tensor

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    amp_dtype = get_autocast_dtype(device) if mixed_precision else None
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
    activations = sum(saved.values())
    loss.backward()
    gradients = sum(_tensor_bytes(p.grad) for p in params if p.grad is not None)
    optimizer.step()
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    state = optimizer_state_bytes(optimizer)
    optimizer.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return MemoryBreakdown(label, weights=weight_bytes(model), gradients=gradients, optimizer=state,
                           activations=activations, peak=peak, trainable=trainable,
                           params=sum(p.numel() for p in params),
                           notes={"tokens": int(batch["input_ids"].numel()) if "input_ids" in batch else None})


def measure_training_memory(model, tokenizer_or_batch, examples=None, *, batch_size: int = 16,
                            max_length: int = 256, optimizer: torch.optim.Optimizer | None = None,
                            mixed_precision: bool = False, seed: int = 0, label: str = "measured") -> MemoryBreakdown:
    """Measured bytes of one training step of ``model`` as it stands, leaving it as it was.

    Call it after a method's ``apply`` and before training. ``tokenizer_or_batch`` is either a batch
    (a dict with ``input_ids``, ``attention_mask``, ``labels``) or a tokenizer, with ``examples``
    (``peftlab.world.Example``) from which the first shuffled batch of ``batch_size`` is made, exactly
    as the training loop would. The trainable weights are restored after the step, gradients cleared,
    a throw-away optimizer (default: the loop's AdamW) used, and the random state left untouched.
    Training hooks (``model.peftlab_hooks``) are not called. A model with nothing trainable gets its
    weights only. Pass ``mixed_precision=True`` to run the step under the loop's autocast (GPU).
    ``result.as_columns()`` gives ``weight_bytes``, ``grad_bytes``, ``optimizer_bytes``,
    ``activation_bytes``, ``step_bytes``, ``peak_bytes`` (None off CUDA).
    """
    from .data import batches

    if isinstance(tokenizer_or_batch, dict):
        batch = tokenizer_or_batch
    else:
        if not examples:
            raise ValueError("measure_training_memory needs examples with a tokenizer (or pass a batch dict)")
        batch = next(batches(tokenizer_or_batch, examples, batch_size, seed=seed, max_length=max_length))
    trainable = [p for p in _unique_parameters(model) if p.requires_grad]
    if not trainable:  # nothing trains (the untouched base): only the weights are held
        params = _unique_parameters(model)
        return MemoryBreakdown(label, weights=weight_bytes(model), trainable=0,
                               params=sum(p.numel() for p in params), notes={"nothing trains": True})
    snapshot = [p.detach().clone() for p in trainable]
    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            result = probe_training_step(model, batch, optimizer, mixed_precision=mixed_precision, label=label)
    finally:
        with torch.no_grad():
            for p, saved in zip(trainable, snapshot):
                p.copy_(saved)
                p.grad = None
        model.train(was_training)
    return result


# --------------------------------------------------------------------------------------------------
# Will it fit?
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float

    @property
    def bytes(self) -> float:
        return self.memory_gib * GiB


GPUS: dict[str, GPU] = {
    "t4": GPU("T4 16 GB", 16), "rtx3090": GPU("RTX 3090 24 GB", 24), "a100-40gb": GPU("A100 40 GB", 40),
    "a100-80gb": GPU("A100 80 GB", 80), "h100": GPU("H100 80 GB", 80),
}

#: A step fits when its estimate is under this share of the card: the CUDA context, the allocator's
#: fragmentation and short-lived temporaries (the logits' gradient, casts) need the rest.
FIT_MARGIN = 0.9


def fit_verdict(total_bytes: float, gpu: GPU | str) -> str:
    """'fits' (under 90% of the card), 'tight' (90-100%: may work, with care) or 'no'."""
    card = GPUS[gpu.lower()] if isinstance(gpu, str) else gpu
    if total_bytes <= FIT_MARGIN * card.bytes:
        return "fits"
    return "tight" if total_bytes <= card.bytes else "no"


def will_it_fit(models: Iterable[str] = ("smollm2-135m", "llama-2-7b", "llama-3-8b", "llama-2-13b", "llama-2-70b"),
                methods: Iterable[str] = ("full", "lora", "qlora"), gpus: Iterable[str] = tuple(GPUS),
                **estimate_kwargs) -> list[dict]:
    """One row per model x method: the estimate and the verdict on each GPU."""
    rows = []
    for model in models:
        for method in methods:
            est = estimate(model, method, **estimate_kwargs)
            row = {"model": model, "method": method, "trainable": est.trainable, "total_bytes": est.total,
                   **{b: getattr(est, b) for b in BUCKETS}}
            row.update({gpu: fit_verdict(est.total, gpu) for gpu in gpus})
            rows.append(row)
    return rows


def format_fit_table(rows: list[dict]) -> str:
    gpus = [g for g in GPUS if g in rows[0]]
    header = f"{'model':<14}{'method':<8}{'trainable':>16}{'step':>12}" + "".join(f"{g:>11}" for g in gpus)
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['model']:<14}{r['method']:<8}{r['trainable']:>16,}{r['total_bytes'] / GiB:>9.1f} GiB"
                     + "".join(f"{r[g]:>11}" for g in gpus))
    return "\n".join(lines)


def plot_will_it_fit(rows: list[dict], ax=None):
    """Horizontal bars of each model x method's bytes (stacked by bucket, log scale) with GPU lines."""
    import matplotlib.pyplot as plt

    colors = {"weights": "#4c72b0", "gradients": "#dd8452", "master": "#937860", "optimizer": "#c44e52",
              "activations": "#55a868"}
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    labels = [f"{r['model']} {r['method']}" for r in rows]
    y = range(len(rows))
    left = [0.0] * len(rows)
    for bucket in BUCKETS:
        widths = [r[bucket] / GiB for r in rows]
        ax.barh(y, widths, left=left, color=colors[bucket], label=bucket)
        left = [a + b for a, b in zip(left, widths)]
    for key, style in zip(GPUS, ("--", "-", ":", "-.", (0, (1, 3)))):
        if key == "h100":
            continue  # same 80 GiB line as the A100 80 GB
        ax.axvline(GPUS[key].bytes / GiB, color="black", linestyle=style, linewidth=1,
                   label=GPUS[key].name + (" / H100 80 GB" if key == "a100-80gb" else ""))
    ax.set_xscale("log")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("GiB per device (log scale)")
    ax.set_title("Will it fit? One training step, estimated")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax.figure


def seed_claims(n_params: float = 7e9) -> dict:
    """The course text's claims as arithmetic: bytes of a 7B model's weights+grads+Adam, per regime."""
    return {name: n_params * bytes_per_param(name, "adamw").total for name in PRECISIONS}


def save_json(breakdowns: Sequence[MemoryBreakdown], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(b) for b in breakdowns], indent=2, default=str) + "\n")


__all__ = [
    "ADAM8BIT_STATE_BYTES", "BUCKETS", "GB", "GPU", "GPUS", "GiB", "MemoryBreakdown", "ModelShape", "NF4_BITS_PER_PARAM",
    "NF4_BYTES_PER_PARAM", "OPTIMIZERS", "PRECISIONS", "PRESETS", "PUBLISHED_PARAMETERS", "activation_bytes",
    "activation_terms", "adamw_8bit", "bytes_per_param", "estimate", "estimate_memory", "fit_verdict", "measure_training_memory",
    "method_counts", "optimizer_state_bytes", "parameter_count", "parameter_count_meta", "plot_will_it_fit",
    "preset_config", "probe_training_step", "side_by_side", "will_it_fit", "weight_bytes",
]
