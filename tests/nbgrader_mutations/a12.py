"""Planted mistakes for assignment a12 (learning vs forgetting, your experiment), read by
``tests/test_nbgrader.py``.

``MUTATIONS`` maps each answer cell's grade_id to a wrong but runnable body that replaces the lines
from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; the test indents it like
the marker). Each is a mistake a student would make, and each fails every test cell of its part:
the hand-made records of the first test cell are built to catch it, and the second test cell
compares with a reference on the records of the sweep (the shipped ``a12_records.jsonl`` while
grading the harness's submissions).

``MORE_MUTATIONS`` maps a name to ``(grade_id, body)``: further mistakes of the same kinds (a normal
quantile, the wrong degrees of freedom, identical points kept twice, checkpoints walked out of order,
ties going to the higher rate, verdicts from means instead of intervals).

``DELEGATIONS`` maps each answer cell's grade_id to a body that calls ``peftlab.analysis`` instead of
computing the answer: the hidden tests switch those functions off, so each must lose its part.
"""

MUTATIONS = {
    # Part A: the population standard deviation (n in the denominator instead of n - 1)
    "mean_ci": """
        values = [float(v) for v in values]
        n = len(values)
        if n == 0:
            raise ValueError("mean_ci needs at least one value")
        mean = sum(values) / n
        if n == 1:
            return mean, math.nan
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
        return mean, t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    """,
    # Part B: dominance that needs strictly better on both axes: equal-learning ties and identical points survive
    "frontier": """
        groups = defaultdict(list)
        for r in sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"]):
            groups[(r["lr"], r["step"])].append((r[learning], r[forgetting]))
        points = [{"lr": lr, "step": step, "learning": sum(v[0] for v in values) / len(values),
                   "forgetting": sum(v[1] for v in values) / len(values)}
                  for (lr, step), values in sorted(groups.items())]
        keep = [p for p in points
                if not any(q["learning"] > p["learning"] and q["forgetting"] < p["forgetting"] for q in points)]
        return sorted(keep, key=lambda p: (p["learning"], p["forgetting"]))
    """,
    # Part C: the first checkpoint that reaches the level, taken as it is (no interpolation, no start at the base)
    "when_reached": """
        for r in sorted(run_records, key=lambda r: r["step"]):
            if r[learning] >= level:
                return float(r["step"]), float(r[forgetting])
        return None
    """,
    # Part D: a rate counts when any seed reaches the level (averaging only the seeds that got there)
    "matched_forgetting": """
        runs = defaultdict(list)
        for r in records:
            if r["method"] == method:
                runs[(r["lr"], r["seed"])].append(r)
        hits_by_lr = defaultdict(list)
        for (lr, seed), run in sorted(runs.items()):
            hit = when_reached(run, level, learning, forgetting)
            if hit is not None:
                hits_by_lr[lr].append(hit)
        best = None
        for lr, hits in sorted(hits_by_lr.items()):
            mean, half = mean_ci([hit[1] for hit in hits], confidence)
            if best is None or mean < best["forgetting"][0]:
                best = {"lr": lr, "forgetting": (mean, half), "step": sum(hit[0] for hit in hits) / len(hits),
                        "seeds": len(hits)}
        return best
    """,
    # Part E: rates chosen on the test split (the split that is reported) instead of the validation split
    "experiment_answers": """
        runs = [r for r in records if r["method"] != "base"]
        last = max(r["step"] for r in runs)
        methods = sorted({r["method"] for r in runs})
        chosen = {}
        for method in methods:
            at_last = defaultdict(list)
            for r in sorted(runs, key=lambda r: r["seed"]):
                if r["method"] == method and r["step"] == last:
                    at_last[r["lr"]].append(r)
            chosen[method] = min(at_last, key=lambda lr: (-(sum(r[LEARNING] for r in at_last[lr]) / len(at_last[lr])),
                                                          sum(r[FORGETTING] for r in at_last[lr]) / len(at_last[lr]), lr))
        matched = {method: matched_forgetting(records, method, level) for method in methods}
        reference = matched.get(baseline)
        verdict = {}
        for method in methods:
            if method == baseline:
                continue
            mine = matched[method]
            if mine is None:
                verdict[method] = "never reaches"
            elif reference is None:
                verdict[method] = "baseline never reaches"
            elif sum(mine["forgetting"]) < reference["forgetting"][0] - reference["forgetting"][1]:
                verdict[method] = "less"
            elif mine["forgetting"][0] - mine["forgetting"][1] > sum(reference["forgetting"]):
                verdict[method] = "more"
            else:
                verdict[method] = "cannot tell"
        return {"chosen_lr": chosen, "never_reaches": sorted(m for m in methods if matched[m] is None), "verdict": verdict}
    """,
}

