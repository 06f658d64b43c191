"""The ledger's building blocks: a verdict, a claim row, a settled row, and the committed slow results
(``peftlab/claims_results.json``). The rows themselves are in ``peftlab.claims``."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

VERDICTS = ("holds", "holds only if", "wrong", "depends")
RESULTS_PATH = Path(__file__).resolve().parents[1] / "claims_results.json"  # the committed slow results
LATENCY_COMMAND = "python -m peftlab claims --measure latency"
FUSION_COMMAND = "python bench/multitask_fusion.py  # then: python -m peftlab claims --fusion-from results/multitask_fusion.json"
GB = 10**9  # what the claims and GPU spec sheets call a gigabyte


@dataclass(frozen=True)
class Verdict:
    """A verdict word (one of ``VERDICTS``) and the condition or reason that goes with it."""

    word: str
    why: str

    def __post_init__(self):
        if self.word not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.word!r}")

    def __str__(self) -> str:
        return f"{self.word}: {self.why}"


@dataclass(frozen=True)
class Claim:
    """One row of the ledger."""

    key: str
    claim: str  # as commonly stated
    source: str  # who says it (a citation where one exists)
    experiment: str  # what settles it, in one sentence
    where: str  # the lecture section that measures or teaches it
    command: str  # how to reproduce the number
    measure: Callable[..., dict]  # (quick: bool) -> result dict with a "summary" line
    rule: Callable[[dict], Verdict]  # result -> verdict
    rule_text: str  # the verdict rule in words
    slow: bool = False  # True: the result is read from committed results, not computed


@dataclass
class Settled:
    claim: Claim
    result: dict
    verdict: Verdict
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)



def read_results(path: Path | str = RESULTS_PATH) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(key: str, value: dict, path: Path | str = RESULTS_PATH) -> None:
    results = read_results(path)
    results[key] = value
    Path(path).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
