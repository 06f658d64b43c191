"""Bottleneck adapters: small trainable MLPs inserted into a frozen transformer.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP": two adapters per layer, one
after the attention output projection and one after the feed-forward block, each before the residual
add. Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer Learning"
(the configuration also used in "MAD-X", 2020): one adapter per layer, after the feed-forward block
only, half the parameters and half the extra steps at inference.

One adapter, with bottleneck size ``r`` much smaller than the hidden size ``d``::

    adapter(h) = h + W_up · f(W_down · h + b_down) + b_up        W_down: (r, d), W_up: (d, r)

``W_up`` and ``b_up`` start at zero, so every adapter is the identity at initialisation and the
adapted model computes exactly what the base computes at step 0; the gradient reaches ``W_up`` first
and training moves away from the base smoothly.

How it is injected: the module whose output the adapter reads (Llama's ``self_attn.o_proj`` and
``mlp``; GPT-2's ``attn.c_proj`` and ``mlp``; BERT's ``attention.output.dense`` and
``layer.N.output.dense``) is replaced by ``WithAdapter(module, adapter)``, whose forward is
``adapter(module(x))``. Replacing the module (rather than a forward hook) keeps the adapter visible in
``print(model)`` and in the parameter names (``...mlp.adapter.down.weight``), and ``remove_adapters``
puts the original modules back. Unlike LoRA, the adapter sits behind a nonlinearity and cannot be
merged into the frozen weights: it costs two extra matrix multiplications per placement at inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import register, removes
from .targets import LINEAR_TYPES, find_targets, freeze, is_norm, replace_module

# Where the adapters go, per architecture: targets in the format of ``targets.find_targets`` (a list of
# name suffixes, or one regular expression matching the whole name). "attention" is the attention output
# projection, "mlp" the output of the feed-forward block; both come before the residual add.
PLACEMENTS: dict[str, dict[str, str | list[str]]] = {
    "llama": {"attention": ["self_attn.o_proj"], "mlp": ["mlp"]},
    "mistral": {"attention": ["self_attn.o_proj"], "mlp": ["mlp"]},
    "qwen2": {"attention": ["self_attn.o_proj"], "mlp": ["mlp"]},
    "gpt2": {"attention": ["attn.c_proj"], "mlp": ["mlp"]},
    # BERT's feed-forward output is layer.N.output.dense; "output.dense" alone would also match the
    # attention's output projection, layer.N.attention.output.dense, hence the regular expression
    "bert": {"attention": ["attention.output.dense"], "mlp": r".*layer\.\d+\.output\.dense"},
}

NONLINEARITIES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class AdapterConfig:
    bottleneck: int | None = None  # adapter width r; None: hidden_size // reduction_factor
    reduction_factor: int = 16  # used when bottleneck is None (16 is the default of the adapters library)
    nonlinearity: str = "relu"  # relu, gelu, silu or tanh
    residual: bool = True  # add the input back; False loses the identity at initialisation
    placement: tuple[str, ...] = ("attention", "mlp")  # Houlsby: both; Pfeiffer: ("mlp",)
    attention_targets: str | list[str] | None = None  # override PLACEMENTS for an unknown architecture
    mlp_targets: str | list[str] | None = None  # override PLACEMENTS for an unknown architecture
    train_norms: bool = False  # also train the layer norms (Houlsby et al. did; adds 2*d per norm)


@dataclass
class HoulsbyConfig(AdapterConfig):
    placement: tuple[str, ...] = ("attention", "mlp")


@dataclass
class PfeifferConfig(AdapterConfig):
    placement: tuple[str, ...] = ("mlp",)


class Adapter(nn.Module):
    """``h + up(f(down(h)))``, the identity at initialisation (``up`` starts at zero)."""

    def __init__(self, hidden_size: int, bottleneck: int, nonlinearity: str = "relu", residual: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; choose one of {', '.join(NONLINEARITIES)}")
        self.down = nn.Linear(hidden_size, bottleneck, device=device, dtype=dtype)
        self.act = NONLINEARITIES[nonlinearity]()
        self.up = nn.Linear(bottleneck, hidden_size, device=device, dtype=dtype)
        self.residual = residual
        nn.init.zeros_(self.up.weight)  # zero: the adapter adds nothing until it is trained
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.act(self.down(hidden)))  # (B, T, d) -> (B, T, r) -> (B, T, d)
        return hidden + delta if self.residual else delta


class WithAdapter(nn.Module):
    """A frozen module followed by an adapter: ``adapter(module(...))``."""

    def __init__(self, module: nn.Module, adapter: Adapter):
        super().__init__()
        self.module = module
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.module(*args, **kwargs))


def placement_targets(model: nn.Module, config: AdapterConfig) -> dict[str, str | list[str]]:
    """``{"attention": targets, "mlp": targets}`` for ``model``, from the config or from ``PLACEMENTS``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = PLACEMENTS.get(model_type, {})
    chosen = {"attention": config.attention_targets or known.get("attention"),
              "mlp": config.mlp_targets or known.get("mlp")}
    for place in config.placement:
        if place not in chosen:
            raise ValueError(f"unknown adapter placement {place!r}; choose from 'attention' and 'mlp'")
        if chosen[place] is None:
            raise ValueError(f"no default adapter placement for model type {model_type!r} (known: "
                             f"{', '.join(PLACEMENTS)}); pass {place}_targets=[...] in the config")
    return {place: chosen[place] for place in config.placement}