_ANSWERS_TAIL = """
    reference = matched.get(baseline)
    verdict = {}
    for method in methods:
        if method == baseline:
            continue
        mine = matched[method]
        if mine is None:
            verdict[method] = "never reaches"
        elif reference is None:
            verdict[method] = "baseline never reaches"
        else:
            verdict[method] = VERDICT_RULE
    return {"chosen_lr": chosen, "never_reaches": sorted(m for m in methods if matched[m] is None), "verdict": verdict}
"""

_ANSWERS_HEAD = """
    runs = [r for r in records if r["method"] != "base"]
    last = max(r["step"] for r in runs)
    methods = sorted({r["method"] for r in runs})
    chosen = {}
    for method in methods:
        at_last = defaultdict(list)
        for r in sorted(runs, key=lambda r: r["seed"]):
            if r["method"] == method and r["step"] == last:
                at_last[r["lr"]].append(r)
        chosen[method] = min(at_last, key=lambda lr: (-(sum(r[SELECTION] for r in at_last[lr]) / len(at_last[lr])),
                                                      sum(r[FORGETTING] for r in at_last[lr]) / len(at_last[lr]), lr))
    matched = {method: matched_forgetting(records, method, level) for method in methods}
"""

MORE_MUTATIONS = {
    # Part A: the normal quantile 1.96 for every sample size (a z-interval from two or three seeds)
    "mean_ci_normal_quantile": ("mean_ci", """
        values = [float(v) for v in values]
        n = len(values)
        if n == 0:
            raise ValueError("mean_ci needs at least one value")
        mean = sum(values) / n
        if n == 1:
            return mean, math.nan
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        return mean, 1.96 * sd / math.sqrt(n)
    """),
    # Part A: n degrees of freedom instead of n - 1
    "mean_ci_dof_n": ("mean_ci", """
        values = [float(v) for v in values]
        n = len(values)
        if n == 0:
            raise ValueError("mean_ci needs at least one value")
        mean = sum(values) / n
        if n == 1:
            return mean, math.nan
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        return mean, t_quantile(confidence, n) * sd / math.sqrt(n)
    """),
    # Part B: dominance right, but identical points are both kept
    "frontier_keeps_identical_points": ("frontier", """
        groups = defaultdict(list)
        for r in sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"]):
            groups[(r["lr"], r["step"])].append((r[learning], r[forgetting]))
        points = [{"lr": lr, "step": step, "learning": sum(v[0] for v in values) / len(values),
                   "forgetting": sum(v[1] for v in values) / len(values)}
                  for (lr, step), values in sorted(groups.items())]
        keep = [p for p in points
                if not any(q["learning"] >= p["learning"] and q["forgetting"] <= p["forgetting"]
                           and (q["learning"] > p["learning"] or q["forgetting"] < p["forgetting"]) for q in points)]
        return sorted(keep, key=lambda p: (p["learning"], p["forgetting"]))
    """),
    # Part C: the checkpoints walked in the order they were given, not in step order
    "when_reached_unsorted": ("when_reached", """
        trajectory = [(0, 0.0, 0.0)] + [(r["step"], r[learning], r[forgetting]) for r in run_records]
        previous = None
        for step, learned, forgot in trajectory:
            if learned >= level:
                if previous is None:
                    return float(step), float(forgot)
                before_step, before_learned, before_forgot = previous
                u = (level - before_learned) / (learned - before_learned)
                return before_step + u * (step - before_step), before_forgot + u * (forgot - before_forgot)
            previous = (step, learned, forgot)
        return None
    """),
    # Part D: exact ties in mean forgetting go to the higher rate (<= instead of <)
    "matched_forgetting_ties_to_higher_rate": ("matched_forgetting", """
        runs = defaultdict(list)
        for r in records:
            if r["method"] == method:
                runs[(r["lr"], r["seed"])].append(r)
        hits_by_lr = defaultdict(list)
        for (lr, seed), run in sorted(runs.items()):
            hits_by_lr[lr].append(when_reached(run, level, learning, forgetting))
        best = None
        for lr, hits in sorted(hits_by_lr.items()):
            if all(hit is not None for hit in hits):
                mean, half = mean_ci([hit[1] for hit in hits], confidence)
                if best is None or mean <= best["forgetting"][0]:
                    best = {"lr": lr, "forgetting": (mean, half), "step": sum(hit[0] for hit in hits) / len(hits),
                            "seeds": len(hits)}
        return best
    """),
    # Part E: the verdict from the means alone, as if a difference of means were a finding
    "experiment_answers_means_not_intervals": ("experiment_answers", _ANSWERS_HEAD + _ANSWERS_TAIL.replace(
        "VERDICT_RULE", '"less" if mine["forgetting"][0] < reference["forgetting"][0] else "more"')),
}

