"""AdaLoRA: LoRA whose rank is moved, during training, to the layers where it matters most.

Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning" (ICLR). The update
of each frozen weight is written like a singular value decomposition,

    W = W0 + P · Λ · Q        P: (d_out, r) "left singular vectors", Λ = diag(λ_1..λ_r), Q: (r, d_in)

and rank is removed by zeroing entries of Λ. Which ones: every *triplet* (P[:, i], λ_i, Q[i, :]) gets
an importance from the sensitivity of its parameters, I(w) = |w · ∂L/∂w|, smoothed over steps and
multiplied by its uncertainty (β1, β2 are exponential moving averages):

    Ī(t) = β1 Ī(t-1) + (1-β1) I(t)        Ū(t) = β2 Ū(t-1) + (1-β2) |I(t) - Ī(t)|        s = Ī · Ū
    S_i  = s(λ_i) + mean_j s(Q[i, j]) + mean_j s(P[j, i])

Only the triplets with the largest S_i across *all* layers are kept; the budget (total kept rank)
falls from ``init_r`` per matrix to ``target_r`` per matrix on a cubic schedule between a warm-up of
``tinit`` steps and a final phase of ``tfinal`` steps in which the ranks are fixed. A regularizer keeps
P and Q close to orthogonal, so that zeroing a λ removes one direction and nothing else:

    R(P, Q) = ||PᵀP - I||²_F + ||QQᵀ - I||²_F

Names follow Hugging Face peft so state dicts map one to one: ``lora_A`` is Q (r, d_in), ``lora_E`` is
Λ as a column (r, 1), ``lora_B`` is P (d_out, r); the update is scaled by ``alpha / r`` with r the
*initial* rank (masking does not change the scale), as in peft.

Where the paper and peft differ: peft's regularizer uses the Frobenius norm *unsquared*; the paper
squares it. ``orth_squared=True`` (default) follows the paper, ``False`` reproduces peft. The budget
schedule and the choice of triplets follow peft step for step (the tests check both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..state import model_hooks
from ..train import Hook, attach_hook
from . import register, removes
from .lora import find_lora_targets
from .lowrank import LowRankLayer, unload_low_rank
from .targets import freeze, replace_module

RANKNUM_EPS = 1e-5  # peft divides by (r + 1e-5); kept so outputs match peft's to the last bit


@dataclass
class AdaLoraConfig:
    init_r: int = 12  # rank of every matrix at the start (the initial budget is init_r per matrix)
    target_r: int = 8  # average rank per matrix at the end (the final budget is target_r per matrix)
    tinit: int | None = None  # warm-up steps before pruning starts; None: 10% of total_step
    tfinal: int | None = None  # final steps with the ranks fixed; None: 20% of total_step (at least 1)
    deltaT: int = 1  # prune every deltaT steps during the budget phase (peft's default)
    beta1: float = 0.85  # EMA of the sensitivity
    beta2: float = 0.85  # EMA of the uncertainty
    orth_reg_weight: float = 0.5  # weight of the orthogonality regularizer (0 disables it)
    orth_squared: bool = True  # True: the paper's squared Frobenius norm; False: peft's unsquared norm
    total_step: int | None = None  # training steps the schedule spans; None: the run's (RunContext.total_steps)
    alpha: float = 12.0  # the update is scaled by alpha / init_r
    dropout: float = 0.0  # dropout on the input of the update, training only
    # name suffixes (["q_proj", "v_proj"]) or one regex for the whole name; None: every linear layer but the output head
    target_modules: list[str] | str | None = None


def schedule_phases(config: AdaLoraConfig) -> tuple[int, int, int]:
    """``(tinit, tfinal, total_step)`` with the defaults filled in; a schedule with no budget phase is an error."""
    total = config.total_step
    if total is None or total <= 0:
        raise ValueError("AdaLoRA's budget schedule needs total_step, the number of training steps: "
                         "pass total_step=... or a RunContext(total_steps=...) (the comparison passes its --steps)")
    tinit = round(0.1 * total) if config.tinit is None else config.tinit
    # at least one final step, so the last allocation (at step total_step - tfinal) happens inside training
    tfinal = min(max(1, round(0.2 * total)), total - 1 - tinit) if config.tfinal is None else config.tfinal
    if tinit < 0 or tfinal < 0 or config.deltaT < 1:
        raise ValueError(f"tinit and tfinal must be >= 0 and deltaT >= 1, got {tinit}, {tfinal}, {config.deltaT}")
    if tinit >= total - tfinal:
        raise ValueError(f"tinit={tinit} and tfinal={tfinal} leave no budget phase in total_step={total} steps: "
                         f"need tinit < total_step - tfinal")
    if config.target_r > config.init_r:
        raise ValueError(f"target_r ({config.target_r}) cannot exceed init_r ({config.init_r})")
    return tinit, tfinal, total


def budget_schedule(step: int, config: AdaLoraConfig, n_matrices: int = 1) -> tuple[int, bool]:
    """Total rank budget at ``step`` and whether to prune at this step (peft's ``budget_schedule``).

    The budget is ``init_r * n_matrices`` during the warm-up (step <= tinit), falls as a cube to
    ``target_r * n_matrices`` by step ``total_step - tfinal``, and stays there; pruning happens every
    ``deltaT`` steps of the falling phase and at every step after it.
    """
    tinit, tfinal, total = schedule_phases(config)
    init_budget, target_budget = config.init_r * n_matrices, config.target_r * n_matrices
    if step <= tinit:
        return init_budget, False
    if step > total - tfinal:
        return target_budget, True
    remaining = 1 - (step - tinit) / (total - tfinal - tinit)  # 1 at the end of warm-up, 0 at the final phase
    return int((init_budget - target_budget) * remaining ** 3 + target_budget), step % config.deltaT == 0


class SVDLinear(LowRankLayer):
    """A frozen ``nn.Linear`` / ``Conv1D`` plus ``scaling * lora_B @ diag(lora_E) @ lora_A`` (P Λ Q).

    ``rank_mask`` records which triplets the last allocation kept; pruning zeroes the masked entries of
    ``lora_E``, so a masked triplet adds nothing (its P and Q may still train and it may come back at a
    later allocation, as in the paper). Checks, layout, dtype, merge and unmerge: ``LowRankLayer``.
    """

    method = "AdaLoRA"

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(base_layer, r, dropout)
        self.alpha = alpha
        self.scaling = alpha / (r + RANKNUM_EPS)  # peft: lora_alpha / (ranknum + 1e-5), ranknum = initial r
        device, dtype = base_layer.weight.device, self.adapter_dtype
        # peft's initialisation: Λ = 0 (the update starts at zero), P and Q small Gaussians
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=dtype, device=device))  # Q
        self.lora_E = nn.Parameter(torch.zeros(r, 1, dtype=dtype, device=device))  # Λ
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, dtype=dtype, device=device))  # P
        nn.init.normal_(self.lora_A, mean=0.0, std=0.02)
        nn.init.normal_(self.lora_B, mean=0.0, std=0.02)
        self.register_buffer("rank_mask", torch.ones(r, dtype=torch.bool, device=device), persistent=False)

    @property
    def kept_rank(self) -> int:
        return int(self.rank_mask.sum())

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.lora_A * self.lora_E).T @ self.lora_B.T  # (..., d_in) -> (..., r) -> (..., d_out)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * P Λ Q`` in the base weight's layout."""
        return self._oriented(self.lora_B @ (self.lora_A * self.lora_E) * self.scaling)  # (d_out, d_in)

    def extra_repr(self) -> str:
        return f"init_r={self.r}, kept={self.kept_rank}, alpha={self.alpha}, merged={self.merged}"


def adalora_layers(model: nn.Module) -> dict[str, SVDLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SVDLinear)}


