"""The nbgrader pipeline, run for real on every assignment in ``solutions/``.

For each assignment folder ``solutions/<a>/`` (found by a glob, so a new assignment is picked up with
no change here), in a temporary copy of the course (``nbgrader_config.py`` and ``solutions/<a>/``):

- ``nbgrader generate_assignment`` reproduces the committed release ``exercises/<a>/`` exactly:
  the same files, and per notebook cell the same type, source and ``metadata.nbgrader`` (which holds
  nbgrader's checksums, so nothing is ignored); the committed release has no outputs;
- one ``nbgrader autograde`` run over every submission below, graded as students:

  ==========================  ====================================================================
  student                     what it must score
  ==========================  ====================================================================
  ``solution``                full marks; only the hand-graded cells (written answers) wait for a grader
  ``solution_again``          the same as ``solution``, test cell by test cell (grading is deterministic)
  ``blank``                   zero (the untouched release)
  ``mistake_<answer>``        a planted mistake (``MUTATIONS``, one per answer cell): loses the points of
                              its part and only those
  ``more_<name>``             further planted mistakes (``MORE_MUTATIONS``, at least 3): the same
  ``delegates_<answer>``      the answer calls peftlab's implementation (``DELEGATIONS``): loses every
                              point of its part (the hidden tests switch peftlab off)
  ``monkeypatch``             the first answer also sets ``torch.testing.assert_close`` and ``math.isclose``
                              to no-ops, every other answer is its planted mistake: the autograder flags
                              it (``peftlab.grading_preprocessors.FlagTampering``), every test cell scores 0
  ``monkeypatch_unseen``      the same patches (and ``torch.allclose``, ``torch.equal``) made through an
                              alias the static reading cannot follow: every part but the first still loses
                              its points, because hidden tests compare through ``grading.start()``'s
                              references
  ``publishes_inline``        every answer is its planted mistake and first publishes a result, from inside the
                              function, with ``get_ipython().displayhook("ok")`` (nbgrader alone would read that
                              result as the test cell's grade): every part loses its points
                              (``peftlab.grading_preprocessors.ScoreByPassing``)
  ``publishes_from_hooks``    the first answer also registers ``pre_run_cell`` and ``post_run_cell`` hooks that
                              publish a result in every later cell, every other answer is its planted mistake:
                              every part but the first loses its points
  ``warns``                   the solution with ``warnings.warn`` and a log record in every answer region:
                              full marks (nbgrader zeroes a cell that writes to stderr)
  ``runaway``                 ``while True: pass`` in the answer of the part with fewest test cells: those
                              cells are cut by the per-cell timeout, every other part keeps full marks
  ``deleted_test``            the solution with one test cell deleted: nbgrader puts it back
                              (``RestoreDeletedCells``) and grades it: full marks
  ==========================  ====================================================================

- statically: each ``## Part`` heading's "(N points)" equals the points of the graded cells under it
  (test cells and hand-graded cells), the title's total equals them all, and the mutation file has a
  ``MUTATIONS`` and a ``DELEGATIONS`` entry for every answer cell and at least 3 ``MORE_MUTATIONS``.

A *part* is a ``## `` markdown heading and the cells up to the next one. Scores are read from the
gradebook with ``nbgrader.api.Gradebook``, never from exit codes (nbgrader exits 0 when tests fail).
The autograde run uses a per-cell timeout of ``HARNESS_TIMEOUT`` seconds (at most the course's, from
``nbgrader_config.py``), so the runaway case costs seconds, not minutes; every cell of every other
submission must finish within it.

Adding an assignment: write ``solutions/<a>/<a>.ipynb``, run ``nbgrader generate_assignment <a> --force``
and commit ``exercises/<a>/``, then write ``tests/nbgrader_mutations/<a>.py`` (``a01.py`` is the example):

- ``MUTATIONS``: for every answer cell (its grade_id), a wrong but runnable body that replaces the lines
  from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; it is indented like the
  marker): a mistake a student would make, one that fails every test cell of its part;
- ``MORE_MUTATIONS``: name -> (answer grade_id, body), at least 3 further plausible mistakes;
- ``DELEGATIONS``: for every answer cell, a body that calls peftlab's implementation instead of writing
  it, or None (with a comment) where peftlab has nothing that answers the cell;
- optionally ``HARNESS_TIMEOUT``: the per-cell limit in seconds the harness grades with, where a cell of
  the solution needs more than the default 30 (the course's own limit still caps it).

Run: ``.venv/bin/python -m pytest tests/test_nbgrader.py -m nbgrader -n 0`` (``-k a01`` for one
assignment). CPU only. Cost: one kernel per submission (about 20 for an assignment of 5 answer cells,
plus one ``HARNESS_TIMEOUT`` per test cell of the runaway's part); several minutes of CPU per
assignment on a 2-core machine. ``-s`` prints the timings.
"""
from __future__ import annotations

