"""Full fine-tuning, the baseline every parameter-efficient method is measured against.

Every weight receives a gradient and an optimizer state: for AdamW in fp32 that is 4 (weight) + 4
(gradient) + 8 (two moments) = 16 bytes per parameter, before activations. Also here: ``base``, the
untouched pretrained model, the reference row of every comparison (nothing trains).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import register


@dataclass
class FullFinetuneConfig:
    train_embeddings: bool = True  # also train the (tied) token embeddings and output head
    train_norms: bool = True  # also train the RMSNorm / LayerNorm gains


@register("full", FullFinetuneConfig, family="baseline", lr=1e-3,
          description="full fine-tuning: every weight trains")
def apply_full(model, config: FullFinetuneConfig):
    for name, param in model.named_parameters():
        trainable = True
        if not config.train_embeddings and ("embed" in name or "lm_head" in name or "wte" in name or "wpe" in name):
            trainable = False
        if not config.train_norms and "norm" in name:
            trainable = False
        param.requires_grad_(trainable)
    return model


@dataclass
class BaseConfig:
    pass


@register("base", BaseConfig, family="reference", lr=0.0, trains=False,
          description="the pretrained base, untouched (reference row)")
def apply_base(model, config: BaseConfig):
    model.requires_grad_(False)
    return model
