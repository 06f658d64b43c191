"""Model shapes and parameter counts from a config alone: the tiny base up to GPT-3 175B, no download."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils import lookup

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
    "smollm2-135m": 134_515_008, "smollm2-360m": 361_821_120, "smollm2-1.7b": 1_711_376_384,
    "llama-2-7b": 6_738_415_616, "llama-3-8b": 8_030_261_248,
    "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192, "gpt3-175b": 175.0e9,
}

LLAMA_FAMILY = ("llama", "mistral")


def preset_config(name: str):
    """A ``transformers`` config for preset ``name`` (no weights, no download)."""
    from transformers import AutoConfig

    key = name.lower()
    spec = lookup(PRESETS, key, "model preset")
    if spec is None:
        from ..models import BASE_DIR

        return AutoConfig.from_pretrained(str(BASE_DIR))
    spec = dict(spec)
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