import copy
import os
import re
import runpy
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

from peftlab.grading_preprocessors import find_tampering, student_cells

pytestmark = pytest.mark.nbgrader

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").glob("*/") if p.is_dir() and list(p.glob("*.ipynb")))

MUTATIONS_DIR = Path(__file__).resolve().parent / "nbgrader_mutations"
HARNESS_TIMEOUT = 30  # seconds per cell while the harness grades (the course's is longer: nbgrader_config.py);
# an assignment with a heavier cell sets HARNESS_TIMEOUT in its mutation file (at most the course's)
MIN_MORE_MUTATIONS = 3
TIMEOUT_LOG_LINES = ("Timeout waiting for execute reply", "Interrupting kernel")
FLAG = "GradingFlag"  # the error name peftlab.grading_preprocessors.FlagTampering gives a flagged test cell


def _mutation_file(assignment: str) -> dict:
    path = MUTATIONS_DIR / f"{assignment}.py"
    return runpy.run_path(str(path)) if path.exists() else {}


def mutations(assignment: str) -> dict[str, str]:
    """Planted mistakes of ``assignment``: answer cell grade_id -> body replacing its solution region."""
    return dict(_mutation_file(assignment).get("MUTATIONS", {}))


def more_mutations(assignment: str) -> dict[str, tuple[str, str]]:
    """Further planted mistakes: name -> (answer grade_id, body)."""
    return {name: tuple(value) for name, value in _mutation_file(assignment).get("MORE_MUTATIONS", {}).items()}


def delegations(assignment: str) -> dict[str, str | None] | None:
    """Answer grade_id -> a body that calls peftlab's implementation (None: peftlab has none); None if unwritten."""
    found = _mutation_file(assignment).get("DELEGATIONS")
    return None if found is None else dict(found)


POINTS_IN_HEADING = re.compile(r"\((?:[^()]*?\s)?(\d+(?:\.\d+)?) points?\b[^()]*\)")


# ------------------------------------------------------------------------------- notebook structure

