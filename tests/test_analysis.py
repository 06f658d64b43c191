"""The sweep analysis on synthetic records whose answers are known by hand: intervals, frontiers,
forgetting at matched learning, the chosen rate. CPU only, under a second."""
import math

import pytest

from peftlab import analysis
from peftlab.analysis import Estimate, mean_ci


def rec(method, lr, seed, step, learn, forget, validation=None):
    return {"method": method, "lr": lr, "seed": seed, "step": step, "learning_test": learn,
            "learning_validation": learn if validation is None else validation, "forgetting_source_recall": forget}


def test_mean_ci_matches_hand_computation():
    est = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, n = 3, t(2) = 4.303: half-width 4.303 / sqrt(3)
    assert est.mean == 2.0 and est.n == 3
    assert est.half == pytest.approx(4.303 / math.sqrt(3), rel=1e-12)
    assert est.low < 2.0 < est.high
    assert mean_ci([0.5, 0.5]).half == 0.0
    assert math.isnan(mean_ci([0.7]).half) and mean_ci([0.7]).mean == 0.7
    with pytest.raises(ValueError):
        mean_ci([])
    assert analysis.t95(40) == 1.96 and analysis.t95(13) == analysis.T95[12]


def test_pareto_frontier_keeps_only_undominated_points():
    points = [(0.2, 0.1), (0.5, 0.3), (0.4, 0.4), (0.5, 0.2), (0.9, 0.8), (0.1, 0.0), (0.5, 0.2)]
    # (0.4, 0.4) is dominated by (0.5, 0.3); (0.5, 0.3) by (0.5, 0.2); the second (0.5, 0.2) is a copy
    assert analysis.pareto_frontier(points) == [5, 0, 3, 4]
    assert analysis.pareto_frontier([]) == []
    assert analysis.pareto_frontier([(0.3, 0.3)]) == [0]


def test_forgetting_when_reached_interpolates_between_checkpoints():
    traj = [(0, 0.0, 0.0), (10, 0.2, 0.1), (20, 0.6, 0.5), (40, 0.9, 0.6)]
    step, forget = analysis.forgetting_when_reached(traj, 0.4)
    assert step == pytest.approx(15.0) and forget == pytest.approx(0.3)
    assert analysis.forgetting_when_reached(traj, 0.2) == (10.0, 0.1)  # reached exactly at a checkpoint
    assert analysis.forgetting_when_reached(traj, 0.95) is None
    # learning that dips and comes back: the *first* crossing counts
    wobbly = [(0, 0.0, 0.0), (10, 0.5, 0.2), (20, 0.3, 0.4), (30, 0.8, 0.9)]
    assert analysis.forgetting_when_reached(wobbly, 0.5) == (10.0, 0.2)
    # a first checkpoint already past the level is taken as is (nothing earlier to interpolate from)
    assert analysis.forgetting_when_reached([(10, 0.7, 0.3)], 0.5) == (10.0, 0.3)


def _two_methods():
    records = [{"method": "base", "step": 0}]
    for seed, jitter in enumerate((-0.02, 0.0, 0.02)):
        # method A at lr 1: learns 0.5 at step 10 with forgetting 0.2, 1.0 at step 20 with forgetting 0.6
        records += [rec("A", 1.0, seed, 10, 0.5, 0.2 + jitter), rec("A", 1.0, seed, 20, 1.0, 0.6 + jitter)]
        # method A at lr 0.1: learns slowly, forgets little
        records += [rec("A", 0.1, seed, 10, 0.1, 0.0), rec("A", 0.1, seed, 20, 0.3, 0.05 + jitter)]
        # method B: never passes 0.4
        records += [rec("B", 1.0, seed, 10, 0.2, 0.1), rec("B", 1.0, seed, 20, 0.4 + jitter, 0.1)]
    return records


def test_matched_learning_takes_least_forgetting_over_rates_and_reports_never():
    matched = analysis.matched_learning(_two_methods(), level=0.25)
    a = matched["A"]
    # lr 0.1 reaches 0.25 between step 10 (0.1, 0.0) and 20 (0.3, 0.05+j): t = 0.75, forgetting 0.75 * (0.05 + j)
    assert a.lr == 0.1 and a.reached
    assert a.forgetting.mean == pytest.approx(0.0375)
    assert a.step.mean == pytest.approx(17.5)
    # lr 1.0 reaches 0.25 at t = 0.5 of the way to step 10: forgetting 0.1 +- j/2, more than lr 0.1's
    b = matched["B"]
    assert b.reached and b.lr == 1.0 and b.forgetting.mean == pytest.approx(0.1)
    high = analysis.matched_learning(_two_methods(), level=0.75)
    assert high["A"].lr == 1.0 and high["A"].forgetting.mean == pytest.approx(0.4)
    assert not high["B"].reached and high["B"].seeds_reaching == 0 and high["B"].seeds == 3
    assert "never reaches" in analysis.format_matched(high)