def rank_pattern(model: nn.Module) -> dict[str, int]:
    """Kept rank of every AdaLoRA layer, by dotted name."""
    return {name: layer.kept_rank for name, layer in adalora_layers(model).items()}


def kept_parameters(model: nn.Module) -> int:
    """Parameters in the kept triplets (a column of P, a λ, a row of Q each): what a pruned copy would store."""
    return sum(layer.kept_rank * (layer.in_features + layer.out_features + 1) for layer in adalora_layers(model).values())


def orthogonality_regularizer(model: nn.Module, squared: bool = True) -> torch.Tensor:
    """Mean over every P and Q of ``||QQᵀ - I||_F`` / ``||PᵀP - I||_F`` (squared: the paper; unsquared: peft).

    Like peft, the mean over matrices (not the paper's sum over layers), so the weight does not grow
    with depth.
    """
    terms = []
    for layer in adalora_layers(model).values():
        with torch.autocast(layer.lora_A.device.type, enabled=False):  # small r x r products: keep them fp32
            for gram in (layer.lora_A @ layer.lora_A.T, layer.lora_B.T @ layer.lora_B):  # both (r, r)
                eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
                norm = torch.linalg.matrix_norm(gram - eye, ord="fro")
                terms.append(norm ** 2 if squared else norm)
    if not terms:
        raise ValueError("this model has no AdaLoRA layers: apply AdaLoRA first (peftlab.apply_method(model, 'adalora'))")
    return torch.stack(terms).mean()