def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def is_autograded_test(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and cell.cell_type == "code"


def is_answer(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("solution")) and not meta.get("grade") and cell.cell_type == "code"


def is_hand_graded(cell) -> bool:
    """A written answer (grade + solution) or a task: nbgrader leaves its score to a grader."""
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade") and meta.get("solution")) or bool(meta.get("task"))


@dataclass
class Part:
    heading: str  # the "## " line, or "(before the first heading)"
    declared_points: float | None  # the "(N points)" of the heading
    tests: dict[str, float] = field(default_factory=dict)  # test grade_id -> points
    answers: list[str] = field(default_factory=list)  # answer grade_ids
    hand_graded: dict[str, float] = field(default_factory=dict)  # written answer grade_id -> points


def parts_of(nb) -> list[Part]:
    parts = [Part("(before the first heading)", None)]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heading = next((line for line in cell.source.splitlines() if line.startswith("## ")), None)
            if heading is not None:
                match = POINTS_IN_HEADING.search(heading)
                parts.append(Part(heading, float(match.group(1)) if match else None))
        if is_autograded_test(cell):
            parts[-1].tests[nbgrader_meta(cell)["grade_id"]] = float(nbgrader_meta(cell)["points"])
        if is_answer(cell):
            parts[-1].answers.append(nbgrader_meta(cell)["grade_id"])
        if is_hand_graded(cell):
            parts[-1].hand_graded[nbgrader_meta(cell)["grade_id"]] = float(nbgrader_meta(cell).get("points", 0))
    return parts


def source_notebooks(assignment: str) -> dict[str, nbformat.NotebookNode]:
    return {p.stem: nbformat.read(p, as_version=4) for p in sorted((REPO / "solutions" / assignment).glob("*.ipynb"))}


def answer_ids(assignment: str) -> list[str]:
    return [gid for nb in source_notebooks(assignment).values() for part in parts_of(nb) for gid in part.answers]


def _region(lines: list[str], start: int = 0) -> tuple[int, int] | None:
    """(index of ``### BEGIN SOLUTION``, index of ``### END SOLUTION``) of the first region from ``start``."""
    begin = next((i for i in range(start, len(lines)) if "### BEGIN SOLUTION" in lines[i]), None)
    if begin is None:
        return None
    return begin, next(i for i in range(begin, len(lines)) if "### END SOLUTION" in lines[i])


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def mutate(source: str, body: str) -> str:
    """Replace the BEGIN/END SOLUTION region of ``source`` with ``body``, indented like the marker."""
    lines = source.splitlines()
    begin, end = _region(lines)
    new_body = textwrap.indent(textwrap.dedent(body).strip("\n"), _indent(lines[begin])).splitlines()
    return "\n".join(lines[:begin] + new_body + lines[end + 1:])


def prepend_to_regions(source: str, body: str) -> str:
    """Put ``body`` at the start of every solution region of ``source`` (after the marker), keeping the rest."""
    lines = source.splitlines()
    start = 0
    while (region := _region(lines, start)) is not None:
        begin, end = region
        added = textwrap.indent(textwrap.dedent(body).strip("\n"), _indent(lines[begin])).splitlines()
        lines[begin + 1:begin + 1] = added
        start = end + len(added) + 1
    return "\n".join(lines)


def answer_cell(notebooks: dict[str, nbformat.NotebookNode], grade_id: str, where: str):
    cells = [c for nb in notebooks.values() for c in nb.cells if is_answer(c) and nbgrader_meta(c)["grade_id"] == grade_id]
    assert len(cells) == 1, f"{where} names {grade_id!r}: expected one answer cell with that grade_id, found {len(cells)}"
    return cells[0]


# ------------------------------------------------------------------------------- the submissions

MONKEYPATCH = """

# tampering with the checks (the harness's monkeypatching submission)
import math
import torch
torch.testing.assert_close = lambda *args, **kwargs: None
math.isclose = lambda *args, **kwargs: True
"""

MONKEYPATCH_UNSEEN = """

# the same tampering through an alias the autograder's static reading cannot follow
import importlib
_put = setattr
_put(importlib.import_module("torch.testing"), "assert_close", lambda *args, **kwargs: None)
_put(importlib.import_module("math"), "isclose", lambda *args, **kwargs: True)
_put(importlib.import_module("torch"), "allclose", lambda *args, **kwargs: True)
_put(importlib.import_module("torch"), "equal", lambda *args, **kwargs: True)
"""

PUBLISH_INLINE = """
get_ipython().displayhook("ok")  # publishes a result in the cell that calls this answer: it must not decide the grade
"""

PUBLISH_FROM_HOOKS = """

# a result published in every later cell, the test cells included: it must not decide their grades
def _harness_publish(*args):
    get_ipython().displayhook("ok")


get_ipython().events.register("pre_run_cell", _harness_publish)
get_ipython().events.register("post_run_cell", _harness_publish)
"""

WARNS = """
import logging as _harness_logging
import sys as _harness_sys
import warnings as _harness_warnings
_harness_warnings.warn("a warning raised by a correct answer: it must not cost points", UserWarning)
_harness_logging.getLogger("student").warning("a log record from a correct answer: it must not cost points")
print("a line a correct answer writes to stderr: it must not cost points", file=_harness_sys.stderr)
"""

RUNAWAY = """
while True:  # a runaway answer: the per-cell timeout must cut it
    pass
"""


def build_submissions(assignment: str, sources: dict, release: Path) -> tuple[dict, dict, dict]:
    """(student -> notebooks, student -> the answer grade_id it changes, facts about the special cases)."""
    where = f"tests/nbgrader_mutations/{assignment}.py"
    submissions: dict[str, dict[str, nbformat.NotebookNode]] = {
        "solution": sources,
        "solution_again": sources,
        "blank": {name: nbformat.read(release / f"{name}.ipynb", as_version=4) for name in sources},
    }
    changed: dict[str, str] = {}

    def with_body(student: str, grade_id: str, body: str):
        notebooks = copy.deepcopy(sources)
        cell = answer_cell(notebooks, grade_id, where)
        cell.source = mutate(cell.source, body)
        submissions[student], changed[student] = notebooks, grade_id

    for grade_id, body in mutations(assignment).items():
        with_body(f"mistake_{grade_id}", grade_id, body)
    for name, (grade_id, body) in more_mutations(assignment).items():
        with_body(f"more_{name}", grade_id, body)
    for grade_id, body in (delegations(assignment) or {}).items():
        if body is not None:
            with_body(f"delegates_{grade_id}", grade_id, body)

    facts: dict[str, object] = {}
    answers = answer_ids(assignment)
    planted = mutations(assignment)
    if answers and set(answers) <= set(planted):
        for student, patch in (("monkeypatch", MONKEYPATCH), ("monkeypatch_unseen", MONKEYPATCH_UNSEEN)):
            notebooks = copy.deepcopy(sources)
            first = answer_cell(notebooks, answers[0], where)
            first.source = first.source.rstrip("\n") + patch
            for grade_id in answers[1:]:
                cell = answer_cell(notebooks, grade_id, where)
                cell.source = mutate(cell.source, planted[grade_id])
            submissions[student] = notebooks
        facts["patched_answer"] = answers[0]
        notebooks = copy.deepcopy(sources)  # every answer wrong, and publishing a result as it runs
        for grade_id in answers:
            cell = answer_cell(notebooks, grade_id, where)
            cell.source = mutate(cell.source, PUBLISH_INLINE.strip("\n") + "\n" + textwrap.dedent(planted[grade_id]).strip("\n"))
        submissions["publishes_inline"] = notebooks
        notebooks = copy.deepcopy(sources)  # the first answer right and hooking every later cell, the others wrong
        first = answer_cell(notebooks, answers[0], where)
        first.source = first.source.rstrip("\n") + PUBLISH_FROM_HOOKS
        for grade_id in answers[1:]:
            cell = answer_cell(notebooks, grade_id, where)
            cell.source = mutate(cell.source, planted[grade_id])
        submissions["publishes_from_hooks"] = notebooks

    notebooks = copy.deepcopy(sources)
    for nb in notebooks.values():
        for cell in nb.cells:
            if is_answer(cell):
                cell.source = prepend_to_regions(cell.source, WARNS)
    submissions["warns"] = notebooks

    parts = [part for nb in sources.values() for part in parts_of(nb) if part.answers and part.tests]
    if parts:
        target = min(parts, key=lambda part: len(part.tests))  # the fewest cells to time out: the cheapest case
        notebooks = copy.deepcopy(sources)
        cell = answer_cell(notebooks, target.answers[0], where)
        cell.source = prepend_to_regions(cell.source, RUNAWAY)
        submissions["runaway"], facts["runaway_answer"] = notebooks, target.answers[0]

    # delete one test cell; prefer one right after a locked cell that is neither an answer nor a test (a
    # heading or a set-up cell): nbgrader 0.9.6's own restoring fails there
    notebooks = copy.deepcopy(sources)
    candidates = [(name, index) for name, nb in notebooks.items() for index, cell in enumerate(nb.cells)
                  if is_autograded_test(cell)]
    if candidates:
        def after_plain_locked(item):
            name, index = item
            previous = [c for c in notebooks[name].cells[:index] if nbgrader_meta(c).get("grade_id")]
            return bool(previous) and not (is_answer(previous[-1]) or nbgrader_meta(previous[-1]).get("grade"))
        name, index = next((c for c in candidates if after_plain_locked(c)), candidates[-1])
        facts["deleted_test"] = nbgrader_meta(notebooks[name].cells[index])["grade_id"]
        del notebooks[name].cells[index]
        submissions["deleted_test"] = notebooks

    # what the autograder's static reading will flag (a planted mistake may tamper too: then it loses everything)
    facts["flagged"] = sorted(student for student, notebooks in submissions.items()
                              if any(find_tampering(*student_cells(nb)) for nb in notebooks.values()))
    return submissions, changed, facts


# ------------------------------------------------------------------------------- running nbgrader

def course_config() -> tuple[int, str]:
    """The per-cell timeout and the course id of ``nbgrader_config.py``."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(REPO)).load_config()
    return int(config.Execute.timeout), str(config.CourseDirectory.course_id)


def nbgrader(course: Path, *args: str) -> tuple[str, float]:
    env = dict(os.environ)
    env.pop("NBGRADER_EXECUTION", None)  # nbgrader sets it itself while autograding
    # nbgrader calls the `alembic` executable when it creates a gradebook: it lives next to this python
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("PEFTLAB_QUICK", "1")
    env.setdefault("MPLBACKEND", "Agg")
    # one kernel runs at a time; on a shared CPU one torch thread is faster and steadier than the default
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    # a cell cut by the per-cell timeout is logged as an error by nbclient: expected (the runaway case)
    errors = [line for line in log.splitlines() if ("| ERROR]" in line or "| CRITICAL]" in line)
              and not any(expected in line for expected in TIMEOUT_LOG_LINES)]
    assert proc.returncode == 0 and not errors, f"nbgrader {' '.join(args)} failed:\n{log[-6000:]}"
    return log, seconds


def cell_seconds(nb) -> dict[str, float]:
    """Execution time of each code cell of an executed notebook (nbclient records the timestamps)."""
    out = {}
    for index, cell in enumerate(nb.cells):
        timing = cell.metadata.get("execution", {})
        if cell.cell_type == "code" and "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            start, end = (datetime.fromisoformat(timing[key].replace("Z", "+00:00"))
                          for key in ("iopub.execute_input", "shell.execute_reply"))
            out[nbgrader_meta(cell).get("grade_id") or f"cell {index}"] = (end - start).total_seconds()
    return out


@dataclass
class GradedCourse:
    assignment: str
    root: Path
    timeout: int  # the course's per-cell timeout (nbgrader_config.py)
    run_timeout: int  # the per-cell timeout the harness graded with
    sources: dict[str, nbformat.NotebookNode]
    changed: dict[str, str]  # student -> the answer grade_id its mistake or delegation changes
    facts: dict[str, object]  # the special cases: patched_answer, runaway_answer, deleted_test
    scores: dict[str, dict[str, tuple[float | None, float]]]  # student -> grade_id -> (score, max)
    needs_manual: dict[str, list[str]]  # student -> grade_ids nbgrader could not score
    seconds: dict[str, dict[str, dict[str, float]]]  # student -> notebook -> cell -> seconds
    generate_seconds: float
    autograde_seconds: float

    def autograded(self, student: str) -> dict[str, nbformat.NotebookNode]:
        folder = self.root / "autograded" / student / self.assignment
        return {name: nbformat.read(folder / f"{name}.ipynb", as_version=4) for name in self.sources}


_GRADED: dict[str, GradedCourse] = {}  # per process: a module fixture can be set up again under xdist


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def graded(request, tmp_path_factory) -> GradedCourse:
    """Generate and autograde one assignment in a temporary course, once; every check below reads this.

    pytest-xdist may tear a module fixture down between two tests of the same assignment (a worker
    does not always know its next test), so the graded course is kept for the whole session (the
    suite's scheduler keeps each assignment's tests on one worker: ``xdist_group`` in ``tests/conftest.py``).
    """
    if request.param not in _GRADED:
        _GRADED[request.param] = grade_course(request.param, tmp_path_factory)
    return _GRADED[request.param]


def grade_course(assignment: str, tmp_path_factory) -> GradedCourse:
    from nbgrader.api import Gradebook

    timeout, course_id = course_config()
    run_timeout = min(timeout, int(_mutation_file(assignment).get("HARNESS_TIMEOUT", HARNESS_TIMEOUT)))
    root = tmp_path_factory.mktemp(f"course_{assignment}")
    shutil.copy(REPO / "nbgrader_config.py", root)
    shutil.copytree(REPO / "solutions" / assignment, root / "solutions" / assignment,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    _, generate_seconds = nbgrader(root, "generate_assignment", assignment, "--force")

    sources = source_notebooks(assignment)
    submissions, changed, facts = build_submissions(assignment, sources, root / "exercises" / assignment)
    for student, notebooks in submissions.items():
        folder = root / "submitted" / student / assignment
        folder.mkdir(parents=True)
        for name, nb in notebooks.items():
            nbformat.write(nb, folder / f"{name}.ipynb")

    _, autograde_seconds = nbgrader(root, "autograde", assignment, f"--Execute.timeout={run_timeout}")

    scores, needs_manual, seconds = {}, {}, {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", course_id) as gradebook:
        for student in submissions:
            submission = gradebook.find_submission(assignment, student)
            scores[student] = {grade.name: (None if grade.score is None else float(grade.score), float(grade.max_score))
                               for notebook in submission.notebooks for grade in notebook.grades}
            needs_manual[student] = sorted(grade.name for notebook in submission.notebooks for grade in notebook.grades
                                           if grade.needs_manual_grade)
    for student in submissions:
        folder = root / "autograded" / student / assignment
        seconds[student] = {name: cell_seconds(nbformat.read(folder / f"{name}.ipynb", as_version=4)) for name in sources}
    course = GradedCourse(assignment, root, timeout, run_timeout, sources, changed, facts, scores, needs_manual,
                          seconds, generate_seconds, autograde_seconds)
    totals = {student: round(sum(sum(cells.values()) for cells in notebooks.values()), 1)
              for student, notebooks in seconds.items()}
    print(f"\n[{assignment}] generate_assignment {generate_seconds:.1f} s; autograde of {len(submissions)} "
          f"submissions {autograde_seconds:.1f} s; seconds of cell execution per submission: {totals}")
    return course


def autograded_tests(course: GradedCourse) -> dict[str, float]:
    """Test grade_id -> points, from the source notebooks."""
    return {gid: pts for nb in course.sources.values() for part in parts_of(nb) for gid, pts in part.tests.items()}


def hand_graded(sources: dict) -> dict[str, float]:
    return {gid: pts for nb in sources.values() for part in parts_of(nb) for gid, pts in part.hand_graded.items()}


def all_parts(course: GradedCourse) -> list[Part]:
    return [part for nb in course.sources.values() for part in parts_of(nb)]


def part_of(course: GradedCourse, answer: str) -> Part:
    return next(p for p in all_parts(course) if answer in p.answers)


def score_table(course: GradedCourse, student: str) -> str:
    return "\n".join(f"  {gid}: {score} / {maximum:g}" for gid, (score, maximum) in course.scores[student].items()
                     if gid in autograded_tests(course))


def loses_exactly(course: GradedCourse, student: str, part: Part) -> list[str]:
    """What is wrong with ``student``'s scores if it must lose every point of ``part`` and no other."""
    problems = []
    tests = autograded_tests(course)
    for gid, (score, maximum) in course.scores[student].items():
        if gid in tests:
            expected = 0.0 if gid in part.tests else maximum
            if score != expected:
                problems.append(f"{student} ({part.heading}): {gid} scored {score}, expected {expected:g}")
    return problems


def error_names(cell) -> list[str]:
    return [output.get("ename", "") for output in cell.get("outputs", []) if output.get("output_type") == "error"]


# ------------------------------------------------------------------------------- static checks

@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_headings_carry_the_points_of_their_tests(assignment):
    for name, nb in source_notebooks(assignment).items():
        total = 0.0
        for part in parts_of(nb):
            points = sum(part.tests.values()) + sum(part.hand_graded.values())
            total += points
            if part.tests or part.answers or part.hand_graded:
                assert part.declared_points is not None, \
                    f"{name}: '{part.heading}' holds graded cells but its heading gives no '(N points)'"
                assert part.declared_points == points, \
                    f"{name}: '{part.heading}' says {part.declared_points:g} points, its graded cells give {points:g}"
        title = next((line for cell in nb.cells if cell.cell_type == "markdown"
                      for line in cell.source.splitlines() if line.startswith("# ")), None)
        match = POINTS_IN_HEADING.search(title or "")
        assert match, f"{name}: the title '{title}' gives no '(N points)' total"
        assert float(match.group(1)) == total, f"{name}: the title says {match.group(1)} points, the graded cells give {total:g}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_answer_cell_has_a_planted_mistake(assignment):
    answers = set(answer_ids(assignment))
    planted = set(mutations(assignment))
    where = f"tests/nbgrader_mutations/{assignment}.py"
    assert answers <= planted, f"add a planted mistake to MUTATIONS in {where} for the answer cells {sorted(answers - planted)}"
    assert planted <= answers, f"MUTATIONS in {where} names cells that are not answer cells: {sorted(planted - answers)}"
    more = more_mutations(assignment)
    assert len(more) >= MIN_MORE_MUTATIONS, \
        f"{where}: MORE_MUTATIONS holds {len(more)} planted mistakes; write at least {MIN_MORE_MUTATIONS} further ones"
    strangers = {name: gid for name, (gid, _) in more.items() if gid not in answers}
    assert not strangers, f"MORE_MUTATIONS in {where} names cells that are not answer cells: {strangers}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_answer_cell_has_a_delegation(assignment):
    where = f"tests/nbgrader_mutations/{assignment}.py"
    found = delegations(assignment)
    assert found is not None, (f"{where} has no DELEGATIONS: for every answer cell, a body that calls peftlab's "
                               "implementation (None, with a comment, where peftlab has none)")
    answers = set(answer_ids(assignment))
    assert answers <= set(found), f"DELEGATIONS in {where} lacks the answer cells {sorted(answers - set(found))}"
    assert set(found) <= answers, f"DELEGATIONS in {where} names cells that are not answer cells: {sorted(set(found) - answers)}"


# ------------------------------------------------------------------------------- graded checks

def test_release_matches_the_committed_one(graded):
    generated = graded.root / "exercises" / graded.assignment
    committed = REPO / "exercises" / graded.assignment
    regenerate = f"regenerate it: nbgrader generate_assignment {graded.assignment} --force"
    assert committed.is_dir(), f"exercises/{graded.assignment}/ is missing; {regenerate}"
    files = lambda folder: sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())  # noqa: E731
    assert files(committed) == files(generated), \
        f"exercises/{graded.assignment}/ holds other files than nbgrader makes; {regenerate}"
    for relative in files(generated):
        if not relative.endswith(".ipynb"):
            assert (committed / relative).read_bytes() == (generated / relative).read_bytes(), f"{relative} differs; {regenerate}"
            continue
        ours = nbformat.read(committed / relative, as_version=4)
        theirs = nbformat.read(generated / relative, as_version=4)
        assert len(ours.cells) == len(theirs.cells), \
            f"{relative}: {len(ours.cells)} cells, nbgrader makes {len(theirs.cells)}; {regenerate}"
        for index, (mine, made) in enumerate(zip(ours.cells, theirs.cells)):
            label = nbgrader_meta(made).get("grade_id", made.cell_type)
            where = f"exercises/{graded.assignment}/{relative}, cell {index} ({label})"
            assert mine.cell_type == made.cell_type, f"{where}: cell type differs; {regenerate}"
            assert mine.source == made.source, f"{where}: source differs from what nbgrader makes; {regenerate}"
            assert nbgrader_meta(mine) == nbgrader_meta(made), f"{where}: metadata.nbgrader differs; {regenerate}"
            if mine.cell_type == "code":
                assert not mine.outputs and mine.execution_count is None, \
                    f"{where}: the committed release has outputs; strip them"


