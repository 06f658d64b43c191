"""LoRA: a trainable low-rank update beside each frozen linear layer.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models":

    h = W x + (alpha / r) * B A x,    A: (r, d_in), B: (d_out, r), r << min(d_in, d_out)

A starts Kaiming-uniform and B at zero, so B A = 0 and the adapted model equals the base at step 0;
each adapted layer trains r * (d_in + d_out) numbers instead of d_in * d_out. After training the
update folds into the weight (``merge``), so inference costs nothing extra. rsLoRA (Kalajdzievski
2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA") scales by alpha / sqrt(r)
instead, so larger ranks do not learn slower.

The layer mirrors Hugging Face ``peft``'s ``lora.Linear`` (same submodule names ``base_layer``,
``lora_A``, ``lora_B``; same initialisation order), so with the same seed both libraries start from
the same A, and ``save_lora`` / ``load_lora`` read and write peft's adapter format
(``adapter_config.json`` + ``adapter_model.safetensors``): adapters move both ways.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..memory.estimate import MethodCounts, Sizing
from ..state import peft_state
from . import finalizes, register, removes
from .lowrank import LowRankLayer, unload_low_rank
from .targets import LINEAR_TYPES, find_targets, freeze, output_head_name, replace_module

PEFT_PREFIX = "base_model.model."  # peft's key prefix: PeftModel.base_model (LoraModel).model (yours)
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class LoraConfig:
    r: int = 8  # rank of the update B @ A
    alpha: float = 16  # the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)
    dropout: float = 0.0  # dropout on the input of A, training only
    # name suffixes (["q_proj", "v_proj"]) or one regex for the whole name; None: every linear layer but the output head
    target_modules: list[str] | str | None = None
    use_rslora: bool = False  # rank-stabilized scaling alpha / sqrt(r)
    bias: str = "none"  # biases that also train: "none", "all", or "lora_only" (those of adapted layers)


class LoraLayer(LowRankLayer):
    """A frozen ``nn.Linear`` or GPT-2 ``Conv1D`` plus the trainable update ``scaling * B @ A``
    (checks, layout, dtype, merge and unmerge: ``peftlab.methods.lowrank.LowRankLayer``)."""

    method = "LoRA"

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False):
        super().__init__(base_layer, r, dropout)
        self.alpha, self.use_rslora = alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        # nn.Linear containers, created on the CPU in peft's order (A, B, then re-init A) so that a seed
        # gives both libraries the same A
        self.lora_A = nn.Linear(self.in_features, r, bias=False, dtype=self.adapter_dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, dtype=self.adapter_dtype)
        self.reset_lora_parameters()
        self.lora_A.to(base_layer.weight.device)
        self.lora_B.to(base_layer.weight.device)

    def reset_lora_parameters(self) -> None:
        # A like nn.Linear's default (the LoRA reference code), B zero: B @ A = 0, the base is unchanged
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(x))  # (..., d_in) -> (..., r) -> (..., d_out)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A`` in the base weight's layout: (d_out, d_in), or (d_in, d_out) for Conv1D."""
        return self._oriented((self.lora_B.weight @ self.lora_A.weight) * self.scaling)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, merged={self.merged}"


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every ``LoraLayer`` in ``model`` by dotted name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def find_lora_targets(model: nn.Module, target_modules, wrapper: type = LoraLayer) -> list[tuple[str, nn.Module]]:
    """The layers ``target_modules`` selects, including ones already wrapped, never the parts of a wrapper.

    ``wrapper`` is the class a method wraps its layers in (AdaLoRA passes its ``SVDLinear``), so that
    applying a method twice finds the wrappers, not the linear layers inside them.
    """
    head = output_head_name(model)
    exclude = ("lm_head",) + ((head,) if head else ())
    wrapped = tuple(name for name, m in model.named_modules() if isinstance(m, wrapper))
    types = LINEAR_TYPES + ((wrapper,) if wrapped else ())
    found = find_targets(model, ".*" if target_modules is None else target_modules, types=types, exclude=exclude)
    inside = tuple(name + "." for name in wrapped)
    return [(name, m) for name, m in found if not (inside and name.startswith(inside))]


