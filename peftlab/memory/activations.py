"""Activations: every tensor autograd keeps for backward in one training step, term by term.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models") count them
per layer; here we count what PyTorch and Hugging Face ``transformers`` actually keep, checked
against the probe (``peftlab.memory.probe``) tensor by tensor.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .shapes import ModelShape

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