def test_solution_scores_full_marks(graded):
    points = autograded_tests(graded)
    scores = graded.scores["solution"]
    assert set(scores) >= set(points), f"the gradebook lacks test cells {sorted(set(points) - set(scores))}"
    for gid, maximum in points.items():
        assert scores[gid][1] == maximum, f"{gid}: gradebook max {scores[gid][1]:g}, the notebook says {maximum:g}"
    lost = {gid: (score, maximum) for gid, (score, maximum) in scores.items() if gid in points and score != maximum}
    assert not lost, f"the solution of {graded.assignment} loses points:\n{score_table(graded, 'solution')}"
    written = sorted(gid for gid in hand_graded(graded.sources) if nbgrader_meta(next(
        c for nb in graded.sources.values() for c in nb.cells if nbgrader_meta(c).get("grade_id") == gid)).get("solution"))
    assert graded.needs_manual["solution"] == written, \
        f"nbgrader left {graded.needs_manual['solution']} to a grader; only the written answers {written} should be"
    flagged = [nb.metadata.get("peftlab_grading", {}).get("tampering") for nb in graded.autograded("solution").values()]
    assert not any(flagged), f"the solution was flagged as tampering with the checks: {flagged}"


def test_blank_release_scores_zero(graded):
    points = autograded_tests(graded)
    scored = {gid: score for gid, (score, _) in graded.scores["blank"].items() if gid in points and score != 0}
    assert not scored, f"the untouched release of {graded.assignment} scores points:\n{score_table(graded, 'blank')}"


