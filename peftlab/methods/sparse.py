"""Sparse fine-tuning with a fixed mask: the Fisher-information mask (FISH) and a random mask.

Sung, Nair & Raffel 2021, "Training Neural Networks with Fixed Sparse Masks" (NeurIPS). Score every
parameter by the diagonal of the empirical Fisher information over N training examples,

    F_j = sum_{i=1..N} (d log p(y_i | x_i) / d theta_j)^2      (true labels y_i, one gradient per example)

keep the top k of all parameters (or of each tensor), and train only those. The mask is fixed before
training and never changes. The baseline the paper compares against: a random mask of the same size.

Three things make "only the masked weights change" true, bitwise:

1. the gradient is masked inside backward (a tensor hook), so gradient clipping sees the masked norm;
2. AdamW's decoupled weight decay multiplies *every* weight by ``1 - lr * wd``, gradient or not, so a
   masked gradient is not enough: after every optimizer step the weights outside the mask are put
   back from a copy of the base (``restore_outside``);
3. the result is saved as a sparse difference: the flat indices that changed and their new values
   (not ``new - base``: ``base + (new - base)`` need not round back to ``new``), so loading it onto the
   base reproduces the fine-tuned model exactly.

What it costs (the honest part): the gradient is still computed and stored dense for every tensor the
mask touches, and AdamW keeps dense moments for them; only a sparse optimizer state (2 moments at the
kept entries + their indices) and the sparse checkpoint are small. ``mask_costs`` counts each.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import world
from ..data import IGNORE_INDEX, collate, encode_example
from ..state import model_hooks, peft_state
from ..train import Hook, attach_hook
from . import RunContext, register
from .targets import freeze

# --------------------------------------------------------------------------- the empirical Fisher


def named_parameters_once(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters by name, each shared tensor once (the tied embedding / LM head)."""
    return dict(model.named_parameters())


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(target | prompt) per sequence: the sum over target tokens (logits (B, T, V), labels (B, T))."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t+1
    mask = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return -(logp * mask).sum(1)  # (B,)


