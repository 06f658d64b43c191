"""The one base of every low-rank layer: LoRA's ``LoraLayer``, AdaLoRA's ``SVDLinear``, QLoRA's ``QLoraLayer``.

Each wraps a frozen linear layer ``base_layer`` (``nn.Linear``, GPT-2's ``Conv1D``, or QLoRA's
``Linear4bit``) and adds ``scaling * delta(x)``, a low-rank update of the layer's output. What they
share lives here once, as peft's ``BaseTunerLayer`` does for its layers:

- the checks (a linear layer, a positive rank) with the method's name in the message;
- the layout: ``Conv1D`` stores its weight transposed, (d_in, d_out), so ``fan_in_fan_out`` is True
  and ``delta_weight`` is transposed to match, while the adapter matrices keep ``nn.Linear``'s layout;
- the adapter dtype: fp32 unless the base is fp32 or wider (16-bit and quantized bases keep an fp32
  adapter, as peft's ``autocast_adapter_dtype`` does);
- ``weight`` / ``bias`` proxies, so code that reads ``layer.weight`` (dtype, device) sees the base's;
- ``forward`` = base output + ``scaling * update(x)`` unless merged; ``merge`` / ``unmerge`` add or
  subtract ``delta_weight()`` in place; ``unload`` gives the base layer back.

A subclass creates its parameters and implements ``update(x)`` and ``delta_weight()``.
"""
from __future__ import annotations

import torch
from torch import nn

from .targets import LINEAR_TYPES, Conv1D


class LowRankLayer(nn.Module):
    method = "a low-rank method"  # named in error messages

    def __init__(self, base_layer: nn.Module, r: int, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base_layer, LINEAR_TYPES):
            raise TypeError(f"{self.method} adapts nn.Linear or Conv1D layers, not {type(base_layer).__name__}")
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"{self.method}'s rank must be a positive integer, got {r!r}")
        self.base_layer = base_layer
        self.fan_in_fan_out = bool(Conv1D) and isinstance(base_layer, Conv1D)
        weight = base_layer.weight
        self.in_features, self.out_features = weight.shape if self.fan_in_fan_out else weight.shape[::-1]
        self.r = r
        self.adapter_dtype = weight.dtype if weight.is_floating_point() and weight.element_size() >= 4 else torch.float32
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.scaling = 1.0

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank term before scaling: (..., d_in) -> (..., d_out)."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """``scaling`` times the update's matrix, in the base weight's layout."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result  # the update already sits in the base weight
        update = self.update(self.lora_dropout(x.to(self.adapter_dtype)))
        return (result + update * self.scaling).to(result.dtype)

    def _oriented(self, delta: torch.Tensor) -> torch.Tensor:
        """A (d_out, d_in) matrix in the base weight's layout."""
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight; forward then runs the base layer alone."""
        if not self.merged:
            weight = self.base_layer.weight
            weight += self.delta_weight().to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (exact up to floating-point rounding)."""
        if self.merged:
            weight = self.base_layer.weight
            weight -= self.delta_weight().to(weight.dtype)
            self.merged = False

    def unload(self) -> nn.Module:
        """The base layer, without the update (unmerged first if it was merged)."""
        self.unmerge()
        return self.base_layer


def unload_low_rank(model: nn.Module, layer_type: type = LowRankLayer) -> nn.Module:
    """Put every ``layer_type`` layer's base layer back in its place (what the update learned is dropped)."""
    from .targets import replace_module

    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, layer_type)]:
        replace_module(model, name, layer.unload())
    return model


__all__ = ["LowRankLayer", "unload_low_rank"]