def test_planted_mistake_loses_its_part_and_only_it(graded):
    students = [s for s in graded.changed if s.startswith(("mistake_", "more_"))]
    assert any(s.startswith("mistake_") for s in students), \
        f"no planted mistakes for {graded.assignment}: add tests/nbgrader_mutations/{graded.assignment}.py"
    problems = []
    for student in students:
        if student in graded.facts["flagged"]:  # the mistake tampers with the checks: every test cell scores 0
            problems += [f"{student} (flagged): {gid} scored {score}" for gid, (score, _) in graded.scores[student].items()
                         if gid in autograded_tests(graded) and score != 0]
        else:
            problems += loses_exactly(graded, student, part_of(graded, graded.changed[student]))
    assert not problems, "\n".join(problems)


def test_delegating_to_peftlab_loses_the_part(graded):
    found = delegations(graded.assignment)
    assert found is not None, f"tests/nbgrader_mutations/{graded.assignment}.py has no DELEGATIONS"
    problems = []
    for student in (s for s in graded.changed if s.startswith("delegates_")):
        problems += loses_exactly(graded, student, part_of(graded, graded.changed[student]))
    assert not problems, "answers that call peftlab's implementation keep points (switch it off in every test " \
                         "cell of the part, with grading.switched_off):\n" + "\n".join(problems)


