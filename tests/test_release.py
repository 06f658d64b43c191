"""The student release, ``python -m peftlab release DIR``: it holds the course students need, no
instructor file, and no line of a solution or a hidden test; the search that proves it catches one
planted line; the instructor-only parts of the README and of the pages in ``docs/`` stay behind; the
guide's instructor section (``docs/guide.md``) describes the two-repository workflow.

Run: ``.venv/bin/python -m pytest tests/test_release.py -n 0``. CPU only, about half a minute (the
release is written twice: once for every check, once to show a re-release keeps the folder's .git).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from peftlab import release as rel
from peftlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def tracked(*paths: str) -> list[str]:
    """Files git tracks or does not ignore under ``paths``."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *paths], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return [name for name in out.stdout.splitlines() if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def secrets() -> set[str]:
    return rel.secret_lines(ROOT)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("release") / "peftlab-students"
    assert main(["release", str(dest)]) == 0
    return dest


def files_of(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts}


def test_release_holds_the_course(released):
    shipped = files_of(released)
    needed = tracked("lectures", "exercises", "peftlab") + ["pyproject.toml", "requirements.txt", "scripts/setup.sh",
                                                            "README.md", rel.MANIFEST]
    assert needed and not set(needed) - shipped, f"missing from the release: {sorted(set(needed) - shipped)[:10]}"
    assert any(name.startswith("exercises/") for name in shipped) and any(name.startswith("lectures/") for name in shipped)
    manifest = json.loads((released / rel.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(shipped)


def test_release_holds_no_instructor_file(released):
    shipped = files_of(released)
    for path in ("solutions", "tests", ".ci", "nbgrader_config.py", "docs/grading_guide.md"):
        assert not (released / path).exists(), f"the release holds {path}"
    assert not [name for name in shipped if "nbgrader_mutations" in name or name.startswith(("solutions/", "tests/"))]


def test_no_solution_or_hidden_test_line_in_the_release(released, secrets):
    # the search means something only if every assignment gives it lines to look for
    for notebook in sorted((ROOT / "solutions").rglob("*.ipynb")):
        own = {rel._normalize(line) for cell in nbformat.read(notebook, as_version=4).cells
               for line in rel._regions(cell.source, bool(cell.metadata.get("nbgrader", {}).get("solution")))[0]}
        assert own & secrets, f"no line of {notebook.relative_to(ROOT)}'s solutions or hidden tests is searched for"
    assert len(secrets) > 100
    leaks = rel.find_leaks(released, secrets)
    assert not leaks, "the release shows solution or hidden-test lines:\n" + "\n".join(f"{f}: {line}" for f, line in leaks[:20])


def test_a_planted_solution_line_is_caught(released, tmp_path, secrets):
    planted = tmp_path / "planted"
    shutil.copytree(released, planted)
    # one hidden-test line of a01, planted as one more line of the released a01's first test cell
    source = nbformat.read(ROOT / "solutions" / "a01" / "a01.ipynb", as_version=4)
    hidden = next(rel._normalize(line) for cell in source.cells if "### BEGIN HIDDEN TESTS" in cell.source
                  for line in rel._regions(cell.source, False)[0] if rel._normalize(line) in secrets)
    notebook_path = planted / "exercises" / "a01" / "a01.ipynb"
    nb = nbformat.read(notebook_path, as_version=4)
    test_cell = next(cell for cell in nb.cells if cell.metadata.get("nbgrader", {}).get("grade") and cell.cell_type == "code")
    test_cell.source += "\n" + hidden
    nbformat.write(nb, notebook_path)
    assert rel.find_leaks(planted, secrets) == [("exercises/a01/a01.ipynb", hidden)]
    # and a solution line, indented, in the package's source
    solution = next(rel._normalize(line) for cell in source.cells if "### BEGIN SOLUTION" in cell.source
                    for line in rel._regions(cell.source, False)[0] if rel._normalize(line) in secrets)
    with open(planted / "peftlab" / "utils.py", "a") as handle:
        handle.write(f"\n\ndef planted():\n    {solution}\n")
    assert ("peftlab/utils.py", solution) in rel.find_leaks(planted, secrets)
    # an nbgrader marker left in a notebook is caught as well
    nb.cells[-1].source += "\n### BEGIN HIDDEN TESTS"
    nbformat.write(nb, notebook_path)
    assert ("exercises/a01/a01.ipynb", "### BEGIN HIDDEN TESTS") in rel.find_leaks(planted, secrets)


def test_release_stops_when_a_line_would_leak(tmp_path, monkeypatch, capsys):
    readme_line = rel._normalize((ROOT / "README.md").read_text().splitlines()[2])  # shipped in the student README
    monkeypatch.setattr(rel, "secret_lines", lambda root, files: {readme_line})
    assert main(["release", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "README.md" in err and readme_line in err and "nothing may be published" in err


DOC_PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md") if p.name != "grading_guide.md")


def test_student_readme(released):
    readme = (released / "README.md").read_text()
    instructor = (ROOT / "README.md").read_text()
    assert readme.splitlines()[0] == instructor.splitlines()[0]
    assert "student release" in readme
    # the README and the pages of docs/ as the instructor has them, and as students get them
    instructor_all = instructor + "".join((ROOT / page).read_text() for page in DOC_PAGES)
    student_all = readme + "".join((released / page).read_text() for page in DOC_PAGES)
    assert rel.INSTRUCTOR_BEGIN not in student_all and rel.INSTRUCTOR_END not in student_all
    for text in ("## For instructors", "### Two repositories", "nbgrader_mutations", "grading_guide", "-m pytest",
                 "CONTRIBUTING.md"):
        assert text in instructor_all and text not in student_all, text
    # every relative link of the student README and pages leads to a file of the release
    links = [target for target in re.findall(r"\]\(([^)#\s]+)", readme) if "://" not in target]
    links += [str(Path(page).parent / target) for page in DOC_PAGES
              for target in re.findall(r"\]\(([^)#\s]+)", (released / page).read_text()) if "://" not in target]
    assert links and not [t for t in links if not (released / t).exists()], [t for t in links if not (released / t).exists()]
    for text in (instructor, *((ROOT / page).read_text() for page in DOC_PAGES)):
        assert text.count(rel.INSTRUCTOR_BEGIN) == text.count(rel.INSTRUCTOR_END)


def test_instructor_guide_describes_the_two_repositories():
    guide = (ROOT / "docs" / "guide.md").read_text()
    section = guide[guide.index("### Two repositories"):]
    assert "python -m peftlab release" in section and "solutions/" in section and "git" in section


def test_release_again_keeps_git_and_refuses_a_foreign_folder(released, tmp_path, capsys):
    (released / ".git").mkdir(exist_ok=True)
    (released / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (released / "stale.txt").write_text("left over from an earlier release")
    assert main(["release", str(released)]) == 0
    assert (released / ".git" / "HEAD").is_file() and not (released / "stale.txt").exists()
    foreign = tmp_path / "someone_elses"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a release")
    assert main(["release", str(foreign)]) == 2
    assert "holds no earlier release" in capsys.readouterr().err and (foreign / "notes.txt").exists()
    assert main(["release", str(ROOT)]) == 2
