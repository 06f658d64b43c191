"""The nbgrader pipeline, run for real on every assignment in ``solutions/``.

For each assignment folder ``solutions/<a>/`` (found by a glob, so a new assignment is picked up with
no change here), in a temporary copy of the course (``nbgrader_config.py`` and ``solutions/<a>/``):

- ``nbgrader generate_assignment`` reproduces the committed release ``exercises/<a>/`` exactly:
  the same files, and per notebook cell the same type, source and ``metadata.nbgrader`` (which holds
  nbgrader's checksums, so nothing is ignored); the committed release has no outputs;
- one ``nbgrader autograde`` run over several students: the solution (``solution``) scores full
  marks; the untouched release (``blank``) scores zero; each planted mistake (``mistake_<id>``, one
  per answer cell, from ``tests/nbgrader_mutations/<a>.py``) loses the points of its part and only those; the solution
  graded a second time (``solution_again``) scores the same, test cell by test cell; every cell ran
  within the per-cell timeout of ``nbgrader_config.py``;
- statically: each ``## Part`` heading's "(N points)" equals the points of the test cells under it.

A *part* is a ``## `` markdown heading and the cells up to the next one. Scores are read from the
gradebook with ``nbgrader.api.Gradebook``, never from exit codes (nbgrader exits 0 when tests fail).

Adding an assignment: write ``solutions/<a>/<a>.ipynb``, run ``nbgrader generate_assignment <a> --force``
and commit ``exercises/<a>/``, then write ``tests/nbgrader_mutations/<a>.py`` with a dict ``MUTATIONS``:
for every answer cell (its grade_id), a wrong but runnable body that replaces the lines from
``### BEGIN SOLUTION`` to ``### END SOLUTION`` (written unindented; it is indented like the marker).
Make it a mistake a student would make, and one that fails every test cell of its part
(``nbgrader_mutations/a01.py`` is the example).

Run: ``.venv/bin/python -m pytest tests/test_nbgrader.py -m nbgrader`` (``-k a01`` for one assignment).
CPU only. Cost: one kernel per submission (3 + one per answer cell); a01 takes about a minute of CPU
time, 4-5 minutes of wall time on a busy 2-core machine. ``-s`` prints the timings.
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

pytestmark = pytest.mark.nbgrader

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").glob("*/") if p.is_dir() and list(p.glob("*.ipynb")))

MUTATIONS_DIR = Path(__file__).resolve().parent / "nbgrader_mutations"


def mutations(assignment: str) -> dict[str, str]:
    """Planted mistakes of ``assignment``: answer cell grade_id -> body replacing its solution region."""
    path = MUTATIONS_DIR / f"{assignment}.py"
    return dict(runpy.run_path(str(path))["MUTATIONS"]) if path.exists() else {}


POINTS_IN_HEADING = re.compile(r"\((\d+(?:\.\d+)?) points?\)")


# ------------------------------------------------------------------------------- notebook structure

def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def is_autograded_test(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and cell.cell_type == "code"


def is_answer(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("solution")) and not meta.get("grade") and cell.cell_type == "code"


@dataclass
class Part:
    heading: str  # the "## " line, or "(before the first heading)"
    declared_points: float | None  # the "(N points)" of the heading
    tests: dict[str, float] = field(default_factory=dict)  # test grade_id -> points
    answers: list[str] = field(default_factory=list)  # answer grade_ids


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
    return parts


def source_notebooks(assignment: str) -> dict[str, nbformat.NotebookNode]:
    return {p.stem: nbformat.read(p, as_version=4) for p in sorted((REPO / "solutions" / assignment).glob("*.ipynb"))}


def mutate(source: str, body: str) -> str:
    """Replace the BEGIN/END SOLUTION region of ``source`` with ``body``, indented like the marker."""
    lines = source.splitlines()
    begin = next(i for i, line in enumerate(lines) if "### BEGIN SOLUTION" in line)
    end = next(i for i, line in enumerate(lines) if "### END SOLUTION" in line)
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    new_body = textwrap.indent(textwrap.dedent(body).strip("\n"), indent).splitlines()
    return "\n".join(lines[:begin] + new_body + lines[end + 1:])


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
    errors = [line for line in log.splitlines() if "| ERROR]" in line or "| CRITICAL]" in line]
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
    timeout: int
    sources: dict[str, nbformat.NotebookNode]
    mutated_cell: dict[str, str]  # student -> the answer grade_id planted with a mistake
    scores: dict[str, dict[str, tuple[float, float]]]  # student -> test grade_id -> (score, max)
    needs_manual: dict[str, list[str]]  # student -> grade_ids nbgrader could not score
    seconds: dict[str, dict[str, dict[str, float]]]  # student -> notebook -> cell -> seconds
    generate_seconds: float
    autograde_seconds: float


_GRADED: dict[str, GradedCourse] = {}  # per process: a module fixture can be set up again under xdist


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def graded(request, tmp_path_factory) -> GradedCourse:
    """Generate and autograde one assignment in a temporary course, once; every check below reads this.

    pytest-xdist may tear a module fixture down between two tests of the same assignment (a worker
    does not always know its next test), so the graded course is kept for the whole session (the
    suite's ``--dist loadfile`` keeps this file on one worker).
    """
    if request.param not in _GRADED:
        _GRADED[request.param] = grade_course(request.param, tmp_path_factory)
    return _GRADED[request.param]


def grade_course(assignment: str, tmp_path_factory) -> GradedCourse:
    from nbgrader.api import Gradebook

    timeout, course_id = course_config()
    root = tmp_path_factory.mktemp(f"course_{assignment}")
    shutil.copy(REPO / "nbgrader_config.py", root)
    shutil.copytree(REPO / "solutions" / assignment, root / "solutions" / assignment,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    _, generate_seconds = nbgrader(root, "generate_assignment", assignment, "--force")

    sources = source_notebooks(assignment)
    release = root / "exercises" / assignment
    submissions: dict[str, dict[str, nbformat.NotebookNode]] = {
        "solution": sources,
        "solution_again": sources,
        "blank": {name: nbformat.read(release / f"{name}.ipynb", as_version=4) for name in sources},
    }
    mutated_cell = {}
    for grade_id, body in mutations(assignment).items():
        student = f"mistake_{grade_id}"
        notebooks = copy.deepcopy(sources)
        cells = [c for nb in notebooks.values() for c in nb.cells if is_answer(c) and nbgrader_meta(c)["grade_id"] == grade_id]
        assert len(cells) == 1, f"nbgrader_mutations/{assignment}.py names {grade_id!r}: expected one answer cell with that grade_id, found {len(cells)}"
        cells[0].source = mutate(cells[0].source, body)
        submissions[student], mutated_cell[student] = notebooks, grade_id
    for student, notebooks in submissions.items():
        folder = root / "submitted" / student / assignment
        folder.mkdir(parents=True)
        for name, nb in notebooks.items():
            nbformat.write(nb, folder / f"{name}.ipynb")

    _, autograde_seconds = nbgrader(root, "autograde", assignment)

    scores, needs_manual, seconds = {}, {}, {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", course_id) as gradebook:
        for student in submissions:
            submission = gradebook.find_submission(assignment, student)
            scores[student] = {grade.name: (float(grade.score), float(grade.max_score))
                               for notebook in submission.notebooks for grade in notebook.grades}
            needs_manual[student] = [grade.name for notebook in submission.notebooks for grade in notebook.grades
                                     if grade.needs_manual_grade]
    for student in submissions:
        folder = root / "autograded" / student / assignment
        seconds[student] = {name: cell_seconds(nbformat.read(folder / f"{name}.ipynb", as_version=4)) for name in sources}
    course = GradedCourse(assignment, root, timeout, sources, mutated_cell, scores, needs_manual, seconds,
                          generate_seconds, autograde_seconds)
    totals = {student: round(sum(sum(cells.values()) for cells in notebooks.values()), 1)
              for student, notebooks in seconds.items()}
    print(f"\n[{assignment}] generate_assignment {generate_seconds:.1f} s; autograde of {len(submissions)} "
          f"submissions {autograde_seconds:.1f} s; seconds of cell execution per submission: {totals}")
    return course


def autograded_tests(course: GradedCourse) -> dict[str, float]:
    """Test grade_id -> points, from the source notebooks."""
    return {gid: pts for nb in course.sources.values() for part in parts_of(nb) for gid, pts in part.tests.items()}


def score_table(course: GradedCourse, student: str) -> str:
    return "\n".join(f"  {gid}: {score:g} / {maximum:g}" for gid, (score, maximum) in course.scores[student].items())


# ------------------------------------------------------------------------------- the checks

@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_headings_carry_the_points_of_their_tests(assignment):
    for name, nb in source_notebooks(assignment).items():
        for part in parts_of(nb):
            if part.tests or part.answers:
                assert part.declared_points is not None, \
                    f"{name}: '{part.heading}' holds graded cells but its heading gives no '(N points)'"
                assert part.declared_points == sum(part.tests.values()), \
                    f"{name}: '{part.heading}' says {part.declared_points:g} points, its test cells give {sum(part.tests.values()):g}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_answer_cell_has_a_planted_mistake(assignment):
    answers = {gid for nb in source_notebooks(assignment).values() for part in parts_of(nb) for gid in part.answers}
    planted = set(mutations(assignment))
    where = f"tests/nbgrader_mutations/{assignment}.py"
    assert answers <= planted, f"add a planted mistake to MUTATIONS in {where} for the answer cells {sorted(answers - planted)}"
    assert planted <= answers, f"MUTATIONS in {where} names cells that are not answer cells: {sorted(planted - answers)}"


def test_release_matches_the_committed_one(graded):
    generated = graded.root / "exercises" / graded.assignment
    committed = REPO / "exercises" / graded.assignment
    regenerate = f"regenerate it: nbgrader generate_assignment {graded.assignment} --force"
    assert committed.is_dir(), f"exercises/{graded.assignment}/ is missing; {regenerate}"
    files = lambda folder: sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())  # noqa: E731
    assert files(committed) == files(generated), f"exercises/{graded.assignment}/ holds other files than nbgrader makes; {regenerate}"
    for relative in files(generated):
        if not relative.endswith(".ipynb"):
            assert (committed / relative).read_bytes() == (generated / relative).read_bytes(), f"{relative} differs; {regenerate}"
            continue
        ours = nbformat.read(committed / relative, as_version=4)
        theirs = nbformat.read(generated / relative, as_version=4)
        assert len(ours.cells) == len(theirs.cells), f"{relative}: {len(ours.cells)} cells, nbgrader makes {len(theirs.cells)}; {regenerate}"
        for index, (mine, made) in enumerate(zip(ours.cells, theirs.cells)):
            where = f"exercises/{graded.assignment}/{relative}, cell {index} ({nbgrader_meta(made).get('grade_id', made.cell_type)})"
            assert mine.cell_type == made.cell_type, f"{where}: cell type differs; {regenerate}"
            assert mine.source == made.source, f"{where}: source differs from what nbgrader makes; {regenerate}"
            assert nbgrader_meta(mine) == nbgrader_meta(made), f"{where}: metadata.nbgrader differs; {regenerate}"
            if mine.cell_type == "code":
                assert not mine.outputs and mine.execution_count is None, f"{where}: the committed release has outputs; strip them"


def test_solution_scores_full_marks(graded):
    points = autograded_tests(graded)
    scores = graded.scores["solution"]
    assert set(scores) >= set(points), f"the gradebook lacks test cells {sorted(set(points) - set(scores))}"
    for gid, maximum in points.items():
        assert scores[gid][1] == maximum, f"{gid}: gradebook max {scores[gid][1]:g}, the notebook says {maximum:g}"
    lost = {gid: (score, maximum) for gid, (score, maximum) in scores.items() if gid in points and score != maximum}
    assert not lost, f"the solution of {graded.assignment} loses points:\n{score_table(graded, 'solution')}"
    assert not graded.needs_manual["solution"], f"nbgrader could not score {graded.needs_manual['solution']}"


def test_blank_release_scores_zero(graded):
    points = autograded_tests(graded)
    scored = {gid: score for gid, (score, _) in graded.scores["blank"].items() if gid in points and score != 0}
    assert not scored, f"the untouched release of {graded.assignment} scores points:\n{score_table(graded, 'blank')}"


def test_planted_mistake_loses_its_part_and_only_it(graded):
    parts = [part for nb in graded.sources.values() for part in parts_of(nb)]
    assert graded.mutated_cell, f"no planted mistakes for {graded.assignment}: add tests/nbgrader_mutations/{graded.assignment}.py"
    problems = []
    for student, answer in graded.mutated_cell.items():
        part = next(p for p in parts if answer in p.answers)
        for gid, (score, maximum) in graded.scores[student].items():
            if gid not in autograded_tests(graded):
                continue
            expected = 0.0 if gid in part.tests else maximum
            if score != expected:
                problems.append(f"mistake in {answer} ({part.heading}): {gid} scored {score:g}, expected {expected:g}")
        lost = sum(maximum - score for gid, (score, maximum) in graded.scores[student].items()
                   if gid in autograded_tests(graded))
        if lost != sum(part.tests.values()):
            problems.append(f"mistake in {answer}: lost {lost:g} points, its part is worth {sum(part.tests.values()):g}")
    assert not problems, "\n".join(problems)


def test_grading_is_deterministic_and_within_the_timeout(graded):
    assert graded.scores["solution"] == graded.scores["solution_again"], \
        f"the same notebook scored differently:\n{score_table(graded, 'solution')}\nvs\n{score_table(graded, 'solution_again')}"
    slow = [f"{student}/{name}: {gid} took {seconds:.1f} s"
            for student, notebooks in graded.seconds.items() for name, cells in notebooks.items()
            for gid, seconds in cells.items() if seconds >= graded.timeout]
    assert not slow, f"cells ran into the {graded.timeout} s per-cell timeout:\n" + "\n".join(slow)
    for name, cells in graded.seconds["solution"].items():
        assert cells, f"no execution timings recorded in autograded/solution/{graded.assignment}/{name}.ipynb"
        # the whole solution notebook grades within one per-cell timeout: grading stays fast
        assert sum(cells.values()) < graded.timeout, f"{name}: grading the solution took {sum(cells.values()):.0f} s"