def test_monkeypatching_the_checks_is_flagged(graded):
    assert "monkeypatch" in graded.scores, "no monkeypatching submission: the assignment needs MUTATIONS for every answer"
    scored = {gid: score for gid, (score, _) in graded.scores["monkeypatch"].items()
              if gid in autograded_tests(graded) and score != 0}
    assert not scored, f"a submission that replaces torch.testing.assert_close and math.isclose keeps points: {scored}"
    for name, nb in graded.autograded("monkeypatch").items():
        assert nb.metadata.get("peftlab_grading", {}).get("tampering"), f"{name}: FlagTampering found nothing"
        for cell in nb.cells:
            if is_autograded_test(cell):
                assert FLAG in error_names(cell), f"{name}: {nbgrader_meta(cell)['grade_id']} does not say why it scored 0"


def test_only_tampering_is_flagged(graded):
    """The autograder flags exactly the submissions whose own cells tamper with the checks (read statically here)."""
    assert "monkeypatch" in graded.facts["flagged"] and "solution" not in graded.facts["flagged"]
    flagged = sorted(student for student in graded.scores
                     if any(nb.metadata.get("peftlab_grading", {}).get("tampering")
                            for nb in graded.autograded(student).values()))
    assert flagged == graded.facts["flagged"], f"flagged while grading: {flagged}; expected {graded.facts['flagged']}"


