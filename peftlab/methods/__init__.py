"""The methods registry: every fine-tuning method behind one interface, and the contract it keeps.

A method is a config dataclass plus ``apply(model, config, context) -> model``, which freezes what
must not train and injects what the method adds. Registering is one decorator::

    @register("full", FullFinetuneConfig, family="baseline", lr=1e-3,
              description="every weight trains")
    def apply_full(model, config, context): ...

``python -m peftlab compare`` runs every registered method, so a new module that registers itself
(and is imported below) appears in the comparison with no other change.

**The contract** (``tests/test_method_contract.py`` holds every registered method to it, on a tiny
Llama and a tiny GPT-2):

1. ``apply`` changes the model it is given, in place, and returns the model to train: that same
   object, except for the methods registered with ``wraps=True`` (prefix and prompt tuning, which
   must intercept ``forward``), which return a wrapper whose ``.base_model`` is the model given.
   Either way, use the returned object.
2. Identity at initialization where the method promises it (``identity_at_init=True``): in eval
   mode the applied model computes the base model's logits.
3. Frozen stays frozen: after training steps, every parameter and buffer that does not train is
   bit-identical to its value before.
4. ``trainable_count(model)`` is what the optimizer really updates (a sparse mask counts its entries,
   not the tensors that hold them), so callers such as ``compare`` need no method's module.
5. Applying the same config again is a no-op (a re-run notebook cell keeps what trained); applying
   another config or another method raises an error that names ``peftlab.remove_method``, which
   undoes a method (``remove_method(model)`` returns the model as it was given, with the method's
   layers, hooks and trainability flags removed).
6. One state holder: everything a method remembers on the model lives in ``peftlab.state.PeftState``
   (``model.peftlab_state``), and its training hooks are found through DDP/FSDP wrappers.

**Data-dependent set-up** comes through a ``RunContext`` (the run's task, training examples,
tokenizer, number of steps and seed), not through config fields that a caller must know to fill in:
the Fisher mask reads its examples from it, AdaLoRA its schedule length, AdapterFusion its target task.
A config field set explicitly always wins over the context.

**The record is the one description of a method**: every consumer reads what it needs from the
``Method`` (``train_config`` for compare, the sweep and ``distributed``; ``grid_centre`` for the
sweep; ``sizing`` for the memory estimator; ``finalize`` for inference; ``removable``), so a consumer
never branches on a method's name. Adding a method is one module and one ``register``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

from ..state import clear_state, peft_state
from ..train import TrainConfig
from ..utils import count_parameters, lookup, ParamCount


@dataclass
class RunContext:
    """What the run knows that a method's config should not have to repeat.

    ``task``: the target task's name (``peftlab.world.TASKS``); ``examples``: its training examples;
    ``tokenizer``: the model's tokenizer; ``total_steps``: optimizer steps the run will take;
    ``seed``: the run's seed (methods derive their own sampling from it when their config leaves
    the seed unset); ``adapt_architecture``: a comparison may change the architecture where a method
    could not apply otherwise (BitFit's zero biases on a model without any).
    """

    task: str | None = None
    examples: Sequence | None = None
    tokenizer: object = None
    total_steps: int | None = None
    seed: int = 0
    adapt_architecture: bool = False


def _unchanged(model):
    return model


@dataclass(frozen=True)
class Method:
    """A registered method: how to apply it and everything a consumer needs to know about it."""

    name: str
    config_cls: type
    apply_fn: Callable
    family: str  # the surveys' families: additive / selective / reparameterization / hybrid; baseline, reference
    description: str
    lr: float  # learning rate the comparison uses: chosen by the reference sweep (see LR_SOURCE)
    trains: bool = True  # False for the untouched-base reference row
    train_options: tuple = ()  # (name, value) pairs for TrainConfig: weight decay, replay of source data
    wraps: bool = False  # apply returns a wrapper around the model (prefix, prompt) instead of the model itself
    identity_at_init: bool = True  # the applied model computes the base's outputs until it trains
    remove_fn: Callable | None = None  # undoes what apply_fn injected (beyond trainability flags and hooks)
    removable: bool = True  # False: remove_method refuses (QLoRA's 4-bit rounding cannot be undone)
    grid_centre: float | None = None  # the sweep's rate grid is centred here (None: on ``lr``)
    sizing: object = None  # peftlab.memory.Sizing: how the memory estimator counts it from shapes (None: it cannot)
    finalize_fn: Callable = _unchanged  # model -> model for inference: fold (prefix) or merge (LoRA), same outputs

    def config(self, **overrides):
        """The method's default config with ``overrides``; unknown fields are an error that lists the known ones."""
        known = {f.name for f in fields(self.config_cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"{self.name} has no option {', '.join(sorted(unknown))}; "
                            f"its options are: {', '.join(sorted(known)) or '(none)'}")
        return replace(self.config_cls(), **overrides)

    def apply(self, model, config=None, context: RunContext | None = None, **overrides):
        if config is not None and overrides:
            raise TypeError(f"pass {self.name}'s options either as a config or as keywords, not both")
        return self.apply_fn(model, config if config is not None else self.config(**overrides), context)

    def train_config(self, lr: float | None = None, **budget) -> TrainConfig:
        """The ``TrainConfig`` this method trains with: ``budget`` (steps, batch size, seed, schedule...),
        its chosen rate unless ``lr`` is given, and its train options (weight decay, replay).

        Every consumer (compare, the sweep, ``distributed``, the lectures) builds its config here, so a
        method's train options cannot be dropped; a ``budget`` field naming a train option overrides it."""
        options = {"lr": self.lr if lr is None else lr, **dict(self.train_options), **budget}
        return TrainConfig(**options)

    @property
    def sweep_centre(self) -> float:
        """The rate the sweep's grid is centred on."""
        return self.lr if self.grid_centre is None else self.grid_centre

    def finalize(self, model):
        """The applied (trained) model ready for inference, with the same outputs: prefix tuning folds its
        reparameterization MLP into the prefix, LoRA merges its update into the base weights (in place)."""
        return self.finalize_fn(model)


METHODS: dict[str, Method] = {}


# Where the registered learning rates come from: each is the rate the committed reference sweep
# (peftlab/sweeps/reference.jsonl) chose on the validation split; tests/test_sweep.py fails when
# a registered rate differs from that choice. Two methods are not in that sweep and keep hand-set
# rates: random_mask (the Fisher mask's baseline, at the Fisher mask's rate) and fusion (whose
# task adapters are trained first). Re-run the sweep, then copy its chosen rates into the modules:
LR_SOURCE = "python -m peftlab sweep --reference (see peftlab.sweep.REFERENCE)"


def _keeping_the_contract(name: str, apply_fn: Callable) -> Callable:
    """``apply_fn`` wrapped with the clauses every method shares: a re-applied config is a no-op,
    another one an error; the state holder records the method, its config and the flags it changed."""

    @functools.wraps(apply_fn)
    def apply(model, config, context: RunContext | None = None):
        state = peft_state(model)
        if state is not None and state.method is not None:
            if state.method == name and state.config == config:
                return model
            what = "another config of it" if state.method == name else name
            raise ValueError(f"{state.method} is already applied to this model ({state.config}); to apply {what}, "
                             f"first undo it with peftlab.remove_method(model), or start from a fresh base")
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        result = apply_fn(model, config, context or RunContext())
        state = peft_state(result, create=True)
        state.method, state.config, state.requires_grad = name, config, flags
        return result

    return apply


def register(name: str, config_cls: type, *, family: str, description: str, lr: float, trains: bool = True,
             train_options: dict | None = None, wraps: bool = False, identity_at_init: bool = True,
             removable: bool = True, grid_centre: float | None = None, sizing=None):
    """Decorator that adds ``apply_fn(model, config, context)`` to the registry under ``name``.

    ``train_options`` are fields of ``peftlab.train.TrainConfig`` the method trains with (e.g.
    ``{"weight_decay": 0.1}``); ``wraps`` and ``identity_at_init`` declare contract clauses 1 and 2;
    ``removable=False`` makes ``remove_method`` refuse; ``grid_centre`` centres the sweep's rate grid
    (default: ``lr``); ``sizing`` (a ``peftlab.memory.Sizing``) lets the memory estimator count the
    method from a model's shape. ``removes`` and ``finalizes`` add the undo and inference steps.
    The decorated name becomes the contract-keeping function (``apply_lora(model, config)`` works)."""

    def decorator(apply_fn: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        wrapped = _keeping_the_contract(name, apply_fn)
        METHODS[name] = Method(name, config_cls, wrapped, family, description, lr, trains,
                               tuple(sorted((train_options or {}).items())), wraps, identity_at_init,
                               removable=removable, grid_centre=grid_centre, sizing=sizing)
        return wrapped

    return decorator


def unregister(name: str) -> Method:
    """Take method ``name`` out of the registry (a test's toy method); returns its record."""
    return METHODS.pop(get_method(name).name)


def _declares(name: str, field_name: str) -> Callable:
    def decorator(fn: Callable) -> Callable:
        object.__setattr__(get_method(name), field_name, fn)  # the record is frozen for everyone else
        return fn

    return decorator


def removes(name: str):
    """Decorator registering how to undo what method ``name`` injected: ``remove_fn(model) -> model``."""
    return _declares(name, "remove_fn")


def finalizes(name: str):
    """Decorator registering method ``name``'s inference step: ``finalize_fn(model) -> model``, same outputs."""
    return _declares(name, "finalize_fn")


def get_method(name: str) -> Method:
    return lookup(METHODS, name, "method")


def apply_method(model, name: str, config=None, context: RunContext | None = None, **overrides):
    """Apply method ``name`` to ``model`` (in place) and return the model to train (see the contract)."""
    return get_method(name).apply(model, config, context, **overrides)


def remove_method(model):
    """Undo the method applied to ``model``: its injected layers and wrappers, its training hooks and
    its trainability flags. Returns the model as it was given to ``apply`` (a wrapper's ``.base_model``)."""
    state = peft_state(model)
    if state is None or state.method is None:
        raise ValueError("no peftlab method is applied to this model, so there is nothing to remove")
    method = get_method(state.method)
    flags, hooks = state.requires_grad, list(state.hooks)
    if not method.removable:
        raise ValueError(f"{method.name} changed the base model in a way that cannot be undone ({method.description}): "
                         "load a fresh base (peftlab.load_base()) instead of removing it")
    if method.remove_fn is not None:
        model = method.remove_fn(model)
    for hook in hooks:
        hook.remove(model)
    clear_state(model)
    for name, p in model.named_parameters():
        if name in flags:
            p.requires_grad_(flags[name])
    return model


def trainable_count(model) -> ParamCount:
    """Trainable parameters as the optimizer really updates them: a training hook that restricts the
    update (a sparse mask) reports its own count (``Hook.trained_count``); otherwise ``requires_grad``."""
    params = count_parameters(model)
    state = peft_state(model)
    for hook in state.hooks if state is not None else ():
        counted = hook.trained_count()
        if counted is not None:
            return ParamCount(counted, params.total)
    return params


# Importing a method module registers it. Modules listed here load in this order (the order of the
# comparison table); any other module in this folder loads after them, so a new method needs no edit here.
ORDER = ["full", "lora", "adapters", "prefix", "bitfit", "sparse", "qlora", "adalora", "fusion"]


def _load_method_modules() -> None:
    import importlib
    import pkgutil

    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    helpers = {"targets"}  # shared code, not methods
    for name in [n for n in ORDER if n in found] + sorted(found - set(ORDER) - helpers):
        importlib.import_module(f"{__name__}.{name}")


_load_method_modules()
