"""The one place a fine-tuning method keeps its state on a model: ``model.peftlab_state``.

A method's ``apply`` may need to remember things on the model it changed: which method and config
were applied (so applying the same config again is a no-op and another is an error), the training
hooks the loop must call (AdaLoRA's rank allocator, a sparse mask), the trainability flags before it
froze anything (so ``remove_method`` can restore them), and method-specific values (which biases
LoRA trains, the fusion's task order). All of it lives in one ``PeftState`` object, found through
the wrappers that distributed training puts around a model (DDP's and FSDP's ``.module``,
``torch.compile``'s ``._orig_mod``): ``peft_state(DDP(model))`` is ``peft_state(model)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

STATE_ATTRIBUTE = "peftlab_state"


@dataclass
class PeftState:
    method: str | None = None  # the registered method applied to the model
    config: object = None  # its config
    hooks: list = field(default_factory=list)  # training hooks (peftlab.train.Hook) the loop calls
    requires_grad: dict = field(default_factory=dict)  # parameter name -> flag before the method froze anything
    extras: dict = field(default_factory=dict)  # method-specific: {"lora_bias": "all"}, {"fusion_tasks": [...]}


def unwrap_model(model):
    """The model inside any wrappers: DDP's, FSDP's and ``peftlab.distributed``'s ``.module``,
    torch.compile's ``._orig_mod``."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def peft_state(model, create: bool = False) -> PeftState | None:
    """The model's ``PeftState`` (looked up through distributed wrappers); created empty if ``create``."""
    inner = unwrap_model(model)
    state = inner.__dict__.get(STATE_ATTRIBUTE)
    if state is None and create:
        state = PeftState()
        inner.__dict__[STATE_ATTRIBUTE] = state
    return state


def model_hooks(model) -> list:
    """The training hooks a method attached to ``model`` (empty if none), through any wrappers."""
    state = peft_state(model)
    return list(state.hooks) if state is not None else []


def clear_state(model) -> None:
    unwrap_model(model).__dict__.pop(STATE_ATTRIBUTE, None)


__all__ = ["PeftState", "STATE_ATTRIBUTE", "clear_state", "model_hooks", "peft_state", "unwrap_model"]