def low_rank_counts(shape, total: int, setting: dict, quantize_base: bool = False) -> MethodCounts:
    """The estimator's count of rank-``setting["rank"]`` updates on ``setting["targets"]`` ("attention",
    "all" or layer names) in every layer; ``quantize_base``: QLoRA's 4-bit layer matrices."""
    dims = shape.linear_dims()  # (in, out) of each matrix in one layer
    targets = setting["targets"]
    targets = shape.attention_targets() if targets == "attention" else tuple(dims) if targets == "all" else tuple(targets)
    unknown = [t for t in targets if t not in dims]
    if unknown:
        raise KeyError(f"LoRA target(s) {', '.join(unknown)} not in a {shape.family} layer; matrices: {', '.join(dims)}")
    rank = setting["rank"]
    lora = shape.layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)  # A: (r, in), B: (out, r)
    quantized = shape.layers * shape.layer_matrix_parameters() if quantize_base else 0
    return MethodCounts(lora, total - quantized, quantized, train_weights=False, norms_train=False,
                        lora_targets=targets, lora_rank=rank)


def low_rank_setting(config) -> dict | None:
    """The estimator's setting of a LoRA-style config (None where the count rule does not apply)."""
    if getattr(config, "bias", "none") != "none" or isinstance(config.target_modules, str):
        return None  # trained biases, or a regex: the rule counts suffix-named matrices only
    return {"rank": config.r, "targets": "all" if config.target_modules is None else tuple(config.target_modules)}


@register("lora", LoraConfig, family="reparameterization", lr=3e-3, grid_centre=3e-3,
          description="LoRA: a trainable low-rank update (alpha/r) B A beside every frozen linear layer",
          sizing=Sizing("LoRA, rank 16 on the attention projections; frozen base in the precision's weight dtype",
                        low_rank_counts, {"rank": 16, "targets": "attention"}, low_rank_setting))
def apply_lora(model: nn.Module, config: LoraConfig, context=None) -> nn.Module:
    """Freeze ``model`` and wrap each target layer in a ``LoraLayer`` (in place)."""
    if config.bias not in ("none", "all", "lora_only"):
        raise ValueError(f"LoRA bias must be 'none', 'all' or 'lora_only', got {config.bias!r}")
    freeze(model)
    for name, layer in find_lora_targets(model, config.target_modules):
        if not isinstance(layer, LoraLayer):
            replace_module(model, name, LoraLayer(layer, config.r, config.alpha, config.dropout, config.use_rslora))
    for layer in lora_layers(model).values():
        layer.lora_A.weight.requires_grad_(True)
        layer.lora_B.weight.requires_grad_(True)
        if config.bias == "lora_only" and layer.base_layer.bias is not None:
            layer.base_layer.bias.requires_grad_(True)
    if config.bias == "all":
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                param.requires_grad_(True)
    peft_state(model, create=True).extras["lora_bias"] = config.bias  # save_lora writes the trained biases too
    return model


@removes("lora")
def unload_lora(model: nn.Module) -> nn.Module:
    """Put the plain base layers back without merging (what LoRA learned is dropped)."""
    return unload_low_rank(model, LoraLayer)


@finalizes("lora")  # merged, the update costs nothing at inference; unmerge_lora undoes it exactly
def merge_lora(model: nn.Module) -> nn.Module:
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every update and put the plain base layers back: a model with no trace of LoRA."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        replace_module(model, name, layer.base_layer)
    return model


# ---- the Hugging Face peft format ------------------------------------------------------------------

def _peft_target_modules(model: nn.Module, wrapped: list[str]) -> list[str]:
    """Name suffixes (``["q_proj", ...]``) when they select exactly the wrapped layers in peft's
    matching, else the full dotted names (always exact)."""
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in wrapped})
    inner = (".base_layer", ".lora_A", ".lora_B")  # the parts of a LoraLayer, not layers of the model
    linear = [name for name, m in model.named_modules()
              if isinstance(m, LINEAR_TYPES + (LoraLayer,)) and not name.endswith(inner)]
    selected = [n for n in linear if any(n == s or n.endswith("." + s) for s in suffixes)]
    return suffixes if sorted(selected) == sorted(wrapped) else sorted(wrapped)