def fisher_information(model: nn.Module, tokenizer, examples: Sequence[world.Example], batch_size: int = 8,
                       vectorized: bool = False, max_length: int = 256,
                       progress: bool = False) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: per-example squared gradients of the true-label NLL, summed over ``examples``.

    By default one backward pass per example. ``vectorized=True`` computes ``batch_size`` per-example
    gradients at once with ``torch.func.vmap`` (same numbers up to float rounding; on a CPU it is
    slower, as vmap has no batching rule for attention there). Sequences are then right-padded
    without an attention mask: under causal attention a pad at the end cannot change any earlier
    position, and pads carry no loss. Dropout is off (eval mode).
    """
    if not examples:
        raise ValueError("the Fisher needs examples: pass a non-empty list of peftlab.world.Example")
    params = named_parameters_once(model)
    device = next(model.parameters()).device
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    was_training, grad_flags = model.training, {name: p.requires_grad for name, p in params.items()}
    model.eval()
    if not vectorized:
        for p in params.values():
            p.requires_grad_(True)
    chunks = range(0, len(examples), batch_size if vectorized else 1)
    try:
        for start in tqdm(chunks, desc="fisher", disable=not progress, leave=False):
            chunk = examples[start:start + (batch_size if vectorized else 1)]
            batch = collate([encode_example(tokenizer, ex, max_length) for ex in chunk], tokenizer.pad_token_id)
            ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
            if vectorized:
                grads = _per_example_grads(model, params, ids, labels)
                for name, g in grads.items():
                    fisher[name] += g.float().pow(2).sum(0)  # (B, *shape) -> shape
            else:
                grads = torch.autograd.grad(sequence_nll(model(input_ids=ids).logits, labels).sum(),
                                            list(params.values()), allow_unused=True)
                for name, g in zip(params, grads):
                    if g is not None:
                        fisher[name] += g.float().pow(2)
    finally:
        model.train(was_training)
        for name, p in params.items():
            p.requires_grad_(grad_flags[name])
    return fisher


def _per_example_grads(model, params: dict[str, torch.Tensor], ids: torch.Tensor, labels: torch.Tensor):
    from torch.func import functional_call, grad, vmap

    detached = {name: p.detach() for name, p in params.items()}

    def nll(p, one_ids, one_labels):  # one example: (T,) -> scalar
        logits = functional_call(model, p, (one_ids.unsqueeze(0),)).logits
        return sequence_nll(logits, one_labels.unsqueeze(0))[0]

    with warnings.catch_warnings():  # "no batching rule for scaled_dot_product_attention": slower, still exact
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        return vmap(grad(nll), in_dims=(None, 0, 0))(detached, ids, labels)


# --------------------------------------------------------------------------- masks


def n_keep(total: int, keep_fraction: float) -> int:
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    return max(1, round(keep_fraction * total))


def top_k_mask(scores: dict[str, torch.Tensor], keep_fraction: float, per_tensor: bool = False) -> dict[str, torch.Tensor]:
    """Boolean masks keeping the ``keep_fraction`` highest scores over all tensors (or within each tensor)."""
    if per_tensor:
        return {name: _top_k_flat(s.flatten(), n_keep(s.numel(), keep_fraction)).view_as(s)
                for name, s in scores.items()}
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    keep = _top_k_flat(flat, n_keep(flat.numel(), keep_fraction))
    return _split(keep, scores)


def random_mask(params: dict[str, torch.Tensor], keep_fraction: float, per_tensor: bool = False,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """A uniformly random mask with exactly as many kept entries as ``top_k_mask`` would keep."""
    generator = torch.Generator().manual_seed(seed)
    return top_k_mask({name: torch.rand(p.shape, generator=generator) for name, p in params.items()},
                      keep_fraction, per_tensor)


def _top_k_flat(flat: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    return keep


def _split(flat_mask: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for name, t in like.items():
        out[name] = flat_mask[offset:offset + t.numel()].view(t.shape)
        offset += t.numel()
    return out


def masks_without(select, scores: dict[str, torch.Tensor], exclude=()) -> dict[str, torch.Tensor]:
    """``select(scores)`` over the tensors whose names contain none of ``exclude``; the rest get empty masks."""
    eligible = {name: s for name, s in scores.items() if not any(e in name for e in exclude)}
    if not eligible:
        raise ValueError(f"exclude={tuple(exclude)!r} leaves no parameter to train; names look like: "
                         f"{', '.join(list(scores)[:4])}, ...")
    masks = select(eligible)
    return {name: masks[name] if name in masks else torch.zeros(s.shape, dtype=torch.bool, device=s.device)
            for name, s in scores.items()}


def mask_size(masks: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


# --------------------------------------------------------------------------- training with a fixed mask


class MaskedUpdate(Hook):
    """Keeps training inside ``masks``: masks gradients in backward, restores the rest after each step."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], restore_outside: bool = True):
        params = named_parameters_once(model)
        unknown = set(masks) - set(params)
        if unknown:
            raise ValueError(f"mask names not in the model: {', '.join(sorted(unknown))}")
        self.restore_outside = restore_outside
        self.masks, self.reference, self.handles, self.hooked = {}, {}, [], {}
        for name, mask in masks.items():
            if not mask.any():
                continue  # nothing kept: the tensor stays frozen and never enters the optimizer
            self.masks[name] = mask.to(params[name].device)
            self.reference[name] = params[name].detach().clone()  # the base values, to restore and to diff against
        self.hook_gradients(model)

    def hook_gradients(self, model: nn.Module) -> None:
        """Mask each trained tensor's gradient inside backward (again if the model was copied since)."""
        params = named_parameters_once(model)
        if self.hooked == {name: id(params[name]) for name in self.masks}:
            return
        for handle in self.handles:
            handle.remove()
        self.handles = [params[name].register_hook(lambda grad, mask=mask: grad * mask)
                        for name, mask in self.masks.items()]
        self.hooked = {name: id(params[name]) for name in self.masks}

    def extra_loss(self, model, step):
        self.hook_gradients(model)  # called before every backward: a deep-copied model gets its hooks back
        return None

    def trained(self, model: nn.Module):
        params = named_parameters_once(model)
        return [(name, params[name], mask) for name, mask in self.masks.items()]

    def before_step(self, model, step, optimizer):
        for _, param, mask in self.trained(model):  # the backward hook did this already; cheap insurance
            if param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def after_step(self, model, step, optimizer):
        if not self.restore_outside:
            return
        for name, param, mask in self.trained(model):
            param.copy_(torch.where(mask, param, self.reference[name]))

    def trained_count(self) -> int:
        """Entries that train: what the optimizer really updates (``peftlab.methods.trainable_count``)."""
        return mask_size(self.masks)

    def remove(self, model: nn.Module) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.hooked = [], {}
        state = peft_state(model)
        if state is not None and self in state.hooks:
            state.hooks.remove(self)


def get_mask_hook(model: nn.Module) -> MaskedUpdate | None:
    return next((h for h in model_hooks(model) if isinstance(h, MaskedUpdate)), None)


