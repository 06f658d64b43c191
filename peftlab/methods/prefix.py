"""Prefix tuning and prompt tuning: the frozen model reads trainable vectors placed before the input.

Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"): every
attention layer ``l`` attends to ``P`` trainable key/value pairs before the real tokens::

    head_l(x) = softmax(q · [K_prefix_l ; K(x)]^T / sqrt(d_head)) · [V_prefix_l ; V(x)]

Prompt tuning (Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning"), the small sibling: ``P`` trainable input embeddings prepended to the token embeddings; the
layers compute their own keys and values from them, so it trains ``P * d`` numbers instead of
``P * n_layers * 2 * d``.

Design, for transformers 5 (no model code is patched):

- The prefix enters through the model's **cache interface**: before each forward we build a
  ``DynamicCache`` that already holds the ``P`` prefix keys/values of every layer, as if ``P`` tokens
  had been processed. The model then appends the real tokens' keys/values after them, gives the real
  tokens positions ``P .. P+T-1`` and attends to the prefix through the ordinary causal mask. The
  attention mask gets ``P`` ones prepended, so right-padded batches keep padding masked.
- The flat prefix tensor is laid out like ``peft``'s ``PrefixEncoder`` output, ``(P, n_layers * 2 *
  kv_dim)`` with keys of layer ``l`` at ``2l`` and values at ``2l+1``, so tensors copy between the two.
- The optional **reparameterization** (Li & Liang found direct optimisation unstable): ``P`` free
  embeddings pass through ``Linear -> tanh -> Linear`` to give the prefix. After training, ``fold()``
  runs the MLP once, stores its output as the prefix and deletes the MLP: the inference cost and the
  saved size are those of the plain prefix.
- Both methods **wrap** the model: ``PrefixTuningModel`` / ``PromptTuningModel`` are ``nn.Module``s
  whose ``forward(input_ids, attention_mask, labels, ...)`` returns the base's output (``.loss``,
  ``.logits``) with ``.logits`` aligned to ``input_ids`` (prompt tuning strips its ``P`` extra
  positions), so ``peftlab.train`` and ``peftlab.evaluate`` use them unchanged. ``generate`` works;
  any other attribute (``config``, ``device``...) is looked up on the wrapped model.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from ..memory.estimate import MethodCounts, Sizing
from . import finalizes, register, removes
from .targets import freeze


def text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def kv_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(n_layers, n_kv_heads, head_dim)`` of ``model``'s attention (grouped-query aware)."""
    config = text_config(model)
    n_heads = config.num_attention_heads
    n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return config.num_hidden_layers, n_kv_heads, head_dim


