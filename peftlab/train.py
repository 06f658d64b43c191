"""One training loop for every method: full fine-tuning, adapters, LoRA, masks, adaptive rank.

The loop knows nothing about methods. It optimizes whatever parameters have ``requires_grad``, and
calls *hooks* at three points so methods that act during training can do so without a loop of
their own:

- ``extra_loss(model, step)``: a term added to the loss (AdaLoRA's orthogonality regularizer);
- ``before_step(model, step, optimizer)``: after backward, before the optimizer (mask a gradient,
  accumulate an importance score);
- ``after_step(model, step, optimizer)``: after the optimizer (restore masked weights, prune rank).

Hooks come from the ``hooks=`` argument and from the model's state (``peftlab.state``: a method's
``apply`` attaches them with ``attach_hook``). A wrapped model (DDP, FSDP, ``peftlab.distributed``'s
wrapper, ``torch.compile``) prefixes every parameter name, so hooks are found on, and called with,
the model inside the wrappers (``unwrap_model``).

Mixed precision follows the device: bf16 autocast on GPUs that support it, fp16 autocast with a
GradScaler on the others (Colab's T4), fp32 on a CPU.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .data import batches
from .memory.probe import optimizer_state_bytes
from .state import model_hooks, peft_state, unwrap_model
from .utils import get_autocast_dtype, set_seed, unique_parameters
from . import world
from .world import Example


class Hook:
    """Base class for training hooks; override what you need.

    The loop calls the three training points; ``peftlab.methods`` calls the other two on a hook a method
    attached: ``trained_count`` (how many entries the optimizer really updates, where the hook restricts
    that: a sparse mask) and ``remove`` (undo what the hook changed on the model, for ``remove_method``).
    """

    def extra_loss(self, model, step: int) -> torch.Tensor | None:
        return None

    def before_step(self, model, step: int, optimizer) -> None:
        pass

    def after_step(self, model, step: int, optimizer) -> None:
        pass

    def trained_count(self) -> int | None:
        """Entries that train, if this hook restricts the update; None: ``requires_grad`` says."""
        return None

    def remove(self, model) -> None:
        """Undo what the hook attached to ``model`` (gradient hooks); nothing by default."""


def attach_hook(model, hook: Hook) -> None:
    """Make ``hook`` part of ``model``'s state so every training loop that sees the model calls it."""
    if not isinstance(hook, Hook):  # remove_method and trainable_count call Hook's whole interface
        raise TypeError(f"a training hook must subclass peftlab.train.Hook, not {type(hook).__name__}")
    peft_state(model, create=True).hooks.append(hook)


@dataclass
class TrainConfig:
    steps: int = 150  # optimizer steps
    batch_size: int = 16  # examples per step
    lr: float = 1e-3  # peak learning rate (linear warm-up, then the schedule)
    warmup: int = 10  # warm-up steps
    schedule: str = "cosine"  # after warm-up: "cosine" (decay to 10% at `steps`) or "constant"
    weight_decay: float = 0.0  # AdamW weight decay (0: a method's frozen/zero-init parts stay put)
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    seed: int = 0  # data order and dropout
    eval_every: int = 0  # call eval_fn every this many steps (0: only at the end)
    eval_at: tuple[int, ...] = ()  # and after these steps (checkpoints of a sweep)
    max_length: int = 256  # truncate examples to this many tokens
    mixed_precision: bool = True  # 16-bit autocast where the device supports it
    replay: float = 0.0  # share of every batch drawn from source data (world.source_documents) against forgetting


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, dict]] = field(default_factory=list)  # (step, eval_fn result)
    seconds: float = 0.0
    tokens: int = 0  # non-padding tokens seen
    grad_bytes: int = 0  # bytes held in .grad tensors at the optimizer step
    optimizer_state_bytes: int = 0  # bytes of the optimizer's per-parameter state (memory.optimizer_state_bytes)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(len(self.losses), 1)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return unique_parameters(model, trainable_only=True)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters: did the method freeze everything? "
                         "Apply a method (e.g. peftlab.apply_method(model, 'full')) before training.")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def warmup_factor(step: int, warmup: int, steps: int, floor: float | None) -> float:
    """Multiplier of the peak rate at ``step``: linear warm-up over ``warmup`` steps, then a cosine decay
    to ``floor`` at ``steps`` (``floor=None``: constant). Fine-tuning and pretraining both use it."""
    if step < warmup:
        return (step + 1) / warmup
    if floor is None:
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def lr_schedule(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the peak rate at ``step``: linear warm-up, then cosine decay to 10% (or constant:
    with ``schedule="constant"`` a checkpoint after k steps is exactly a k-step run, which lets one
    sweep run stand for every shorter training length)."""
    if cfg.schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', not {cfg.schedule!r}")
    floor = 0.1 if cfg.schedule == "cosine" else None
    return lambda step: warmup_factor(step, cfg.warmup, cfg.steps, floor)


def train(model, tokenizer, examples: Sequence[Example], cfg: TrainConfig = TrainConfig(),
          hooks: Sequence[Hook] = (), eval_fn: Callable[[object], dict] | None = None,
          progress: bool = True, desc: str = "train") -> TrainResult:
    """Fine-tune ``model`` on ``examples`` (loss on targets only) for ``cfg.steps`` steps."""
    if not examples:
        raise ValueError("no training examples: pass a non-empty list of peftlab.world.Example")
    set_seed(cfg.seed)
    device = next(model.parameters()).device
    inner = unwrap_model(model)  # what the hooks see: names and attributes without a wrapper's prefix
    hooks = list(hooks) + model_hooks(inner)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg))
    amp_dtype = get_autocast_dtype(device) if cfg.mixed_precision else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    replay = world.source_documents(cfg.seed) if cfg.replay else ()
    stream = batches(tokenizer, examples, cfg.batch_size, seed=cfg.seed, max_length=cfg.max_length,
                     replay=replay, replay_fraction=cfg.replay)
    result = TrainResult()
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        batch = {k: v.to(device) for k, v in next(stream).items()}
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = model(**batch).loss
            for hook in hooks:
                extra = hook.extra_loss(inner, step)
                if extra is not None:
                    loss = loss + extra
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable_parameters(model), cfg.grad_clip)
        for hook in hooks:
            hook.before_step(inner, step, optimizer)
        if step == 0:
            result.grad_bytes = sum(p.grad.numel() * p.grad.element_size()
                                    for p in trainable_parameters(model) if p.grad is not None)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for hook in hooks:
            hook.after_step(inner, step, optimizer)
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
        result.losses.append(float(loss.detach()))
        result.tokens += int(batch["attention_mask"].sum())
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
        checkpoint = (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or (step + 1) in cfg.eval_at
        if eval_fn is not None and checkpoint and step + 1 < cfg.steps:
            result.seconds += time.perf_counter() - start
            result.evals.append((step + 1, eval_fn(model)))
            model.train()
            start = time.perf_counter()
    result.seconds += time.perf_counter() - start
    if eval_fn is not None:
        result.evals.append((cfg.steps, eval_fn(model)))
    model.eval()
    return result