def apply_mask(model: nn.Module, masks: dict[str, torch.Tensor], restore_outside: bool = True) -> nn.Module:
    """Freeze ``model`` except the tensors ``masks`` touches, and keep updates inside the mask.

    Idempotent: a mask already on the model is removed first (the new one replaces it).
    """
    old = get_mask_hook(model)
    if old is not None:
        old.remove(model)
    hook = MaskedUpdate(model, masks, restore_outside)
    freeze(model)
    for _, param, _ in hook.trained(model):
        param.requires_grad_(True)
    attach_hook(model, hook)
    return model


def get_mask(model: nn.Module) -> dict[str, torch.Tensor]:
    hook = get_mask_hook(model)
    if hook is None:
        raise ValueError("this model has no sparse mask: apply 'fisher' or 'random_mask' first")
    return hook.masks


# --------------------------------------------------------------------------- the sparse difference


def _state(base) -> dict[str, torch.Tensor]:
    if isinstance(base, nn.Module):
        return {name: p.detach() for name, p in named_parameters_once(base).items()}
    return base


def sparse_difference(model: nn.Module, base=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (flat indices, new values)}`` of every entry of ``model`` that differs (bitwise) from ``base``.

    ``base`` is a model or a ``{name: tensor}`` dict; by default the copy the mask hook kept.
    """
    if base is None:
        hook = get_mask_hook(model)
        if hook is None:
            raise ValueError("pass base= (the model or state dict before fine-tuning): this model has no mask hook")
        reference = hook.reference
    else:
        reference = _state(base)
    diff = {}
    for name, param in named_parameters_once(model).items():
        if name not in reference:
            continue  # a tensor the mask never touched is unchanged by construction
        new, old = param.detach().flatten(), reference[name].to(param.device).flatten()
        index = (bits(new) != bits(old)).nonzero().flatten()  # bitwise: -0.0 vs 0.0 and NaNs count too
        if index.numel():
            index_dtype = torch.int32 if new.numel() < 2**31 else torch.int64
            diff[name] = (index.to(index_dtype).cpu(), new[index].cpu().clone())
    return diff


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``t`` as integers, for bitwise comparison."""
    return t.contiguous().view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def save_sparse_difference(model: nn.Module, path: str | Path, base=None) -> int:
    """Save the sparse difference as safetensors (``<name>.indices``, ``<name>.values``); return its bytes."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (index, values) in sparse_difference(model, base).items():
        tensors[f"{name}.indices"], tensors[f"{name}.values"] = index, values
    path = Path(path)
    save_file(tensors, str(path), metadata={"format": "peftlab-sparse-difference"})
    return path.stat().st_size


@torch.no_grad()
def load_sparse_difference(model: nn.Module, path: str | Path) -> nn.Module:
    """Write the saved values at the saved indices of ``model`` (the base), in place; return it."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    params = named_parameters_once(model)
    for key in tensors:
        if not key.endswith(".indices"):
            continue
        name = key[: -len(".indices")]
        if name not in params:
            raise ValueError(f"the sparse difference names {name!r}, which this model does not have")
        flat = params[name].view(-1)
        flat[tensors[key].long().to(flat.device)] = tensors[f"{name}.values"].to(flat.device, flat.dtype)
    return model


# --------------------------------------------------------------------------- what it costs