def test_checks_compare_through_references_an_answer_cannot_replace(graded):
    assert "monkeypatch_unseen" in graded.scores, "no monkeypatching submission: the assignment needs MUTATIONS for every answer"
    patched = part_of(graded, graded.facts["patched_answer"])
    problems = []
    for part in all_parts(graded):
        if part is patched:
            continue
        kept = {gid: graded.scores["monkeypatch_unseen"][gid][0] for gid in part.tests
                if graded.scores["monkeypatch_unseen"][gid][0] != 0}
        if kept:
            problems.append(f"{part.heading}: with assert_close, isclose, allclose and equal replaced and a wrong "
                            f"answer, {kept} still score; compare through REF = grading.start() or plain tensor "
                            "operations in the hidden tests")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("student", ["publishes_inline", "publishes_from_hooks"])
def test_a_published_result_does_not_decide_the_grade(graded, student):
    """A wrong answer that shows a result in the test cell (displayhook from inside the function, or from a
    pre/post_run_cell hook) loses its points: only passing scores (ScoreByPassing in nbgrader_config.py)."""
    assert student in graded.scores, "no publishing submission: the assignment needs MUTATIONS for every answer"
    right = part_of(graded, graded.facts["patched_answer"]) if student == "publishes_from_hooks" else None
    published = [nbgrader_meta(cell)["grade_id"] for nb in graded.autograded(student).values() for cell in nb.cells
                 if is_autograded_test(cell) and any(o.get("output_type") == "display_data"
                                                     and "'ok'" in o.get("data", {}).get("text/plain", "")
                                                     for o in cell.get("outputs", []))]
    assert published, f"{student}: no test cell shows the published result; the submission did not do what it should"
    problems = []
    for part in all_parts(graded):
        for gid in part.tests:
            score, maximum = graded.scores[student][gid]
            expected = maximum if part == right else 0.0
            if score != expected:
                problems.append(f"{part.heading}: {gid} scored {score}, expected {expected:g}")
    assert not problems, f"{student}: a shown result decides the grade:\n" + "\n".join(problems)


