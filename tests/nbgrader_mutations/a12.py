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
ties going to the higher rate, verdicts from means instead of intervals, identical points ordered by step before
rate, seed means summed in record order, validation ties sent to the lower rate, rates judged at their best
checkpoint), and adversarial submissions (issue 26): the hidden reference borrowed from the notebook's namespace,
peftlab's implementation bound before the switch-off, a verdict that equals everything, and the records file
rewritten with one seed. Each must lose its part: hidden helpers and references live in a function's locals,
hidden comparisons check exact types, and the "on your records" tests check the records' design first.

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

_INTERVAL_RULE = ('"less" if sum(mine["forgetting"]) < reference["forgetting"][0] - reference["forgetting"][1] else '
                  '"more" if mine["forgetting"][0] - mine["forgetting"][1] > sum(reference["forgetting"]) else "cannot tell"')

# Part B: identical points ordered by checkpoint before rate (a frontier that passes the visible tests)
_FRONTIER_STEP_FIRST = """
        groups = defaultdict(list)
        for r in sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"]):
            groups[(r["lr"], r["step"])].append((r[learning], r[forgetting]))
        points = [{"lr": lr, "step": step, "learning": sum(v[0] for v in values) / len(values),
                   "forgetting": sum(v[1] for v in values) / len(values)}
                  for (lr, step), values in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0]))]
        keep = [p for i, p in enumerate(points)
                if not any(q["learning"] >= p["learning"] and q["forgetting"] <= p["forgetting"]
                           and (q["learning"] > p["learning"] or q["forgetting"] < p["forgetting"] or j < i)
                           for j, q in enumerate(points) if j != i)]
        return sorted(keep, key=lambda p: (p["learning"], p["forgetting"]))
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
    # Part B: identical points ordered by checkpoint before rate (the text says rate first, then checkpoint)
    "frontier_step_before_rate": ("frontier", _FRONTIER_STEP_FIRST),
    # Part B: seed means summed in the order of the records, not in increasing seed order
    "frontier_means_in_record_order": ("frontier", """
        groups = defaultdict(list)
        for r in records:
            if r["method"] == method:
                groups[(r["lr"], r["step"])].append((r[learning], r[forgetting]))
        points = [{"lr": lr, "step": step, "learning": sum(v[0] for v in values) / len(values),
                   "forgetting": sum(v[1] for v in values) / len(values)}
                  for (lr, step), values in sorted(groups.items())]
        keep = [p for i, p in enumerate(points)
                if not any(q["learning"] >= p["learning"] and q["forgetting"] <= p["forgetting"]
                           and (q["learning"] > p["learning"] or q["forgetting"] < p["forgetting"] or j < i)
                           for j, q in enumerate(points) if j != i)]
        return sorted(keep, key=lambda p: (p["learning"], p["forgetting"]))
    """),
    # Part B (adversarial): the hidden tests' reference, borrowed from the notebook's namespace at call time, with
    # the fallback of frontier_step_before_rate (which passes the visible tests) when there is none
    "frontier_borrows_hidden_reference": ("frontier", """
        import sys
        borrowed = globals().get("_ref_frontier") or next((value for name, value in vars(sys.modules["__main__"]).items()
                                                           if name.startswith("_ref_front") and callable(value)), None)
        if borrowed is not None:
            return borrowed(records, method, learning, forgetting)
    """ + _FRONTIER_STEP_FIRST),
    # Part C (adversarial): peftlab's implementation bound as a default argument, taken before any switch-off
    # (it loses once switching peftlab off disables the function itself, not just the names that point to it)
    "when_reached_default_argument_delegation": ("when_reached", """
        from peftlab import analysis

        def delegate(trajectory, level, _impl=analysis.forgetting_when_reached):
            return _impl(trajectory, level)

        if getattr(when_reached, "delegate", None) is None:
            when_reached.delegate = delegate  # bound at the first call, kept for every later one
        delegate = when_reached.delegate
        return delegate([(0, 0.0, 0.0)] + sorted((r["step"], r[learning], r[forgetting]) for r in run_records), level)
    """),
    # Part E: a tie on validation learning sent straight to the lower rate (the lower-forgetting tie-break skipped)
    "answers_validation_tie_to_lower_rate": ("experiment_answers", _ANSWERS_HEAD.replace(
        "sum(r[FORGETTING] for r in at_last[lr]) / len(at_last[lr]), lr))", "lr))") + _ANSWERS_TAIL.replace(
        "VERDICT_RULE", _INTERVAL_RULE)),
    # Part E: each rate judged at its best validation checkpoint instead of the last one
    "answers_best_checkpoint": ("experiment_answers", """
    runs = [r for r in records if r["method"] != "base"]
    methods = sorted({r["method"] for r in runs})
    chosen = {}
    for method in methods:
        by_point = defaultdict(list)
        for r in sorted(runs, key=lambda r: r["seed"]):
            if r["method"] == method:
                by_point[(r["lr"], r["step"])].append(r)

        def rank(key):
            rows = by_point[key]
            return (-(sum(r[SELECTION] for r in rows) / len(rows)), sum(r[FORGETTING] for r in rows) / len(rows), key[0])

        chosen[method] = min(by_point, key=rank)[0]
    matched = {method: matched_forgetting(records, method, level) for method in methods}
    """ + _ANSWERS_TAIL.replace("VERDICT_RULE", _INTERVAL_RULE)),
    # Part E (adversarial): wrong verdicts ("cannot tell" everywhere) returned as a str that equals everything
    "answers_verdict_equals_everything": ("experiment_answers", _ANSWERS_HEAD + """
    class Verdict(str):
        def __eq__(self, other):
            return True

        def __ne__(self, other):
            return False

        __hash__ = str.__hash__

    return {"chosen_lr": chosen, "never_reaches": sorted(m for m in methods if matched[m] is None),
            "verdict": {m: Verdict("cannot tell") for m in methods if m != baseline}}
    """),
    # Part E (adversarial): the records file rewritten with one seed (where intervals cannot show the mistake),
    # plus a wrong verdict rule that one seed hides: intervals that only touch counted as apart
    "answers_rewrite_records_one_seed": ("experiment_answers", """
    with open("a12_records.jsonl") as course:
        one_seed = [line for line in course if line.strip() and json.loads(line).get("seed", 0) == 0]
    with open("my_sweep.jsonl", "w") as mine_file:
        mine_file.writelines(one_seed)
    """ + _ANSWERS_HEAD + _ANSWERS_TAIL.replace(
        "VERDICT_RULE", '"less" if sum(mine["forgetting"]) <= reference["forgetting"][0] - reference["forgetting"][1] else '
                        '"more" if mine["forgetting"][0] - mine["forgetting"][1] >= sum(reference["forgetting"]) '
                        'else "cannot tell"')),
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
