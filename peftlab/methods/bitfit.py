"""BitFit: fine-tune only the bias terms.

Ben Zaken, Ravfogel & Goldberg 2021, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models". Every layer computes ``y = W x + b``; BitFit freezes every
``W`` and trains every ``b`` (plus a task head where the task has one). On BERT-base that is about
0.1% of the parameters.

Many modern architectures have no bias terms at all (Llama-style models build their projections with
``bias=False``). There BitFit has nothing to train, and ``apply`` says so. ``add_missing_biases=True``
adds a zero-initialised bias to every linear layer that lacks one: the model computes exactly what it
computed before, and the new biases are what trains. That is a change of architecture (the biases must
be saved with the model), so it is an explicit option, never a silent default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..memory.estimate import MethodCounts, Sizing
from . import register
from .targets import LINEAR_TYPES, freeze, is_norm, output_head_name


@dataclass
class BitFitConfig:
    add_missing_biases: bool = False  # add zero-initialised biases to linear layers without one (changes the architecture)
    include_norm_biases: bool = True  # LayerNorm's shift (beta) counts as a bias (BERT, GPT-2); RMSNorm has none
    head_names: tuple[str, ...] = ("classifier", "score")  # task heads that train fully where the model has one


def bias_parameters(model: nn.Module, include_norm_biases: bool = True) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every bias term of ``model``, each shared tensor once."""
    found, seen = [], set()
    for module_name, module in model.named_modules():
        bias = module._parameters.get("bias")
        if bias is None or id(bias) in seen:
            continue
        if is_norm(module) and not include_norm_biases:
            continue
        seen.add(id(bias))
        found.append((f"{module_name}.bias" if module_name else "bias", bias))
    return found


def linear_layers_without_bias(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear layers (``nn.Linear``, GPT-2's ``Conv1D``) with no bias, except the output head."""
    head = output_head_name(model)
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, LINEAR_TYPES) and name != head and module.bias is None]


def add_zero_biases(model: nn.Module) -> list[str]:
    """Give every bias-less linear layer (except the output head) a zero bias; return their names.

    Zero biases leave every output unchanged, so the model is the same function until it trains.
    """
    added = []
    for name, module in linear_layers_without_bias(model):
        weight = module.weight
        out_features = weight.shape[0] if isinstance(module, nn.Linear) else weight.shape[1]  # Conv1D: (in, out)
        module.bias = nn.Parameter(torch.zeros(out_features, dtype=weight.dtype, device=weight.device))
        added.append(name)
    config = getattr(model, "config", None)
    if added and config is not None:  # so save_pretrained / from_pretrained build the biases back
        for flag in ("attention_bias", "mlp_bias"):
            if hasattr(config, flag):
                setattr(config, flag, True)
    return added


def no_bias_message(model: nn.Module) -> str:
    missing = linear_layers_without_bias(model)
    kinds = sorted({name.rsplit(".", 1)[-1] for name, _ in missing})
    arch = type(model).__name__
    hint = ""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "attention_bias"):
        hint = (f" (its config has attention_bias={config.attention_bias}"
                + (f", mlp_bias={config.mlp_bias}" if hasattr(config, "mlp_bias") else "") + ")")
    return (f"BitFit trains bias terms, but this {arch} has none{hint}: its {len(missing)} linear layers "
            f"({', '.join(kinds) or 'none'}) were built with bias=False, as in most Llama-style models. "
            "Use a model with biases (GPT-2, BERT, the tiny base), or pass add_missing_biases=True to add "
            "zero-initialised biases to those layers: outputs are unchanged at first and only the new "
            "biases train (they are new parameters, saved with the model).")


def _count_bitfit(shape, total: int, setting: dict) -> MethodCounts:
    biases = shape.bias_parameters()  # GPT-2's include its LayerNorms' shifts, which then train
    return MethodCounts(biases, total - biases, 0, train_weights=False, norms_train=shape.family == "gpt2")


def _bitfit_setting(config: BitFitConfig) -> dict | None:
    return {} if config.include_norm_biases and not config.add_missing_biases else None


@register("bitfit", BitFitConfig, family="selective", lr=1e-1, grid_centre=1e-2,
          description="BitFit: only the bias terms train (Ben Zaken et al. 2021)",
          sizing=Sizing("BitFit: only bias terms train (Llama-2/3 have none)", _count_bitfit, of_config=_bitfit_setting))
def apply_bitfit(model: nn.Module, config: BitFitConfig, context=None) -> nn.Module:
    """Freeze ``model`` and train its bias terms. A comparison run (``context.adapt_architecture``) adds
    zero biases to a model that has none, as ``add_missing_biases=True`` would."""
    adapt = context is not None and context.adapt_architecture and not bias_parameters(model)
    if config.add_missing_biases or adapt:
        add_zero_biases(model)  # idempotent: a second call finds nothing missing
    biases = bias_parameters(model, config.include_norm_biases)
    if not biases:
        raise ValueError(no_bias_message(model))
    freeze(model)
    for _, bias in biases:
        bias.requires_grad_(True)
    for name, module in model.named_modules():
        if name and name.rsplit(".", 1)[-1] in config.head_names:
            module.requires_grad_(True)
    return model
