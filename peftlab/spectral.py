"""How low-rank is a full fine-tuning update? The spectrum of W_ft - W_base, per module and layer.

LoRA assumes the update a task needs has low rank (Hu et al. 2021). Biderman et al. (2024, "LoRA
Learns Less and Forgets Less", section 5) test it on the update full fine-tuning actually makes: the
rank needed to explain 90% of the energy of Delta = W_ft - W_base (the smallest k with
sum_{i<=k} s_i^2 >= 0.9 sum_i s_i^2, s the singular values) is 10-100x higher than typical LoRA
ranks, and close to that of a random matrix of the same shape. ``update_spectra`` measures it for
every weight matrix of a model, next to a Gaussian matrix of the same shape.
"""
from __future__ import annotations

import torch


def energy_rank(matrix: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest k such that the top k singular values hold ``fraction`` of the squared Frobenius norm
    (0 for a zero matrix)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    if matrix.ndim != 2:
        raise ValueError(f"energy_rank needs a matrix, got a tensor of shape {tuple(matrix.shape)}")
    energy = torch.linalg.svdvals(matrix.detach().double()) ** 2
    total = float(energy.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    # the small tolerance keeps a fraction of exactly 1.0 from failing on rounding in the last digit
    return int((cumulative < fraction - 1e-12).sum()) + 1


def random_energy_rank(shape: tuple[int, int], fraction: float = 0.9, seed: int = 0) -> int:
    """``energy_rank`` of a Gaussian matrix of ``shape``: what an update with no structure needs."""
    generator = torch.Generator().manual_seed(seed)
    return energy_rank(torch.randn(*shape, generator=generator, dtype=torch.float64), fraction)


def _layer_and_module(name: str) -> tuple[int | None, str]:
    parts = name.split(".")
    layer = next((int(p) for p in parts if p.isdigit()), None)
    module = parts[-2] if parts[-1] == "weight" and len(parts) > 1 else parts[-1]
    return layer, module


def update_spectra(base, tuned, fraction: float = 0.9, seed: int = 0) -> list[dict]:
    """For every 2-D weight of the transformer layers that ``tuned`` changed: layer, module, shape,
    its full rank, the rank holding ``fraction`` of the update's energy, and the same for a random
    matrix of that shape. ``base`` and ``tuned`` are models of the same architecture (or state dicts)."""
    base_state = base.state_dict() if hasattr(base, "state_dict") else base
    tuned_state = tuned.state_dict() if hasattr(tuned, "state_dict") else tuned
    rows = []
    random_cache: dict[tuple[int, int], int] = {}
    for name, weight in tuned_state.items():
        if weight.ndim != 2 or name not in base_state or "embed" in name or "lm_head" in name:
            continue
        delta = weight.detach().double() - base_state[name].detach().double()
        if not bool(delta.any()):
            continue
        shape = tuple(delta.shape)
        if shape not in random_cache:
            random_cache[shape] = random_energy_rank(shape, fraction, seed)
        layer, module = _layer_and_module(name)
        rows.append({"name": name, "layer": layer, "module": module, "shape": shape, "full_rank": min(shape),
                     "energy_rank": energy_rank(delta, fraction), "random_energy_rank": random_cache[shape],
                     "relative_update": float(delta.norm() / base_state[name].double().norm())})
    return rows