def hidden_size(model: nn.Module) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return config.hidden_size


def adapter_modules(model: nn.Module) -> list[tuple[str, WithAdapter]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WithAdapter)]


def remove_adapters(model: nn.Module) -> nn.Module:
    """Put the original modules back (the adapters and what they learned are dropped)."""
    for name, wrapped in adapter_modules(model):
        replace_module(model, name, wrapped.module)
    return model


def add_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze ``model`` and wrap every placement target with a fresh adapter (in place).

    Stacking two sets of adapters is rarely what was meant, so a model that has adapters is an error
    (through ``apply_method``, the same config again is a no-op: see the methods contract).
    """
    if adapter_modules(model):
        raise ValueError("this model already has adapters; undo them with peftlab.remove_method(model) "
                         "(or peftlab.methods.adapters.remove_adapters) first, or load a fresh base")
    d = hidden_size(model)
    r = config.bottleneck or max(1, d // config.reduction_factor)
    for place, targets in placement_targets(model, config).items():
        # the attention output projection is a linear layer; the feed-forward block may be any module
        types = (nn.Module,) if place == "mlp" else LINEAR_TYPES
        for name, module in find_targets(model, targets, types=types):
            reference = next(module.parameters())
            adapter = Adapter(d, r, config.nonlinearity, config.residual,
                              device=reference.device, dtype=reference.dtype)
            replace_module(model, name, WithAdapter(module, adapter))
    freeze(model)
    for _, wrapped in adapter_modules(model):
        wrapped.adapter.requires_grad_(True)
    if config.train_norms:
        for module in model.modules():
            if is_norm(module):  # LayerNorm, LlamaRMSNorm, ...
                module.requires_grad_(True)
    return model


@register("houlsby", HoulsbyConfig, family="additive", lr=1e-2, grid_centre=1e-2,
          description="bottleneck adapters after attention and after the MLP (Houlsby et al. 2019)")
def apply_houlsby(model, config: HoulsbyConfig, context=None):
    return add_adapters(model, config)


@register("pfeiffer", PfeifferConfig, family="additive", lr=3e-2, grid_centre=3e-2,
          description="bottleneck adapter after the MLP only (Pfeiffer et al. 2021)")
def apply_pfeiffer(model, config: PfeifferConfig, context=None):
    return add_adapters(model, config)


removes("houlsby")(remove_adapters)
removes("pfeiffer")(remove_adapters)