class RankAllocator(Hook):
    """The training-loop hook: the orthogonality regularizer in the loss, importance and pruning after each step.

    ``after_step`` runs after the optimizer and before the gradients are cleared, where peft's
    ``update_and_allocate`` is called: the sensitivity is |w · grad| with the updated w and the gradient
    that produced it.
    """

    def __init__(self, model: nn.Module, config: AdaLoraConfig):
        self.config = config
        self.tinit, self.tfinal, self.total_step = schedule_phases(config)
        self.n_matrices = len(adalora_layers(model))
        self.init_budget = sum(layer.r for layer in adalora_layers(model).values())
        self.target_budget = config.target_r * self.n_matrices
        self.history: list[tuple[int, int, dict[str, int]]] = []  # (step, budget, kept rank per layer) at each allocation
        self.reset_importance()

    def reset_importance(self) -> None:
        self.sensitivity, self.exp_avg_ipt, self.exp_avg_unc = {}, {}, {}

    # --- the loss term
    def extra_loss(self, model, step: int):
        if self.config.orth_reg_weight == 0:
            return None
        return self.config.orth_reg_weight * orthogonality_regularizer(model, squared=self.config.orth_squared)

    # --- importance
    def triplet_parameters(self, model) -> dict[str, nn.Parameter]:
        return {f"{name}.{part}": getattr(layer, part) for name, layer in adalora_layers(model).items()
                for part in ("lora_A", "lora_E", "lora_B")}

    @torch.no_grad()
    def update_importance(self, model) -> None:
        """One step of the smoothed sensitivity Ī and uncertainty Ū for every P, Λ, Q entry."""
        b1, b2 = self.config.beta1, self.config.beta2
        for name, p in self.triplet_parameters(model).items():
            if p.grad is None:
                continue
            if name not in self.sensitivity:
                self.exp_avg_ipt[name] = torch.zeros_like(p)
                self.exp_avg_unc[name] = torch.zeros_like(p)
            self.sensitivity[name] = (p * p.grad).abs().detach()  # I(t) = |w · dL/dw|
            self.exp_avg_ipt[name] = b1 * self.exp_avg_ipt[name] + (1 - b1) * self.sensitivity[name]
            self.exp_avg_unc[name] = (b2 * self.exp_avg_unc[name]
                                      + (1 - b2) * (self.sensitivity[name] - self.exp_avg_ipt[name]).abs())

    def triplet_importance(self, model) -> dict[str, torch.Tensor]:
        """S_i = s(λ_i) + mean_j s(Q[i, j]) + mean_j s(P[j, i]) per layer, (r,), with s = Ī · Ū."""
        scores = {}
        for name in adalora_layers(model):
            score = {part: self.exp_avg_ipt[f"{name}.{part}"] * self.exp_avg_unc[f"{name}.{part}"]
                     for part in ("lora_A", "lora_E", "lora_B")}
            rows = score["lora_A"].mean(dim=1, keepdim=True)  # (r, 1): Q's row i
            cols = score["lora_B"].mean(dim=0).view(-1, 1)  # (r, 1): P's column i
            scores[name] = score["lora_E"].view(-1) + torch.cat([rows, cols], dim=1).sum(dim=1)  # peft's order of sums
        return scores

    @torch.no_grad()
    def mask_to_budget(self, model, budget: int) -> dict[str, int]:
        """Keep the ``budget`` most important triplets over all layers; zero Λ of the others."""
        scores = self.triplet_importance(model)
        n_prune = self.init_budget - budget
        threshold = (torch.kthvalue(torch.cat(list(scores.values())), k=n_prune)[0].item()
                     if n_prune > 0 else -math.inf)
        for name, layer in adalora_layers(model).items():
            layer.rank_mask.copy_(scores[name] > threshold)
            layer.lora_E.masked_fill_(~layer.rank_mask.view(-1, 1), 0.0)
        return rank_pattern(model)

    @torch.no_grad()
    def apply_masks(self, model) -> None:
        for layer in adalora_layers(model).values():
            layer.lora_E.masked_fill_(~layer.rank_mask.view(-1, 1), 0.0)

    def update_and_allocate(self, model, step: int) -> int:
        """peft's ``AdaLoraModel.update_and_allocate``: importance, then pruning per the schedule. Returns the budget."""
        budget, prune = budget_schedule(step, self.config, self.n_matrices)
        final_start = self.total_step - self.tfinal
        if step < final_start:
            self.update_importance(model)
            if prune:
                self.history.append((step, budget, self.mask_to_budget(model, budget)))
        elif step == final_start:  # the last allocation (from the importance so far): the final ranks
            self.history.append((step, budget, self.mask_to_budget(model, budget)))
            self.reset_importance()
        else:  # final phase: ranks fixed, keep the pruned Λ at zero
            self.apply_masks(model)
        return budget

    def after_step(self, model, step: int, optimizer) -> None:
        self.update_and_allocate(model, step)


