"""The methods registry: every fine-tuning method behind one interface.

A method is a config dataclass plus ``apply(model, config) -> model``, which freezes what must not
train and injects what the method adds. Methods that act during training attach hooks to the model
(``peftlab.train.attach_hook``); the training loop calls them. Registering is one decorator::

    @register("full", FullFinetuneConfig, family="baseline", lr=1e-3,
              description="every weight trains")
    def apply_full(model, config): ...

``python -m peftlab compare`` runs every registered method, so a new module that registers itself
(and is imported below) appears in the comparison with no other change.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    apply_fn: Callable
    family: str  # the surveys' families: additive / selective / reparameterization / hybrid; baseline, reference
    description: str
    lr: float  # learning rate the comparison uses: chosen by the reference sweep (see LR_SOURCE)
    trains: bool = True  # False for the untouched-base reference row
    train_options: tuple = ()  # (name, value) pairs for TrainConfig: weight decay, replay of source data

    def config(self, **overrides):
        """The method's default config with ``overrides``; unknown fields are an error that lists the known ones."""
        known = {f.name for f in fields(self.config_cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"{self.name} has no option {', '.join(sorted(unknown))}; "
                            f"its options are: {', '.join(sorted(known)) or '(none)'}")
        return replace(self.config_cls(), **overrides)

    def apply(self, model, config=None, **overrides):
        return self.apply_fn(model, config if config is not None else self.config(**overrides))


METHODS: dict[str, Method] = {}


# Where the registered learning rates come from: each is the rate the committed reference sweep
# (peftlab/sweeps/reference.jsonl) chose on the validation split; tests/test_sweep.py fails when
# a registered rate differs from that choice. Two methods are not in that sweep and keep hand-set
# rates: random_mask (the Fisher mask's baseline, at the Fisher mask's rate) and fusion (whose
# task adapters are trained first). Re-run the sweep, then copy its chosen rates into the modules:
LR_SOURCE = "python -m peftlab sweep --reference (see peftlab.sweep.REFERENCE)"


def register(name: str, config_cls: type, *, family: str, description: str, lr: float, trains: bool = True,
             train_options: dict | None = None):
    """Decorator that adds ``apply_fn`` to the registry under ``name``. ``train_options`` are fields of
    ``peftlab.train.TrainConfig`` the method trains with (e.g. ``{"weight_decay": 0.1}``)."""

    def decorator(apply_fn: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = Method(name, config_cls, apply_fn, family, description, lr, trains,
                               tuple(sorted((train_options or {}).items())))
        return apply_fn

    return decorator


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def apply_method(model, name: str, config=None, **overrides):
    """Freeze and inject ``name`` into ``model`` (in place) and return it."""
    return get_method(name).apply(model, config, **overrides)


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
