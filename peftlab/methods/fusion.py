"""AdapterFusion: combine adapters trained on different tasks, without touching them.

Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer Learning" (EACL).
Two stages. *Knowledge extraction*: one bottleneck adapter per task (the Pfeiffer placement, after the
feed-forward block), each trained alone on its task and then frozen. *Knowledge composition*: a fusion
layer per transformer layer, trained on the target task, attends over the adapters. In layer l, with
h the feed-forward output at one position (before the residual add) and δ_n what adapter n adds to it:

    s = softmax_n( (Q h) · (K δ_n) / T )        out = h + V ( Σ_n s_n δ_n )

Q and K start as small random matrices, V as the identity (Pfeiffer et al.: ones on the diagonal,
1e-6 elsewhere), so at step 0 the fused layer adds the average of the adapters' updates. A penalty
λ·||I - V||² keeps V near the identity. Only Q, K, V train; the adapters and the base stay frozen, so
nothing learned for one task is overwritten by another (the paper's "non-destructive").

The values are the adapters' updates δ_n and the residual h is added after the mix, as in the
``adapters`` library; keys built from h + δ_n instead would give the same softmax (the common Q h · K h
term cancels). With the attention forced onto adapter n (``force_adapter``) and V = I, a fused layer
computes h + δ_n, exactly what the model with adapter n alone computes.

The task adapters are trained by ``train_task_adapters`` and cached on disk (``$PEFTLAB_CACHE``, else
the user's cache directory, ``~/.cache/peftlab`` on Linux; keyed by the base weights and every training
setting), so the comparison trains them once.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .. import world
from ..state import clear_state
from ..train import Hook, TrainConfig, attach_hook, train
from . import RunContext, get_method, register, removes
from .adapters import Adapter, PfeifferConfig, add_adapters, hidden_size, placement_targets
from .targets import find_targets, freeze, replace_module

CACHE_ENV = "PEFTLAB_CACHE"  # where trained task adapters are kept; default: the user's cache directory


@dataclass
class FusionConfig:
    task: str | None = None  # the target task the fusion layers train on; None: the run's (else new_people)
    source_tasks: tuple[str, ...] = ("addition", "sentiment")  # tasks with an adapter besides the target's
    include_target_adapter: bool = True  # also an adapter trained on the target task (as in the paper)
    adapter_steps: int | None = None  # steps per task adapter; None: half of the run's steps (100 if unknown)
    adapter_lr: float | None = None  # None: the registered learning rate of "pfeiffer" (3e-2; sentiment needs ~3e-3)
    adapter_batch_size: int = 16
    adapter_n_train: int = 2000  # training examples per task adapter
    bottleneck: int | None = None  # adapter width; None: the adapters' default (hidden size / 16)
    temperature: float = 1.0  # softmax temperature of the fusion attention
    value_offdiag: float = 1e-6  # V starts as the identity plus this off the diagonal (Pfeiffer et al.)
    value_reg_weight: float = 0.01  # weight of ||I - V||² in the loss (0 disables it)
    adapter_seed: int | None = None  # seeds the task adapters' data and initialisation; None: the run's seed
    cache_dir: str | None = None  # None: $PEFTLAB_CACHE, else the user's cache directory


def fusion_task_names(config: FusionConfig, target: str | None = None) -> list[str]:
    """The tasks that get an adapter: the source tasks, then the target (``config.task``, else
    ``target``, else new_people), each once."""
    target = config.task or target or "new_people"
    names = list(config.source_tasks) + ([target] if config.include_target_adapter else [])
    names = list(dict.fromkeys(names))
    for name in names:
        world.get_task(name)  # unknown names: an error listing the tasks
    if len(names) < 2:
        raise ValueError(f"AdapterFusion needs adapters of at least two tasks, got {names}: "
                         f"add source_tasks from {', '.join(world.TASKS)}")
    return names


def adapter_steps(config: FusionConfig, total_steps: int | None = None) -> int:
    if config.adapter_steps is not None:
        return config.adapter_steps
    return max(1, total_steps // 2) if total_steps else 100


# ------------------------------------------------------------------------------ the fusion layer


class AdapterFusion(nn.Module):
    """Attention over N adapters at one layer: query from h, keys and values from the adapters' updates."""

    def __init__(self, hidden: int, n_adapters: int, temperature: float = 1.0, value_offdiag: float = 1e-6,
                 device=None, dtype=None):
        super().__init__()
        self.query = nn.Linear(hidden, hidden, device=device, dtype=dtype)
        # no key bias: it would add the same score (Q h) · b to every adapter, which the softmax cancels
        self.key = nn.Linear(hidden, hidden, bias=False, device=device, dtype=dtype)
        self.value = nn.Linear(hidden, hidden, device=device, dtype=dtype)
        nn.init.normal_(self.query.weight, std=0.02)  # Q and K random, as BERT initialises its linear layers
        nn.init.zeros_(self.query.bias)
        nn.init.normal_(self.key.weight, std=0.02)
        with torch.no_grad():  # V = I (+ tiny off-diagonal): at step 0 the adapters' outputs pass unchanged
            self.value.weight.fill_(value_offdiag).fill_diagonal_(1.0)
            self.value.bias.zero_()
        self.n_adapters, self.temperature = n_adapters, temperature
        self.forced: int | None = None  # force_adapter: a one-hot attention on this adapter
        self.record = False  # fusion_attention: keep the last attention weights
        self.last_attention: torch.Tensor | None = None

    def attention(self, hidden: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Softmax weights over adapters, (B, T, N), from h (B, T, d) and the updates (B, T, N, d)."""
        if self.forced is not None:
            weights = torch.zeros(deltas.shape[:-1], dtype=deltas.dtype, device=deltas.device)
            weights[..., self.forced] = 1.0
            return weights
        query = self.query(hidden)  # (B, T, d)
        # (Q h) · (K δ_n) = (Kᵀ Q h) · δ_n: one (d, d) product per position instead of one per adapter
        query_in_delta_space = query @ self.key.weight  # (B, T, d)
        scores = torch.einsum("btd,btnd->btn", query_in_delta_space, deltas)  # (B, T, N)
        return torch.softmax(scores / self.temperature, dim=-1)

    def forward(self, hidden: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        weights = self.attention(hidden, deltas)
        if self.record:
            self.last_attention = weights.detach()
        mixed = torch.einsum("btn,btnd->btd", weights, deltas)  # (B, T, d)
        return self.value(mixed)  # V is linear and the weights sum to 1: V(Σ s δ) = Σ s V δ

    def extra_repr(self) -> str:
        return f"adapters={self.n_adapters}, temperature={self.temperature}, forced={self.forced}"


class WithAdapterFusion(nn.Module):
    """A frozen module, frozen task adapters on its output, and the fusion layer that mixes them."""

    def __init__(self, module: nn.Module, adapters: dict[str, Adapter], fusion: AdapterFusion):
        super().__init__()
        self.module = module
        self.adapters = nn.ModuleDict(adapters)  # task name -> Adapter, in the fusion's order
        self.fusion = fusion

    def forward(self, *args, **kwargs):
        hidden = self.module(*args, **kwargs)  # (B, T, d): the query, and the residual
        deltas = torch.stack([a.up(a.act(a.down(hidden))) for a in self.adapters.values()], dim=-2)  # (B, T, N, d)
        residual = next(iter(self.adapters.values())).residual
        fused = self.fusion(hidden, deltas)
        return hidden + fused if residual else fused


def fusion_modules(model: nn.Module) -> dict[str, WithAdapterFusion]:
    return {name: m for name, m in model.named_modules() if isinstance(m, WithAdapterFusion)}


# ------------------------------------------------------------------------------ stage 1: task adapters


def base_fingerprint(model: nn.Module) -> str:
    """A hash of the base weights, so a cache made with another base (or a re-pretrained one) is not reused."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where task adapters are cached: ``cache_dir``, else ``$PEFTLAB_CACHE``, else the user's cache
    directory (``$XDG_CACHE_HOME/peftlab``, by default ``~/.cache/peftlab``): never inside the installed
    package, and the same folder whatever the working directory (a lecture runs in ``lectures/``)."""
    if cache_dir or os.environ.get(CACHE_ENV):
        return Path(cache_dir or os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftlab"


def _resolve_base(model_name_or_base, tokenizer=None):
    """``(model, tokenizer)`` from a name (``"tiny"``), a model, or a ``(model, tokenizer)`` pair."""
    from ..models import load_base, load_tokenizer

    if isinstance(model_name_or_base, str):
        return load_base(model_name_or_base)
    if isinstance(model_name_or_base, tuple):
        model_name_or_base, tokenizer = model_name_or_base
    if not isinstance(model_name_or_base, nn.Module):
        raise TypeError("train_task_adapters takes a model name ('tiny'), a model, or a (model, tokenizer) pair, "
                        f"not {type(model_name_or_base).__name__}")
    if tokenizer is None:
        path = getattr(getattr(model_name_or_base, "config", None), "_name_or_path", None)
        if not path:
            raise ValueError("pass tokenizer=... : this model does not say where its tokenizer is saved")
        tokenizer = load_tokenizer(path)
    return model_name_or_base, tokenizer


def train_task_adapters(model_name_or_base, tasks, steps: int = 100, *, lr: float | None = None,
                        bottleneck: int | None = None, batch_size: int = 16, n_train: int = 2000, seed: int = 0,
                        tokenizer=None, cache_dir: str | Path | None = None, use_cache: bool = True,
                        progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """One Pfeiffer adapter per task, each trained alone on a copy of the base: ``{task: adapter state}``.

    The state maps parameter names (``model.layers.0.mlp.adapter.down.weight``) to CPU tensors. Each
    adapter is cached under ``cache_root(cache_dir)`` in a folder
    named by a hash of the base weights and every setting; a later call with the same settings loads
    it instead of training. ``use_cache=False`` always trains (and does not write).
    """
    from safetensors.torch import load_file, save_file

    tasks = list(dict.fromkeys([tasks] if isinstance(tasks, str) else tasks))
    if not tasks:
        raise ValueError(f"no tasks given; choose from {', '.join(world.TASKS)}")
    for name in tasks:
        world.get_task(name)
    if steps < 1:
        raise ValueError(f"adapter training needs at least one step, got steps={steps}")
    base, tokenizer = _resolve_base(model_name_or_base, tokenizer)
    lr = get_method("pfeiffer").lr if lr is None else lr
    adapter_config = PfeifferConfig(bottleneck=bottleneck)
    fingerprint = base_fingerprint(base) if use_cache else ""
    states = {}
    for task_name in tasks:
        settings = {"task": task_name, "steps": steps, "lr": lr, "batch_size": batch_size, "n_train": n_train,
                    "seed": seed, "adapter": asdict(adapter_config), "base": fingerprint}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        folder = cache_root(cache_dir) / "task_adapters" / f"{task_name}-{key}"
        if use_cache and (folder / "adapter.safetensors").exists():
            try:
                states[task_name] = load_file(str(folder / "adapter.safetensors"))
                continue
            except Exception as err:  # a half-written file: train again
                print(f"ignoring an unreadable cached adapter in {folder}: {err}")
        model = copy.deepcopy(base)
        clear_state(model)  # a copy must not carry the base's method state or training hooks
        add_adapters(model, adapter_config)
        task = world.get_task(task_name)
        train(model, tokenizer, task.train_examples(n_train, seed=seed),
              TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed), progress=progress,
              desc=f"adapter {task_name}")
        state = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if ".adapter." in name}
        states[task_name] = state
        del model
        if use_cache:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
            partial = folder / f"adapter.safetensors.{os.getpid()}.partial"  # written whole, then renamed:
            save_file(state, str(partial))  # another process never reads a half-written file
            os.replace(partial, folder / "adapter.safetensors")
    return states


def load_task_adapter(model: nn.Module, state: dict[str, torch.Tensor], bottleneck: int | None = None) -> nn.Module:
    """Put one task adapter (a state from ``train_task_adapters``) into ``model``: the single-task model."""
    add_adapters(model, PfeifferConfig(bottleneck=bottleneck))
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise ValueError(f"{len(missing)} adapter tensor(s) match no parameter, e.g. {missing[:2]}: "
                         "was the adapter trained on another base or with another bottleneck?")
    with torch.no_grad():
        for key, tensor in state.items():
            params[key].copy_(tensor)
    freeze(model)
    return model


# ------------------------------------------------------------------------------ stage 2: fusion


class ValueRegularizer(Hook):
    """λ · Σ_l ||I - V_l||²_F added to the loss: keeps each fusion layer's V near the identity."""

    def __init__(self, weight: float):
        self.weight = weight

    def extra_loss(self, model, step: int):
        terms = []
        for wrapped in fusion_modules(model).values():
            v = wrapped.fusion.value.weight
            terms.append((torch.eye(v.shape[0], dtype=v.dtype, device=v.device) - v).pow(2).sum())
        return self.weight * torch.stack(terms).sum() if terms and self.weight else None


def apply_fusion(model: nn.Module, adapter_states: dict[str, dict[str, torch.Tensor]],
                 config: FusionConfig = FusionConfig()) -> nn.Module:
    """Insert the frozen task adapters and a trainable fusion layer after every feed-forward block.

    ``adapter_states`` is ``{task: state}`` from ``train_task_adapters``; its order is the order of
    the adapters in every fusion layer. Only the fusion layers (Q, K, V) train. Applying again with
    a model that already fuses adapters is an error.
    """
    if len(adapter_states) < 2:
        raise ValueError(f"AdapterFusion needs at least two task adapters, got {list(adapter_states)}")
    tasks = list(adapter_states)
    if fusion_modules(model):
        raise ValueError(f"this model already fuses {fusion_tasks(model)}; undo it with peftlab.remove_method(model) "
                         f"(or remove_fusion) or load a fresh base to fuse {tasks}")
    d = hidden_size(model)
    adapter_config = PfeifferConfig(bottleneck=config.bottleneck)
    placement = placement_targets(model, adapter_config)["mlp"]
    for name, module in find_targets(model, placement, types=(nn.Module,)):
        reference = next(module.parameters())
        adapters = {}
        for task, state in adapter_states.items():
            prefix = f"{name}.adapter."
            weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not weights:
                raise ValueError(f"the {task!r} adapter has no weights for layer {name} (its keys look like "
                                 f"{next(iter(state), '(none)')}): was it trained on this base?")
            bottleneck = weights["down.weight"].shape[0]
            adapter = Adapter(d, bottleneck, device=reference.device, dtype=reference.dtype)
            adapter.load_state_dict(weights)
            adapters[task] = adapter
        fusion = AdapterFusion(d, len(adapters), config.temperature, config.value_offdiag,
                               device=reference.device, dtype=reference.dtype)
        replace_module(model, name, WithAdapterFusion(module, adapters, fusion))
    freeze(model)
    for wrapped in fusion_modules(model).values():
        wrapped.fusion.requires_grad_(True)
    if config.value_reg_weight:
        attach_hook(model, ValueRegularizer(config.value_reg_weight))
    return model


def fusion_tasks(model: nn.Module) -> list[str]:
    """The tasks ``model`` fuses, in the order of the adapters in every fusion layer."""
    layers = fusion_modules(model)
    if not layers:
        raise ValueError("this model has no fusion layers: apply AdapterFusion first")
    return list(next(iter(layers.values())).adapters)


def remove_fusion(model: nn.Module) -> nn.Module:
    """Put the original feed-forward blocks back (the task adapters and the fusion layers are dropped)."""
    for name, wrapped in fusion_modules(model).items():
        replace_module(model, name, wrapped.module)
    return model


def force_adapter(model: nn.Module, index: int | str | None) -> nn.Module:
    """Put every fusion layer's attention on one adapter (its index or task name); ``None`` undoes it."""
    tasks = fusion_tasks(model)
    if isinstance(index, str):
        if index not in tasks:
            raise KeyError(f"no adapter for task {index!r}; this model fuses {tasks}")
        index = tasks.index(index)
    if index is not None and not 0 <= index < len(tasks):
        raise IndexError(f"adapter index {index} out of range: this model fuses {len(tasks)} adapters {tasks}")
    for wrapped in fusion_modules(model).values():
        wrapped.fusion.forced = index
    return model


@torch.no_grad()
def fusion_attention(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean attention over the adapters per fusion layer, ``{layer name: (N,)}``, over the batch's real tokens.

    ``batch`` holds ``input_ids`` and ``attention_mask`` (a batch from ``peftlab.data.batches``);
    the order of the N entries is ``fusion_tasks(model)``.
    """
    layers = fusion_modules(model)
    if not layers:
        raise ValueError("this model has no fusion layers: apply AdapterFusion first")
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)
    mask = batch.get("attention_mask", torch.ones_like(ids)).to(device).float()  # (B, T)
    was_training = model.training
    model.eval()
    for wrapped in layers.values():
        wrapped.fusion.record = True
    try:
        model(input_ids=ids, attention_mask=mask.long())
        out = {}
        for name, wrapped in layers.items():
            weights = wrapped.fusion.last_attention.float()  # (B, T, N)
            out[name] = (weights * mask.unsqueeze(-1)).sum((0, 1)).cpu() / mask.sum().cpu()
            wrapped.fusion.last_attention = None
    finally:
        for wrapped in layers.values():
            wrapped.fusion.record = False
        model.train(was_training)
    return out


@register("fusion", FusionConfig, family="additive", lr=3e-3, grid_centre=3e-3, identity_at_init=False,
          description="AdapterFusion: frozen task adapters mixed by a trained attention per layer (Pfeiffer et al. 2021)")
def apply_adapter_fusion(model: nn.Module, config: FusionConfig, context=None) -> nn.Module:
    """Train (or load from the cache) one adapter per task on a copy of ``model``, then fuse them into
    ``model``. The run's task, steps and seed (``context``) fill what the config leaves at None."""
    context = context or RunContext()
    tasks = fusion_task_names(config, context.task)
    seed = context.seed if config.adapter_seed is None else config.adapter_seed
    states = train_task_adapters(model, tasks, adapter_steps(config, context.total_steps), lr=config.adapter_lr,
                                 bottleneck=config.bottleneck, batch_size=config.adapter_batch_size,
                                 n_train=config.adapter_n_train, seed=seed, tokenizer=context.tokenizer,
                                 cache_dir=config.cache_dir, progress=False)  # no progress switch: compare's tables stay clean
    return apply_fusion(model, states, config)


removes("fusion")(remove_fusion)