def test_matched_learning_needs_every_seed():
    records = [rec("C", 1.0, s, 10, learn, 0.1) for s, learn in enumerate((0.9, 0.9, 0.3))]
    result = analysis.matched_learning(records, level=0.5)["C"]
    assert not result.reached and result.seeds_reaching == 2


def test_choose_lr_maximizes_validation_and_breaks_ties_by_forgetting():
    records = []
    for seed in range(3):
        records += [rec("A", 0.1, seed, 20, 0.3, 0.0, validation=0.3),
                    rec("A", 1.0, seed, 20, 0.9, 0.5, validation=1.0),
                    rec("A", 3.0, seed, 20, 0.95, 0.2, validation=1.0),   # tie on validation, forgets less
                    rec("A", 10.0, seed, 20, 0.0, 0.9, validation=0.0),
                    rec("A", 3.0, seed, 10, 0.1, 0.0, validation=0.1)]    # another checkpoint: ignored
    choice = analysis.choose_lr(records, step=20)["A"]
    assert choice.lr == 3.0 and choice.grid == (0.1, 1.0, 3.0, 10.0) and not choice.at_edge
    assert choice.test.mean == pytest.approx(0.95) and choice.forgetting.mean == pytest.approx(0.2)
    # validation decides, not test: lower validation at lr 1 with higher test would not be chosen
    edge = analysis.choose_lr([rec("B", 1.0, 0, 5, 0.9, 0.1, validation=0.2),
                               rec("B", 2.0, 0, 5, 0.1, 0.1, validation=0.3)], step=5)["B"]
    assert edge.lr == 2.0 and edge.at_edge
    with pytest.raises(ValueError, match="checkpoints in the records"):
        analysis.choose_lr(records, step=99)


def test_method_frontiers_and_sensitivity():
    frontiers = analysis.method_frontiers(_two_methods())
    a = [(p["lr"], p["step"]) for p in frontiers["A"]]
    # A's points (mean): (0.1, 0.0)@0.1/10, (0.3, 0.05)@0.1/20, (0.5, 0.2)@1/10, (1.0, 0.6)@1/20: all undominated
    assert a == [(0.1, 10), (0.1, 20), (1.0, 10), (1.0, 20)]
    assert isinstance(frontiers["A"][0]["learning"], Estimate)
    spread = analysis.sensitivity(_two_methods(), step=20)
    assert spread["A"]["learning"] == pytest.approx(0.7) and spread["A"]["forgetting"] == pytest.approx(0.55)
    assert spread["B"] == {"learning": 0.0, "forgetting": 0.0}


def test_energy_rank_on_known_spectra():
    import torch

    from peftlab.spectral import energy_rank, random_energy_rank, update_spectra

    # singular values 3, 2, 1: energies 9, 4, 1 of 14; 90% (12.6) needs two, 60% (8.4) one, all of it three
    u, _ = torch.linalg.qr(torch.randn(7, 3, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 3, dtype=torch.float64))
    m = u @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ v.T
    assert energy_rank(m, 0.9) == 2 and energy_rank(m, 0.6) == 1 and energy_rank(m, 1.0) == 3
    assert energy_rank(m.T, 0.9) == 2
    assert energy_rank(torch.zeros(4, 6)) == 0
    # a rank-2 product never needs more than 2; a random square matrix needs most of its rank
    low = torch.randn(64, 2) @ torch.randn(2, 48)
    assert energy_rank(low, 0.99) <= 2
    assert 24 <= random_energy_rank((64, 48)) <= 48  # unstructured: more than half its rank (28 here)
    with pytest.raises(ValueError):
        energy_rank(m, 0.0)
    # update_spectra: only changed 2-D weights, the rank of the update (not of the weight)
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(16, 12), "model.layers.1.mlp.up_proj.weight": torch.randn(16, 12),
            "model.layers.0.input_layernorm.weight": torch.ones(12)}
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["model.layers.1.mlp.up_proj.weight"] += torch.randn(16, 1) @ torch.randn(1, 12)
    tuned["model.layers.0.input_layernorm.weight"] += 1
    rows = update_spectra(base, tuned)
    assert [(r["layer"], r["module"], r["energy_rank"], r["full_rank"]) for r in rows] == [(1, "up_proj", 1, 12)]
    assert rows[0]["random_energy_rank"] > 1