def mask_costs(model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> dict[str, int]:
    """Bytes of each piece of training and storing with a fixed mask, next to full fine-tuning (fp32 AdamW).

    - ``dense_grad``: the ``.grad`` tensors of every tensor the mask touches (what the loop really holds);
    - ``dense_adam``: AdamW's two dense moments for those tensors (what ``torch.optim.AdamW`` really holds);
    - ``sparse_adam``: two moments at the kept entries plus their int32 indices (a sparse optimizer's state);
    - ``reference``: the copy of the base kept to restore weights outside the mask;
    - ``sparse_checkpoint``: kept entries as int32 index + value; ``full_checkpoint``: every weight.
    """
    masks = get_mask(model) if masks is None else masks
    params = named_parameters_once(model)
    touched = [params[n] for n, m in masks.items() if m.any()]
    kept = mask_size(masks)
    value_bytes = next(model.parameters()).element_size()
    full = sum(p.numel() * p.element_size() for p in params.values())
    dense = sum(p.numel() * p.element_size() for p in touched)
    return {
        "kept": kept, "total": sum(p.numel() for p in params.values()),
        "full_grad": full, "dense_grad": dense,
        "full_adam": 2 * full, "dense_adam": 2 * dense, "sparse_adam": kept * (2 * 4 + 4),
        "reference": dense,
        "full_checkpoint": full, "sparse_checkpoint": kept * (4 + value_bytes),
    }


# --------------------------------------------------------------------------- the registered methods


def tokenizer_for(model: nn.Module):
    """The tokenizer saved with ``model`` (found from ``model.name_or_path``), with a pad token."""
    from ..models import load_tokenizer

    path = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
    if not path:
        raise ValueError("cannot find this model's tokenizer (it was not loaded from a folder): "
                         "pass tokenizer= in the method's config")
    # a model read from a GGUF file (load_base("smollm2")) has its tokenizer inside that file
    quantization = getattr(getattr(model, "config", None), "quantization_config", None)
    gguf_file = (quantization.get("gguf_file") if isinstance(quantization, dict)
                 else getattr(quantization, "gguf_file", None))
    return load_tokenizer(path, **({"gguf_file": gguf_file} if gguf_file else {}))


@dataclass
class FisherMaskConfig:
    keep_fraction: float = 0.005  # fraction of all parameters that train (Sung et al.: 0.5%)
    per_tensor: bool = False  # keep the top fraction of each tensor instead of the top over the whole model
    exclude: tuple[str, ...] = ()  # parameters whose names contain one of these never train, e.g. ("embed_tokens",)
    task: str | None = None  # task whose training examples the Fisher sums over; None: the run's (else new_people)
    n_samples: int = 128  # N: examples the Fisher sums over
    example_seed: int | None = None  # which training examples (task.train_examples(N, example_seed)); None: the run's seed
    restore_outside: bool = True  # put weights outside the mask back after every step (AdamW's weight decay moves them)
    vectorized: bool = False  # per-example gradients in chunks with torch.func.vmap (worth it on a GPU)
    examples: Sequence[world.Example] | None = field(default=None, repr=False)  # use these instead of the task's
    tokenizer: object = field(default=None, repr=False)  # default: the tokenizer saved with the model


@register("fisher", FisherMaskConfig, family="selective", lr=1e-2, grid_centre=1e-2,
          description="sparse fine-tuning: a fixed mask of the top Fisher-information weights (Sung et al. 2021)")
def apply_fisher(model: nn.Module, config: FisherMaskConfig, context=None) -> nn.Module:
    """The Fisher over the run's examples (``context``) unless the config names its own: ``examples``,
    or ``task`` and ``example_seed``."""
    context = context or RunContext()
    examples = config.examples
    if examples is None and config.task is None and context.examples:
        examples = context.examples
    if examples is None:
        seed = context.seed if config.example_seed is None else config.example_seed
        examples = world.get_task(config.task or context.task or "new_people").train_examples(config.n_samples, seed=seed)
    tokenizer = config.tokenizer if config.tokenizer is not None else context.tokenizer or tokenizer_for(model)
    fisher = fisher_information(model, tokenizer, list(examples)[:config.n_samples], vectorized=config.vectorized)
    masks = masks_without(lambda scores: top_k_mask(scores, config.keep_fraction, config.per_tensor), fisher,
                          config.exclude)
    return apply_mask(model, masks, config.restore_outside)


@dataclass
class RandomMaskConfig:
    keep_fraction: float = 0.005  # same default as the Fisher mask, so the two have the same size
    per_tensor: bool = False  # the same number of entries per tensor as a per-tensor Fisher mask would keep
    exclude: tuple[str, ...] = ()  # as for the Fisher mask: the same exclusions give the same mask size
    mask_seed: int | None = None  # which random mask; None: the run's seed
    restore_outside: bool = True  # put weights outside the mask back after every step


@register("random_mask", RandomMaskConfig, family="selective", lr=1e-2, grid_centre=1e-2,
          description="sparse fine-tuning with a random mask of the Fisher mask's size (the paper's baseline)")
def apply_random_mask(model: nn.Module, config: RandomMaskConfig, context=None) -> nn.Module:
    seed = (context.seed if context is not None else 0) if config.mask_seed is None else config.mask_seed
    params = {name: p.detach() for name, p in named_parameters_once(model).items()}
    masks = masks_without(lambda eligible: random_mask(eligible, config.keep_fraction, config.per_tensor, seed),
                          params, config.exclude)
    return apply_mask(model, masks, config.restore_outside)


__all__ = [
    "FisherMaskConfig", "MaskedUpdate", "RandomMaskConfig", "apply_mask", "fisher_information", "get_mask",
    "load_sparse_difference", "mask_costs", "mask_size", "masks_without", "random_mask", "save_sparse_difference",
    "sequence_nll", "sparse_difference", "top_k_mask",
]