def _bias_keys(model: nn.Module, layers: dict[str, LoraLayer], bias: str) -> list[str]:
    if bias == "all":
        return [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
    if bias == "lora_only":
        return [f"{name}.base_layer.bias" for name, layer in layers.items() if layer.base_layer.bias is not None]
    return []


def save_lora(model: nn.Module, folder: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the adapter as peft does: ``adapter_config.json`` and ``adapter_model.safetensors``
    (keys like ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``).

    ``peft.PeftModel.from_pretrained(base_model, folder)`` loads it, and so does ``load_lora``.
    """
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers to save: apply LoRA first "
                         "(peftlab.apply_method(model, 'lora'))")
    first = next(iter(layers.values()))
    settings = {(layer.r, layer.alpha, layer.use_rslora, float(getattr(layer.lora_dropout, "p", 0.0)))
                for layer in layers.values()}
    if len(settings) > 1:
        raise ValueError("the LoRA layers of this model differ in rank, alpha, rsLoRA or dropout; "
                         f"save_lora writes one setting for all of them, found {sorted(settings)}")
    state = peft_state(model)
    bias = state.extras.get("lora_bias", "none") if state is not None else "none"
    params = dict(model.named_parameters())
    keys = [f"{name}.lora_{ab}.weight" for name in layers for ab in "AB"] + _bias_keys(model, layers, bias)
    tensors = {PEFT_PREFIX + key: params[key].detach().cpu().contiguous() for key in keys}
    config = getattr(model, "config", None)
    name_or_path = base_model_name_or_path or getattr(config, "_name_or_path", None) or None
    causal = type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if causal else None,
        "base_model_name_or_path": name_or_path,
        "r": first.r,
        "lora_alpha": first.alpha,
        "lora_dropout": float(getattr(first.lora_dropout, "p", 0.0)),
        "use_rslora": first.use_rslora,
        "target_modules": _peft_target_modules(model, list(layers)),
        "fan_in_fan_out": first.fan_in_fan_out,
        "bias": bias,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "lora_bias": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def config_from_peft(adapter_config: dict) -> LoraConfig:
    """A ``LoraConfig`` from peft's ``adapter_config.json`` contents; features peftlab lacks are an error."""
    if adapter_config.get("peft_type") != "LORA":
        raise ValueError(f"not a LoRA adapter: peft_type is {adapter_config.get('peft_type')!r}")
    unsupported = {key: adapter_config.get(key) for key in
                   ("use_dora", "lora_bias", "rank_pattern", "alpha_pattern", "modules_to_save",
                    "layers_to_transform", "layer_replication", "target_parameters", "trainable_token_indices")
                   if adapter_config.get(key)}
    if unsupported:
        raise NotImplementedError(f"this adapter uses peft features peftlab's LoRA does not implement: {unsupported}")
    targets = adapter_config.get("target_modules")
    if isinstance(targets, str) and targets.lower() == "all-linear":
        targets = None
    elif isinstance(targets, (list, tuple, set)):
        targets = sorted(targets)
    return LoraConfig(r=adapter_config["r"], alpha=adapter_config["lora_alpha"],
                      dropout=adapter_config.get("lora_dropout", 0.0), target_modules=targets,
                      use_rslora=adapter_config.get("use_rslora", False), bias=adapter_config.get("bias", "none"))


def load_lora(model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply LoRA to ``model`` as the adapter in ``folder`` describes and load its weights (saved by
    peft or by ``save_lora``). The loaded A and B stay trainable, so training can continue."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_NAME).exists():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: is this a folder written by save_pretrained/save_lora?")
    config = config_from_peft(json.loads((folder / CONFIG_NAME).read_text()))
    if (folder / WEIGHTS_NAME).exists():
        state = load_file(str(folder / WEIGHTS_NAME))
    elif (folder / "adapter_model.bin").exists():  # older peft
        state = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no {WEIGHTS_NAME} (or adapter_model.bin) in {folder}")
    apply_lora(model, config)
    params = dict(model.named_parameters())
    state = {key.removeprefix(PEFT_PREFIX): tensor for key, tensor in state.items()}
    unknown = [key for key in state if key not in params]
    if unknown:
        raise ValueError(f"{len(unknown)} adapter tensor(s) match no parameter of this model, e.g. {unknown[:3]}: "
                         "was the adapter trained on another architecture?")
    missing = [f"{name}.lora_{ab}.weight" for name in lora_layers(model) for ab in "AB"
               if f"{name}.lora_{ab}.weight" not in state]
    if missing:
        raise ValueError(f"the adapter has no weights for {len(missing)} LoRA tensor(s), e.g. {missing[:3]}")
    with torch.no_grad():
        for key, tensor in state.items():
            if params[key].shape != tensor.shape:
                raise ValueError(f"{key}: adapter tensor has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(params[key].shape)}")
            params[key].copy_(tensor)
    return model