def get_rank_allocator(model: nn.Module) -> RankAllocator | None:
    return next((h for h in model_hooks(model) if isinstance(h, RankAllocator)), None)


@register("adalora", AdaLoraConfig, family="reparameterization", lr=3.162e-2, grid_centre=1e-2,
          description="AdaLoRA: LoRA as P·Λ·Q whose rank is pruned to where it matters (Zhang et al. 2023)")
def apply_adalora(model: nn.Module, config: AdaLoraConfig, context=None) -> nn.Module:
    """Freeze ``model``, wrap each target layer in an ``SVDLinear``, attach the ``RankAllocator`` hook.

    ``total_step`` left at None is the run's length (``context.total_steps``)."""
    if config.total_step is None and context is not None and context.total_steps:
        config = replace(config, total_step=context.total_steps)
    schedule_phases(config)  # fail before touching the model
    freeze(model)
    for name, layer in find_lora_targets(model, config.target_modules, wrapper=SVDLinear):
        if not isinstance(layer, SVDLinear):
            replace_module(model, name, SVDLinear(layer, config.init_r, config.alpha, config.dropout))
    for layer in adalora_layers(model).values():
        for p in (layer.lora_A, layer.lora_E, layer.lora_B):
            p.requires_grad_(True)
    attach_hook(model, RankAllocator(model, config))
    return model


@removes("adalora")
def unload_adalora(model: nn.Module) -> nn.Module:
    """Put the plain base layers back (what AdaLoRA learned is dropped)."""
    return unload_low_rank(model, SVDLinear)