DELEGATIONS = {
    "mean_ci": """
        from peftlab import analysis
        estimate = analysis.mean_ci(values)
        return estimate.mean, estimate.half
    """,
    "frontier": """
        from peftlab import analysis
        points = analysis.method_frontiers([r for r in records if r["method"] == method], learning, forgetting)
        return [{"lr": p["lr"], "step": p["step"], "learning": p["learning"].mean, "forgetting": p["forgetting"].mean}
                for p in points.get(method, [])]
    """,
    "when_reached": """
        from peftlab import analysis
        trajectory = [(0, 0.0, 0.0)] + sorted((r["step"], r[learning], r[forgetting]) for r in run_records)
        return analysis.forgetting_when_reached(trajectory, level)
    """,
    "matched_forgetting": """
        from peftlab import analysis
        found = analysis.matched_learning([r for r in records if r["method"] == method], level, learning, forgetting)
        found = found.get(method)
        if found is None or not found.reached:
            return None
        return {"lr": found.lr, "forgetting": (found.forgetting.mean, found.forgetting.half), "step": found.step.mean,
                "seeds": found.seeds}
    """,
    "experiment_answers": """
        from peftlab import analysis
        runs = [r for r in records if r["method"] != "base"]
        chosen = {m: c.lr for m, c in analysis.choose_lr(runs, max(r["step"] for r in runs)).items()}
        matched = analysis.matched_learning(runs, level)
        verdict = {}
        for method in sorted(chosen):
            if method == baseline:
                continue
            mine, reference = matched.get(method), matched.get(baseline)
            if mine is None or not mine.reached:
                verdict[method] = "never reaches"
            elif reference is None or not reference.reached:
                verdict[method] = "baseline never reaches"
            elif mine.forgetting.high < reference.forgetting.low:
                verdict[method] = "less"
            elif mine.forgetting.low > reference.forgetting.high:
                verdict[method] = "more"
            else:
                verdict[method] = "cannot tell"
        never = sorted(m for m in chosen if matched.get(m) is None or not matched[m].reached)
        return {"chosen_lr": chosen, "never_reaches": never, "verdict": verdict}
    """,
}
