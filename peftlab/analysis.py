"""Analysis of sweep records: means with confidence intervals, the learning-forgetting frontier,
forgetting at matched learning, and the learning rate each method should use.

Every function takes the records ``peftlab.sweep`` writes (dicts with ``method``, ``lr``, ``seed``,
``step`` and metrics) and is small enough to check by hand; ``tests/test_analysis.py`` checks each on
synthetic records with known answers. The design follows Biderman et al. (2024, "LoRA Learns Less and
Forgets Less"): learning is plotted against forgetting over learning rates and training lengths, each
method's *frontier* is the set of points no other point of the method beats on both, and methods are
compared on forgetting at the same level of learning.

- ``mean_ci``: mean and 95% t-interval over seeds;
- ``summarize``: one row per (method, lr, step): mean and interval of every metric;
- ``pareto_frontier``: the points not dominated (more learning and less forgetting is better);
- ``forgetting_when_reached``: along one run, the forgetting when learning first reaches a level
  (linear interpolation between checkpoints, from the base at step 0);
- ``matched_learning``: per method, the least forgetting over rates with which every seed reaches a
  learning level, with its interval, or "never reaches";
- ``choose_lr``: per method, the rate with the highest mean validation learning at the budget (exact
  ties: the lower mean forgetting); the registry's rates are these choices.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# two-sided 95% quantiles of Student's t by degrees of freedom (1.96 beyond the table)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}

LEARNING = "learning_test"  # what is reported
SELECTION = "learning_validation"  # what rates are chosen on
FORGETTING = "forgetting_source_recall"  # the headline forgetting metric (English perplexity is beside it)


def t95(dof: int) -> float:
    if dof < 1:
        return math.nan
    known = [d for d in T95 if d <= dof]
    return T95[dof] if dof in T95 else (1.96 if dof > 30 else T95[max(known)])


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with a 95% t-interval (``half`` is the half-width; nan for one seed)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def __str__(self) -> str:
        return f"{self.mean:.3f}" if math.isnan(self.half) else f"{self.mean:.3f} ± {self.half:.3f}"


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean and 95% confidence half-width (Student's t over ``len(values) - 1`` degrees of freedom)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_ci needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t95(n - 1) * sd / math.sqrt(n), n)


def runs(records: Iterable[dict]) -> list[dict]:
    """The run records (every record but the ``base`` ones)."""
    return [r for r in records if r.get("method") != "base"]


def summarize(records: Iterable[dict], metrics: Sequence[str] = (LEARNING, SELECTION, FORGETTING)
              ) -> dict[tuple[str, float, int], dict[str, Estimate]]:
    """``{(method, lr, step): {metric: Estimate over seeds}}``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs(records):
        groups[(r["method"], r["lr"], r["step"])].append(r)
    return {key: {m: mean_ci([r[m] for r in rows]) for m in metrics} for key, rows in sorted(groups.items())}


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (learning, forgetting) points that no other point dominates (at least as much
    learning and at most as much forgetting, better in one), sorted by learning. Of identical points
    the first is kept."""
    keep = []
    for i, (li, fi) in enumerate(points):
        dominated = any((lj >= li and fj <= fi and (lj > li or fj < fi)) or ((lj, fj) == (li, fi) and j < i)
                        for j, (lj, fj) in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (points[i][0], points[i][1]))


def method_frontiers(records: Iterable[dict], learning: str = LEARNING, forgetting: str = FORGETTING
                     ) -> dict[str, list[dict]]:
    """Per method, its frontier over (rate, checkpoint) of seed-mean points: a list of
    ``{"lr", "step", "learning": Estimate, "forgetting": Estimate}`` sorted by learning."""
    table = summarize(records, (learning, forgetting))
    by_method: dict[str, list[dict]] = defaultdict(list)
    for (method, lr, step), est in table.items():
        by_method[method].append({"lr": lr, "step": step, "learning": est[learning], "forgetting": est[forgetting]})
    out = {}
    for method, points in by_method.items():
        idx = pareto_frontier([(p["learning"].mean, p["forgetting"].mean) for p in points])
        out[method] = [points[i] for i in idx]
    return out


def forgetting_when_reached(trajectory: Sequence[tuple[int, float, float]], level: float
                            ) -> tuple[float, float] | None:
    """``trajectory``: (step, learning, forgetting) checkpoints of one run, in step order, starting from
    the base (0, 0.0, 0.0) or not. Returns (step, forgetting) where learning first reaches ``level``,
    linearly interpolated between the checkpoint before and the one that reaches it; None if never."""
    previous = None
    for step, learn, forget in trajectory:
        if learn >= level:
            if previous is None or previous[1] >= level:
                return float(step), float(forget)
            p_step, p_learn, p_forget = previous
            t = (level - p_learn) / (learn - p_learn)
            return p_step + t * (step - p_step), p_forget + t * (forget - p_forget)
        previous = (step, learn, forget)
    return None


@dataclass(frozen=True)
class Matched:
    method: str
    level: float
    lr: float | None  # the rate with the least forgetting at this level (None: never reaches)
    forgetting: Estimate | None
    step: Estimate | None  # when it first reaches the level
    seeds_reaching: int  # at the best rate (or the most over rates if none reaches with every seed)
    seeds: int

    @property
    def reached(self) -> bool:
        return self.forgetting is not None


def matched_learning(records: Iterable[dict], level: float, learning: str = LEARNING,
                     forgetting: str = FORGETTING) -> dict[str, Matched]:
    """Per method: the least mean forgetting, over its rates, with which *every* seed's run reaches
    learning ``level`` (first checkpoint reaching it, interpolated from the base at step 0); a method
    none of whose rates gets every seed there is reported as never reaching it."""
    traj: dict[tuple[str, float, int], list] = defaultdict(lambda: [(0, 0.0, 0.0)])
    for r in sorted(runs(records), key=lambda r: r["step"]):
        traj[(r["method"], r["lr"], r["seed"])].append((r["step"], r[learning], r[forgetting]))
    by_rate: dict[tuple[str, float], list] = defaultdict(list)
    for (method, lr, _seed), points in traj.items():
        by_rate[(method, lr)].append(forgetting_when_reached(points, level))
    out: dict[str, Matched] = {}
    for (method, lr), hits in sorted(by_rate.items()):
        reached = [h for h in hits if h is not None]
        current = out.get(method)
        if len(reached) == len(hits):
            est = mean_ci([h[1] for h in reached])
            if current is None or current.forgetting is None or est.mean < current.forgetting.mean:
                out[method] = Matched(method, level, lr, est, mean_ci([h[0] for h in reached]), len(hits), len(hits))
        elif current is None or (current.forgetting is None and len(reached) > current.seeds_reaching):
            out[method] = Matched(method, level, None, None, None, len(reached), len(hits))
    return out


@dataclass(frozen=True)
class Choice:
    method: str
    lr: float
    step: int
    validation: Estimate  # selection metric at the chosen rate
    test: Estimate  # reported learning at the chosen rate
    forgetting: Estimate
    grid: tuple[float, ...]

    @property
    def at_edge(self) -> bool:
        """True when the chosen rate is the smallest or largest of the grid: the grid should be widened."""
        return self.lr in (min(self.grid), max(self.grid))


def choose_lr(records: Iterable[dict], step: int, selection: str = SELECTION, forgetting: str = FORGETTING
              ) -> dict[str, Choice]:
    """Per method, the rate with the highest seed-mean ``selection`` metric (validation learning) at
    checkpoint ``step``; exact ties go to the lower mean forgetting, then the lower rate."""
    table = summarize([r for r in records if r.get("step") == step], (selection, LEARNING, forgetting))
    grids: dict[str, list] = defaultdict(list)
    for method, lr, _ in table:
        grids[method].append(lr)
    out = {}
    for method, grid in grids.items():
        best = max(grid, key=lambda lr: (table[(method, lr, step)][selection].mean,
                                         -table[(method, lr, step)][forgetting].mean, -lr))
        est = table[(method, best, step)]
        out[method] = Choice(method, best, step, est[selection], est[LEARNING], est[forgetting], tuple(sorted(grid)))
    if not out:
        raise ValueError(f"no records at step {step}; checkpoints in the records: "
                         f"{sorted({r['step'] for r in runs(records)})}")
    return out


def sensitivity(records: Iterable[dict], step: int, learning: str = LEARNING, forgetting: str = FORGETTING
                ) -> dict[str, dict[str, float]]:
    """Per method, the spread (max - min over the rate grid) of seed-mean learning and forgetting at
    ``step``: how much the outcome depends on choosing the rate well."""
    table = summarize([r for r in records if r.get("step") == step], (learning, forgetting))
    spread: dict[str, dict[str, list]] = defaultdict(lambda: {"learning": [], "forgetting": []})
    for (method, _lr, _), est in table.items():
        spread[method]["learning"].append(est[learning].mean)
        spread[method]["forgetting"].append(est[forgetting].mean)
    return {m: {k: max(v) - min(v) for k, v in d.items()} for m, d in spread.items()}


def format_choices(choices: dict[str, Choice], trainable_pct: dict[str, float] | None = None) -> str:
    header = (f"{'method':<14}{'chosen lr':>10}  {'grid':>17}  {'validation learning':>20}  "
              f"{'test learning':>16}  {'forgetting (recall)':>20}")
    lines = [header, "-" * len(header)]
    for name, c in choices.items():
        grid = f"{min(c.grid):.0e}..{max(c.grid):.0e}" + ("*" if c.at_edge else " ")
        lines.append(f"{name:<14}{c.lr:>10.3g}  {grid:>17}  {str(c.validation):>20}  {str(c.test):>16}  "
                     f"{str(c.forgetting):>20}")
    if any(c.at_edge for c in choices.values()):
        lines.append("* the chosen rate is at the edge of the grid")
    return "\n".join(lines)


def format_matched(matched: dict[str, Matched]) -> str:
    lines = []
    for name, m in matched.items():
        if m.reached:
            lines.append(f"{name:<14} forgetting {str(m.forgetting):>16} at lr {m.lr:.3g}, "
                         f"reached after {m.step.mean:.0f} steps (all {m.seeds} seeds)")
        else:
            lines.append(f"{name:<14} never reaches learning {m.level:.2f} with every seed "
                         f"(best rate: {m.seeds_reaching} of {m.seeds} seeds)")
    return "\n".join(lines)


MATCHED_LEVELS = (0.2, 0.4, 0.6)  # learning levels (test-split gain) at which forgetting is compared


def markdown_table(choices: dict[str, Choice], matched: dict[float, dict[str, Matched]],
                   trainable_pct: dict[str, float] | None = None) -> str:
    """The frontier write-up's comparison table (docs/frontier.md): chosen rate, test learning and forgetting at the budget, and
    forgetting at matched learning levels (mean ± 95% interval over seeds)."""
    levels = sorted(matched)
    head = ["method", "trainable %", "chosen lr", "learning (test)", "forgetting (recall)"]
    head += [f"forgetting at learning {lv:.1f}" for lv in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, c in choices.items():
        pct = f"{trainable_pct[name]:.3g}" if trainable_pct and name in trainable_pct else ""
        cells = [name, pct, f"{c.lr:.3g}" + (" (edge)" if c.at_edge else ""), str(c.test), str(c.forgetting)]
        for lv in levels:
            m = matched[lv].get(name)
            cells.append("never" if m is None or not m.reached else f"{m.forgetting} (lr {m.lr:.3g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(records: list[dict], budget: int, levels: Sequence[float] = MATCHED_LEVELS) -> dict:
    """Everything the course reports from a sweep: chosen rates at ``budget``, forgetting at matched
    learning, sensitivity to the rate, frontiers, trainable shares."""
    run_records = runs(records)
    order = list(dict.fromkeys(r["method"] for r in run_records))
    choices = choose_lr(run_records, budget)
    choices = {m: choices[m] for m in order if m in choices}
    trainable = {r["method"]: 100.0 * r["trainable"] / r["total"] for r in run_records if "trainable" in r}
    return {"budget": budget, "choices": choices, "matched": {lv: matched_learning(run_records, lv) for lv in levels},
            "sensitivity": sensitivity(run_records, budget), "frontiers": method_frontiers(run_records),
            "trainable_pct": trainable, "summary": summarize(run_records)}