def cache_argument(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes a cache: ``cache`` (transformers >= 5.2x) or the older
    ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise ValueError(f"{type(model).__name__}.forward takes no cache, so prefix tuning cannot feed it keys and "
                     "values; use prompt tuning ('prompt') for this model")


class _Wrapper(nn.Module):
    """Looks up unknown attributes (``config``, ``device``, ``generation_config``...) on the wrapped model."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)


def _extend_mask(attention_mask: torch.Tensor | None, batch_size: int, length: int, n_virtual: int,
                 device) -> torch.Tensor:
    """``P`` ones (the virtual tokens are always visible) before the given mask."""
    if attention_mask is None:
        attention_mask = torch.ones(batch_size, length, dtype=torch.long, device=device)
    ones = torch.ones(batch_size, n_virtual, dtype=attention_mask.dtype, device=attention_mask.device)
    return torch.cat([ones, attention_mask], dim=1)  # (B, P + T)


# ----------------------------------------------------------------------------------- prefix tuning


@dataclass
class PrefixConfig:
    num_virtual_tokens: int = 10  # P: prefix length, the same for every layer
    reparameterize: bool = True  # train through an MLP (Li & Liang); fold() removes it after training
    encoder_hidden_size: int | None = None  # width of the reparameterization MLP; None: n_kv_heads * head_dim
    init: str = "random"  # without the MLP: "random" (N(0, 1), as peft) or "tokens" (keys/values of random real tokens)


class PrefixReparameterization(nn.Module):
    """``P`` free embeddings of width ``kv_dim`` -> Linear -> tanh -> Linear -> the flat prefix (peft's shapes)."""

    def __init__(self, n_virtual: int, kv_dim: int, encoder_hidden_size: int, out_features: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(n_virtual, kv_dim))  # N(0, 1) like nn.Embedding
        self.mlp = nn.Sequential(nn.Linear(kv_dim, encoder_hidden_size), nn.Tanh(),
                                 nn.Linear(encoder_hidden_size, out_features))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding)  # (P, n_layers * 2 * kv_dim)


class PrefixTuningModel(_Wrapper):
    """A frozen decoder whose every attention layer also attends to ``P`` trainable key/value pairs."""

    def __init__(self, model: nn.Module, config: PrefixConfig):
        super().__init__()
        self.base_model = freeze(model)
        self.prefix_config = config
        self.cache_argument = cache_argument(model)
        self.n_layers, self.n_kv_heads, self.head_dim = kv_shape(model)
        P = config.num_virtual_tokens
        flat_size = self.n_layers * 2 * self.n_kv_heads * self.head_dim
        reference = next(model.parameters())
        if config.reparameterize:
            kv_dim = self.n_kv_heads * self.head_dim  # peft's token_dim: the hidden size unless grouped-query
            self.reparam = PrefixReparameterization(P, kv_dim, config.encoder_hidden_size or kv_dim, flat_size)
            self.reparam.to(reference.device)
            self.prefix = None
        else:
            self.reparam = None
            self.prefix = nn.Parameter(torch.randn(P, flat_size, device=reference.device))
            if config.init == "tokens":
                self.prefix.data.copy_(self._token_activations())
            elif config.init != "random":
                raise ValueError(f"unknown prefix init {config.init!r}; choose 'random' or 'tokens'")

    @torch.no_grad()
    def _token_activations(self) -> torch.Tensor:
        """The keys/values the base computes for ``P`` random vocabulary tokens (Li & Liang, section 7.2:
        initialising with real activations trains better than random vectors)."""
        P = self.prefix_config.num_virtual_tokens
        vocab = self.base_model.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (1, P), device=self.prefix.device)
        out = self.base_model(input_ids=ids, use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]  # `cache` in transformers >= 5.2x
        layers = [(layer.keys, layer.values) for layer in cache.layers]  # each (1, H_kv, P, D)
        kv = torch.stack([t[0] for pair in layers for t in pair])  # (2L, H_kv, P, D)
        return kv.permute(2, 0, 1, 3).reshape(P, -1).float()  # (P, 2L * H_kv * D)

    def flat_prefix(self) -> torch.Tensor:
        """The prefix as one tensor ``(P, n_layers * 2 * kv_dim)``, laid out as peft's ``PrefixEncoder``."""
        return self.reparam() if self.reparam is not None else self.prefix

    def prefix_key_values(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the prefix keys and values, each ``(B, n_kv_heads, P, head_dim)``."""
        P = self.prefix_config.num_virtual_tokens
        dtype = next(self.base_model.parameters()).dtype
        kv = self.flat_prefix().to(dtype).view(P, 2 * self.n_layers, self.n_kv_heads, self.head_dim)
        kv = kv.permute(1, 2, 0, 3)  # (2L, H_kv, P, D)
        return [(kv[2 * layer].expand(batch_size, -1, -1, -1), kv[2 * layer + 1].expand(batch_size, -1, -1, -1))
                for layer in range(self.n_layers)]

    def make_cache(self, batch_size: int) -> DynamicCache:
        """A fresh cache that already holds the prefix (the model appends to it, so one per forward)."""
        return DynamicCache(self.prefix_key_values(batch_size), config=self.base_model.config)

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, **kwargs):
        batch_size, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        device = (input_ids if input_ids is not None else inputs_embeds).device
        kwargs[self.cache_argument] = self.make_cache(batch_size)
        attention_mask = _extend_mask(attention_mask, batch_size, length, self.prefix_config.num_virtual_tokens, device)
        return self.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **kwargs):
        """``base.generate`` with the prefix in the cache. The mask covers prefix + input while ``input_ids``
        covers the input only, which tells ``generate`` that the cache holds earlier context."""
        batch_size, length = input_ids.shape
        attention_mask = _extend_mask(attention_mask, batch_size, length, self.prefix_config.num_virtual_tokens,
                                      input_ids.device)
        kwargs[self.cache_argument] = self.make_cache(batch_size)
        return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def fold(self) -> PrefixTuningModel:
        """Replace the reparameterization MLP by the prefix it computes (outputs unchanged, MLP gone)."""
        if self.reparam is not None:
            self.prefix = nn.Parameter(self.reparam().detach().clone())
            self.reparam = None
        return self

    merge = fold


@register("prefix", PrefixConfig, family="additive", lr=3e-4, grid_centre=3e-3, wraps=True, identity_at_init=False,
          description="prefix tuning: trainable keys/values in every layer (Li & Liang 2021)")
def apply_prefix(model, config: PrefixConfig, context=None):
    """Freeze ``model`` and wrap it in a ``PrefixTuningModel``: use the returned model."""
    return PrefixTuningModel(model, config)


def unwrap(model):
    """The model a prefix or prompt wrapper holds (what ``remove_method`` returns)."""
    return model.base_model


removes("prefix")(unwrap)
finalizes("prefix")(PrefixTuningModel.fold)  # the MLP only eases training: inference reads the prefix it computes


# ----------------------------------------------------------------------------------- prompt tuning


@dataclass
class PromptConfig:
    num_virtual_tokens: int = 10  # P: soft-prompt length
    init: str = "vocab"  # "vocab": embeddings of random vocabulary tokens (Lester et al.); "random": N(0, std of the embeddings)


class PromptTuningModel(_Wrapper):
    """A frozen model that reads ``P`` trainable embeddings before the token embeddings."""

    def __init__(self, model: nn.Module, config: PromptConfig):
        super().__init__()
        self.base_model = freeze(model)
        self.prompt_config = config
        embeddings = model.get_input_embeddings().weight  # (vocab, d)
        P = config.num_virtual_tokens
        with torch.no_grad():
            if config.init == "vocab":
                init = embeddings[torch.randint(0, embeddings.shape[0], (P,), device=embeddings.device)]
            elif config.init == "random":
                init = torch.randn(P, embeddings.shape[1], device=embeddings.device) * embeddings.std()
            else:
                raise ValueError(f"unknown prompt init {config.init!r}; choose 'vocab' or 'random'")
        self.prompt = nn.Parameter(init.clone())  # (P, d)

    def _prepend(self, input_ids, attention_mask):
        embeds = self.base_model.get_input_embeddings()(input_ids)  # (B, T, d)
        batch_size, length = input_ids.shape
        prompt = self.prompt.to(embeds.dtype).expand(batch_size, -1, -1)  # (B, P, d)
        mask = _extend_mask(attention_mask, batch_size, length, self.prompt_config.num_virtual_tokens, input_ids.device)
        return torch.cat([prompt, embeds], dim=1), mask  # (B, P + T, d), (B, P + T)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        P = self.prompt_config.num_virtual_tokens
        inputs_embeds, attention_mask = self._prepend(input_ids, attention_mask)
        if labels is not None:  # no loss on the virtual positions
            labels = torch.cat([torch.full_like(labels[:, :1], -100).expand(-1, P), labels], dim=1)
        out = self.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        out.logits = out.logits[:, P:]  # (B, T, vocab): aligned with input_ids again
        return out

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **kwargs):
        """``base.generate`` from embeddings; returns ``input_ids`` followed by the new tokens, like the base."""
        inputs_embeds, attention_mask = self._prepend(input_ids, attention_mask)
        new_tokens = self.base_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new_tokens], dim=1)


def _count_prompt(shape, total: int, setting: dict) -> MethodCounts:
    tokens = setting["tokens"]
    return MethodCounts(tokens * shape.hidden, total, 0, train_weights=False, norms_train=False, extra_tokens=tokens)


@register("prompt", PromptConfig, family="additive", lr=3.0, grid_centre=3e-1, wraps=True, identity_at_init=False,
          description="prompt tuning: trainable input embeddings (Lester et al. 2021)",
          sizing=Sizing("prompt tuning: 20 trainable virtual-token embeddings, prepended to every sequence",
                        _count_prompt, {"tokens": 20}, lambda config: {"tokens": config.num_virtual_tokens}))
def apply_prompt(model, config: PromptConfig, context=None):
    """Freeze ``model`` and wrap it in a ``PromptTuningModel``: use the returned model."""
    return PromptTuningModel(model, config)


removes("prompt")(unwrap)
