"""The claims ledger (``peftlab/claims/``, lecture 13) and the course's sources.

- every row has a claim, a source, an experiment (a callable and a command) and a verdict rule;
- every verdict is computed by its rule from the measured result, and a changed result turns it;
- ``python -m peftlab claims`` prints every row with a measured result and a verdict;
- no lecture, exercise, solution, README or docs page mentions a "seed text" or a "course text": a source the
  student cannot read.

Run: ``.venv/bin/python -m pytest tests/test_claims.py -q -p no:xdist``. CPU only; the fast rows
build the tiny base a few times (about half a minute), the slow rows read committed results.
"""
import copy
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab import claims

ROOT = Path(__file__).resolve().parents[1]


def row_problems(c: claims.Claim) -> list[str]:
    """What a ledger row lacks: text fields, an experiment (callable and command), a verdict rule."""
    problems = [name for name in ("claim", "source", "experiment", "where", "rule_text")
                if not str(getattr(c, name) or "").strip()]
    if not callable(c.measure):
        problems.append("measure (the experiment) is not callable")
    if not callable(c.rule):
        problems.append("rule (the verdict rule) is not callable")
    if not str(c.command or "").startswith("python "):
        problems.append("command does not say how to reproduce the result")
    return problems


def test_every_row_has_an_experiment_and_a_verdict_rule():
    keys = [c.key for c in claims.LEDGER]
    assert len(keys) == len(set(keys)) and len(keys) >= 14
    for c in claims.LEDGER:
        assert not row_problems(c), (c.key, row_problems(c))


def test_a_row_without_experiment_or_rule_is_caught():
    row = claims.LEDGER[0]
    assert row_problems(dataclasses.replace(row, measure=None))
    assert row_problems(dataclasses.replace(row, rule=None))
    assert row_problems(dataclasses.replace(row, experiment=" "))
    assert row_problems(dataclasses.replace(row, command=""))


def test_the_issue_rows_are_all_there():
    wanted = {"56gb", "gpt4-175b", "palm-540b", "rtx3090", "four-copies", "storage", "latency", "faster-training",
              "forgetting", "sensitivity", "fusion", "low-rank", "prefix", "taxonomy"}
    assert wanted <= {c.key for c in claims.LEDGER}


def test_verdict_words_are_checked():
    with pytest.raises(ValueError, match="verdict must be one of"):
        claims.Verdict("true", "typed by hand")


@pytest.fixture(scope="module")
def settled():
    return {row.claim.key: row for row in claims.ledger(quick=True)}


def test_every_row_settles_with_a_result_and_a_verdict(settled):
    assert set(settled) == {c.key for c in claims.LEDGER}
    for key, row in settled.items():
        assert row.result["summary"].strip(), key
        assert row.verdict.word in claims.VERDICTS and row.verdict.why.strip(), key
        assert row.verdict == row.claim.rule(row.result), key  # the rule, applied again, gives the same verdict


def test_arithmetic_rows(settled):
    r56 = settled["56gb"].result
    assert r56["readings_gb"]["mixed weights+grads+AdamW"] == pytest.approx(112)
    assert "fp32 Adam moments alone" in r56["matching"] and "fp16 weights+grads+AdamW" in r56["matching"]
    assert settled["gpt4-175b"].result["gpt3_params"] == pytest.approx(175e9, rel=0.01)
    assert settled["palm-540b"].result["palm_params"] == pytest.approx(540.35e9, rel=1e-3)  # Table 1: 540.35B
    assert settled["four-copies"].result["copies_fp32"] == 4 and settled["four-copies"].result["copies_mixed"] == 8
    ranks = settled["low-rank"].result["ranks"]
    assert ranks["BA"] == settled["low-rank"].result["r"] and ranks["W + BA"] == ranks["W"]


def test_verdicts_follow_the_results(settled):
    """Change a result and the verdict changes: the rules read numbers, not typed words."""
    r = copy.deepcopy(settled["56gb"].result)
    assert claims.rule_56gb(r).word == "holds only if"
    assert claims.rule_56gb({**r, "matching": ["mixed weights+grads+AdamW"]}).word == "holds"
    assert claims.rule_56gb({**r, "matching": []}).word == "wrong"
    assert claims.rule_540b({"palm_params": 500e9}).word == "wrong"
    assert claims.rule_175b({"gpt3_params": 175e9, "gpt4_published": None}).word == "wrong"
    low = copy.deepcopy(settled["low-rank"].result)
    low["ranks"]["W + BA"] = low["r"]
    assert claims.rule_low_rank(low).word == "depends"
    forget = copy.deepcopy(settled["forgetting"].result)
    flipped = {lv: {m: (None if v is None else (v[0], -v[2], -v[1])) if m != "full" else v for m, v in rows.items()}
               for lv, rows in forget["matched"].items()}  # every PEFT interval moved below zero
    assert claims.rule_forgetting({**forget, "matched": flipped}).word == "holds"
    sens = copy.deepcopy(settled["sensitivity"].result)
    sens["spread"]["full"]["learning"] = 0.0
    assert claims.rule_sensitivity(sens).word == "holds"
    fusion = {"gains": {"a": 0.1, "b": 0.05}, "vs_mixed": {}}
    assert claims.rule_fusion(fusion).word == "holds"
    assert claims.rule_fusion({"gains": {"a": -0.1, "b": -0.05}}).word == "wrong"
    lat = copy.deepcopy(settled["latency"].result)
    for batch in lat["ratios"]:
        lat["ratios"][batch] = {n: 1.0 for n in lat["ratios"][batch]}
    assert claims.rule_latency(lat).word == "wrong"


def test_slow_rows_name_their_committed_results():
    results = claims.read_results()
    assert {"latency", "fusion"} <= set(results), "peftlab/claims_results.json lacks a slow row"
    assert results["latency"]["command"].startswith(claims.LATENCY_COMMAND)
    assert results["fusion"]["command"].startswith("python bench/multitask_fusion.py")
    for c in claims.LEDGER:
        if c.slow:
            assert "python " in c.command, c.key


def test_cli_prints_every_row_with_a_result_and_a_verdict():
    out = subprocess.run([sys.executable, "-m", "peftlab", "claims"], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PEFTLAB_QUICK": "1"}, cwd=ROOT).stdout
    for c in claims.LEDGER:
        block = out.split(f"[{c.key}]", 1)
        assert len(block) == 2, f"row {c.key} not printed"
        body = block[1].split("\n[", 1)[0]
        assert re.search(r"result:\s+\S", body), c.key
        assert re.search(r"verdict:\s+(holds only if|holds|wrong|depends):", body), c.key


def test_cli_unknown_claim_is_a_clear_error():
    from peftlab.cli import main

    assert main(["claims", "--only", "gpt5"]) == 2


DOC_PAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
SOURCES = ["README.md", "CONTRIBUTING.md", *DOC_PAGES,
           *sorted(str(p.relative_to(ROOT)) for folder in ("lectures", "exercises", "solutions")
                                for p in (ROOT / folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)]
UNSEEN_SOURCE = re.compile(r"seed_claims|seed[\s_-]+text|course[\s_-]+text|text this course was written from", re.IGNORECASE)


@pytest.mark.parametrize("path", SOURCES)
def test_no_reference_to_an_unseen_source_text(path):
    """The course never cites a text the student cannot read ("the seed text", "the course text")."""
    text = (ROOT / path).read_text()
    if path.endswith(".ipynb"):  # markdown and code, not outputs
        text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
    hits = [m.group(0) for m in UNSEEN_SOURCE.finditer(text)]
    assert not hits, f"{path} refers to an unseen source: {hits}"