def test_a_warning_costs_no_points(graded):
    lost = {gid: graded.scores["warns"][gid] for gid in autograded_tests(graded)
            if graded.scores["warns"][gid] != graded.scores["solution"][gid]}
    assert not lost, (f"a correct answer that warns (warnings.warn, logging) loses points {lost}: route warnings and "
                      "log records to stdout in the locked set-up cell (REF = grading.start())")


def test_a_runaway_answer_is_cut_and_the_rest_grades(graded):
    assert "runaway" in graded.scores, "no part has both an answer and a test cell"
    part = part_of(graded, graded.facts["runaway_answer"])
    problems = loses_exactly(graded, "runaway", part)
    cells = {nbgrader_meta(c).get("grade_id"): c for nb in graded.autograded("runaway").values() for c in nb.cells}
    cut = [gid for gid in part.tests if any(e in ("CellTimeoutError", "KeyboardInterrupt") for e in error_names(cells[gid]))]
    assert cut, f"no test cell of '{part.heading}' records a timeout: {[error_names(cells[g]) for g in part.tests]}"
    for name, nb in graded.autograded("runaway").items():
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and "execution" in code[-1].metadata, f"{name}: the notebook's last cell did not run after the timeout"
    assert not problems, "\n".join(problems)


def test_a_deleted_test_cell_is_restored(graded):
    deleted = graded.facts["deleted_test"]
    restored = [c for nb in graded.autograded("deleted_test").values() for c in nb.cells
                if nbgrader_meta(c).get("grade_id") == deleted]
    assert len(restored) == 1, f"the deleted test cell {deleted} was not put back ({len(restored)} found)"
    assert graded.scores["deleted_test"][deleted] == graded.scores["solution"][deleted], \
        f"the restored {deleted} scored {graded.scores['deleted_test'][deleted]}, " \
        f"the solution {graded.scores['solution'][deleted]}"
    differ = {gid: graded.scores["deleted_test"][gid] for gid in autograded_tests(graded)
              if graded.scores["deleted_test"][gid] != graded.scores["solution"][gid]}
    assert not differ, f"with {deleted} deleted and restored, the solution scores differently: {differ}"
    assert graded.needs_manual["deleted_test"] == graded.needs_manual["solution"], \
        f"the deleted cell became a manual-grading item: {graded.needs_manual['deleted_test']}"


def test_grading_is_deterministic_and_within_the_timeout(graded):
    assert graded.scores["solution"] == graded.scores["solution_again"], \
        f"the same notebook scored differently:\n{score_table(graded, 'solution')}\nvs\n{score_table(graded, 'solution_again')}"
    slow = [f"{student}/{name}: {gid} took {seconds:.1f} s"
            for student, notebooks in graded.seconds.items() if student != "runaway"
            for name, cells in notebooks.items() for gid, seconds in cells.items() if seconds >= graded.run_timeout]
    assert not slow, f"cells ran into the harness's {graded.run_timeout} s per-cell timeout:\n" + "\n".join(slow)
    for name, cells in graded.seconds["solution"].items():
        assert cells, f"no execution timings recorded in autograded/solution/{graded.assignment}/{name}.ipynb"
        # the whole solution notebook grades within one per-cell timeout of the course: grading stays fast
        assert sum(cells.values()) < graded.timeout, f"{name}: grading the solution took {sum(cells.values()):.0f} s"
