"""Full fine-tuning, the baseline every parameter-efficient method is measured against.

Every weight receives a gradient and an optimizer state: for AdamW in fp32 that is 4 (weight) + 4
(gradient) + 8 (two moments) = 16 bytes per parameter, before activations. Also here: ``base``, the
untouched pretrained model, the reference row of every comparison (nothing trains).

Three regularized variants answer the obvious objection to "full fine-tuning forgets more" (is it
only a matter of regularizing it?), as in Biderman et al. 2024: ``full_wd`` (AdamW weight decay),
``full_dropout`` (dropout on the output of every attention and MLP block, as GPT-2's residual
dropout) and ``full_replay`` (a quarter of every batch is source data the base was trained on).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from ..memory.estimate import MethodCounts, Sizing
from ..state import peft_state
from . import register, removes
from .targets import is_norm, output_head_name


@dataclass
class FullFinetuneConfig:
    train_embeddings: bool = True  # also train the (tied) token embeddings and output head
    train_norms: bool = True  # also train the RMSNorm / LayerNorm gains
    dropout: float = 0.0  # dropout on the output of every attention and MLP block, training only


BLOCK_OUTPUTS = ("self_attn", "mlp", "attn")  # Llama's and GPT-2's attention and MLP modules


def _residual_dropout_hook(p: float):
    def hook(module, args, output):
        if not module.training:
            return output
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (F.dropout(output[0], p, training=True),) + tuple(output[1:])
        return F.dropout(output, p, training=True)

    return hook


def add_residual_dropout(model, p: float) -> list:
    """Dropout ``p`` on the output of every attention and MLP block; returns the hooks' handles
    (``handle.remove()`` takes one off)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), not {p}")
    blocks = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in BLOCK_OUTPUTS]
    return [module.register_forward_hook(_residual_dropout_hook(p)) for module in blocks]


def _apply_full(model, config: FullFinetuneConfig, context=None):
    head = output_head_name(model)
    frozen = set()  # ids of the parameters the config leaves out
    for name, module in model.named_modules():
        if (not config.train_embeddings and (isinstance(module, nn.Embedding) or (head and name == head))) or \
                (not config.train_norms and is_norm(module)):
            frozen.update(id(p) for p in module.parameters())
    for param in model.parameters():
        param.requires_grad_(id(param) not in frozen)
    if config.dropout:
        peft_state(model, create=True).extras["dropout_hooks"] = add_residual_dropout(model, config.dropout)
    return model


def _remove_full(model):
    state = peft_state(model)
    for handle in state.extras.get("dropout_hooks", []) if state is not None else ():
        handle.remove()
    return model


def _count_full(shape, total: int, setting: dict) -> MethodCounts:
    return MethodCounts(total, 0, 0, train_weights=True, norms_train=True)


# The memory estimator's rule: every parameter trains (a config that freezes embeddings or norms: not sized).
SIZING = Sizing("full fine-tuning: every parameter trains", _count_full,
                of_config=lambda config: {} if config.train_embeddings and config.train_norms else None)

apply_full = register("full", FullFinetuneConfig, family="baseline", lr=3.162e-4, grid_centre=1e-3, sizing=SIZING,
                      description="full fine-tuning: every weight trains")(_apply_full)


@dataclass
class FullDropoutConfig(FullFinetuneConfig):
    dropout: float = 0.1  # dropout on the output of every attention and MLP block, training only


WEIGHT_DECAY = 0.1  # AdamW's decoupled decay, a common fine-tuning setting
REPLAY = 0.25  # share of every batch drawn from the source data


register("full_wd", FullFinetuneConfig, family="baseline", lr=1e-3, grid_centre=1e-3, sizing=SIZING,
         train_options={"weight_decay": WEIGHT_DECAY},
         description=f"full fine-tuning with AdamW weight decay {WEIGHT_DECAY}")(_apply_full)
register("full_dropout", FullDropoutConfig, family="baseline", lr=1e-3, grid_centre=1e-3, sizing=SIZING,
         description="full fine-tuning with dropout 0.1 on every attention and MLP output")(_apply_full)
register("full_replay", FullFinetuneConfig, family="baseline", lr=1e-3, grid_centre=1e-3, sizing=SIZING,
         train_options={"replay": REPLAY},
         description=f"full fine-tuning with replay: {REPLAY:.0%} of every batch is source data")(_apply_full)
for _name in ("full", "full_wd", "full_dropout", "full_replay"):
    removes(_name)(_remove_full)


@dataclass
class BaseConfig:
    pass


@register("base", BaseConfig, family="reference", lr=0.0, trains=False,
          description="the pretrained base, untouched (reference row)")
def apply_base(model, config: BaseConfig, context=None):
    model.requires_grad_(False)
    return model
