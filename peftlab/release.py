"""The student release: ``python -m peftlab release DIR`` writes the repository students receive.

The course lives in two repositories. The instructor's (this one) holds everything: the package,
the lectures, ``solutions/`` (nbgrader source notebooks: answers, hidden tests, rubrics), the test
suite with its planted mistakes (``tests/nbgrader_mutations``), the grading guide and CI. Students
get a second repository that this command writes from the first:

- copied: the package (``peftlab/``), ``lectures/``, ``exercises/`` (the nbgrader release, committed
  here), ``bench/``, ``docs/`` (figures, committed runs, pages), ``pyproject.toml``, ``requirements.txt``,
  ``constraints.txt``, ``scripts/setup.sh``, ``.gitignore``: the files of the working tree that git
  tracks or does not ignore;
- generated: ``README.md`` for students (this README less its instructor-only blocks, the lines
  between ``<!-- instructor -->`` and ``<!-- /instructor -->``, and less table rows that name a
  path the release does not hold; the pages ``docs/*.md`` likewise) and ``RELEASE.json`` (the source
  commit and the file list);
- never: ``solutions/``, ``tests/``, ``.ci/``, ``nbgrader_config.py``, ``docs/grading_guide.md``.

Before it finishes, the release is scanned (``find_leaks``): every line of a solution region or a
hidden test in ``solutions/`` (``secret_lines``: lines that the lectures, the visible part of the
assignments or the shipped code also hold do not count) and every nbgrader marker is looked for in
every file written; one found stops the release with the file and the line. Re-running into the
same folder replaces a previous release and keeps its ``.git``, so the student repository's history
goes on.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from .site_leaks import _normalize

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_PATHS = ("peftlab", "lectures", "exercises", "bench", "docs", "scripts/setup.sh", "pyproject.toml",
                "requirements.txt", "constraints.txt", ".gitignore", "LICENSE")
INSTRUCTOR_ONLY = ("solutions", "tests", ".ci", "nbgrader_config.py", "docs/grading_guide.md")
INSTRUCTOR_BEGIN, INSTRUCTOR_END = "<!-- instructor -->", "<!-- /instructor -->"
MANIFEST = "RELEASE.json"


class LeakError(ValueError):
    """A solution or hidden-test line would be released."""


MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION", "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")


def _instructor_only(relative: str) -> bool:
    return any(relative == path or relative.startswith(path + "/") for path in INSTRUCTOR_ONLY)


def public_files(root: Path = ROOT) -> list[str]:
    """Paths (relative, posix) of the files the release copies: under PUBLIC_PATHS, tracked by git or new
    and not ignored (so build outputs, ``results/`` and the virtual environment stay behind)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                                 *PUBLIC_PATHS], cwd=root, check=True,
                                capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk, skipping build outputs
        listed = []
        for name in PUBLIC_PATHS:
            path = root / name
            found = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
            listed += [p.relative_to(root).as_posix() for p in found if p.is_file() and not any(
                part in ("__pycache__", ".ipynb_checkpoints") or part.endswith(".egg-info")
                for part in p.relative_to(root).parts)]
    return sorted(name for name in listed if name and (root / name).is_file() and not _instructor_only(name))


def without_instructor_blocks(text: str, shipped: set[str], name: str = "README.md") -> str:
    """``text`` (markdown) less its instructor-only blocks and the table rows naming a path not shipped."""
    kept, inside = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == INSTRUCTOR_BEGIN:
            inside = True
        elif stripped == INSTRUCTOR_END:
            inside = False
        elif not inside and not (stripped.startswith("|") and _names_instructor_path(stripped, shipped)):
            kept.append(line)
    if inside:
        raise ValueError(f"{name}: {INSTRUCTOR_BEGIN} without a closing {INSTRUCTOR_END}")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip() + "\n"


def student_readme(text: str, shipped: set[str]) -> str:
    """The README for students: instructor-only blocks removed, and table rows naming a path not shipped."""
    readme = without_instructor_blocks(text, shipped)
    title, _, rest = readme.partition("\n")
    note = ("\n\n> This is the student release of the course, written by `python -m peftlab release`: the "
            "lectures, the assignments in `exercises/` and the package. Solutions and hidden tests stay with "
            "the instructor.\n")
    return title + note + rest


def _names_instructor_path(row: str, shipped: set[str]) -> bool:
    """A table row whose first cell names a folder or file that the release does not ship."""
    first_cell = row.strip("|").split("|")[0]
    for name in re.findall(r"`([^`]+)`", first_cell):
        name = name.strip().rstrip("/")
        if _instructor_only(name) or (name and "/" in name and not any(p == name or p.startswith(name + "/")
                                                                         for p in shipped)):
            return True
    return False


def _texts(path: Path) -> str:
    """The text of a file as a reader sees it: a notebook's cell sources and outputs, other files decoded;
    "" for a binary file (weights, images: a NUL byte in the first 8 KiB)."""
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        return ""
    if path.suffix == ".ipynb":
        nb = json.loads(raw)
        parts = []
        for cell in nb.get("cells", []):
            source = cell.get("source", "")
            parts.append("".join(source) if isinstance(source, list) else source)
            for output in cell.get("outputs", []):
                for value in [output.get("text", "")] + list(output.get("data", {}).values()):
                    parts.append("".join(value) if isinstance(value, list) else str(value))
        return "\n".join(parts)
    return raw.decode("utf-8", "replace")


def _regions(source: str, is_solution_cell: bool) -> tuple[list[str], list[str]]:
    """(lines inside solution and hidden-test regions, lines outside) of one solutions/ cell; a solution
    cell without markers (a written answer) is inside as a whole."""
    lines = source.splitlines()
    if is_solution_cell and not any(m in line for line in lines for m in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS")):
        return lines, []
    inside, outside, within = [], [], False
    for line in lines:
        if "BEGIN SOLUTION" in line or "BEGIN HIDDEN TESTS" in line:
            within = True
        elif "END SOLUTION" in line or "END HIDDEN TESTS" in line:
            within = False
        else:
            (inside if within else outside).append(line)
    return inside, outside


def secret_lines(root: Path = ROOT, files: list[str] | None = None, min_length: int = 10) -> set[str]:
    """Every line of a solution region, a hidden test or a written answer in ``solutions/``, normalized,
    less lines that are public anyway: the visible lines of the same notebooks, the lectures, and the
    shipped source code (package, ``bench/``, ``scripts/``). ``exercises/`` is not taken as public, so
    a solution that nbgrader failed to strip from the release is caught."""
    import nbformat

    files = public_files(root) if files is None else files
    secret: set[str] = set()
    public: set[str] = set()
    for path in sorted((root / "solutions").rglob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            inside, outside = _regions(cell.source, bool(cell.metadata.get("nbgrader", {}).get("solution")))
            secret |= {_normalize(line) for line in inside}
            public |= {_normalize(line) for line in outside}
    for name in files:
        if name.startswith("lectures/") and name.endswith(".ipynb"):
            public |= {_normalize(line) for cell in nbformat.read(root / name, as_version=4).cells
                       for line in cell.source.splitlines()}
        elif name.endswith((".py", ".sh")):
            public |= {_normalize(line) for line in (root / name).read_text(errors="replace").splitlines()}
    public_text = "\n".join(public)  # a secret inside a public line (a call of a visible helper) is public
    return {s for s in secret - public
            if len(s) >= min_length and re.search(r"[A-Za-z]", s) and s not in public_text}


def find_leaks(release_dir: Path, secrets: set[str]) -> list[tuple[str, str]]:
    """Every (file, line) of the release that shows a solution or hidden-test line, or an nbgrader marker.

    Every text file is read (binary ones, model weights and images, hold no lines); notebooks by their
    cells' sources and outputs."""
    found = []
    for path in sorted(release_dir.rglob("*")):
        if not path.is_file() or ".git" in path.relative_to(release_dir).parts:
            continue
        relative = path.relative_to(release_dir).as_posix()
        text = _texts(path)
        lines = {_normalize(line) for line in text.splitlines()}
        for marker in MARKERS:  # a marker as a line of any file, or anywhere in a notebook
            if marker in lines or (path.suffix == ".ipynb" and marker in text):
                found.append((relative, marker))
        joined = "\n".join(lines)  # a long secret inside a longer line counts too (never across lines)
        found += [(relative, secret) for secret in sorted(secrets)
                  if secret in lines or (len(secret) >= 40 and secret in joined)]
    return found


def _clear(dest: Path, root: Path) -> None:
    """Empty ``dest`` for a new release, keeping ``.git``; refuse a folder that holds something else."""
    dest, root = dest.resolve(), root.resolve()
    if dest == root or dest in root.parents:
        raise ValueError(f"{dest} holds the course itself: release into a separate folder")
    if not dest.exists():
        dest.mkdir(parents=True)
        return
    entries = [p for p in dest.iterdir() if p.name != ".git"]
    if entries and not (dest / MANIFEST).is_file():
        raise ValueError(f"{dest} is not empty and holds no earlier release ({MANIFEST}): give an empty or new folder")
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _source_commit(root: Path) -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *PUBLIC_PATHS, "README.md"], cwd=root,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty else "")


def release(dest: Path, root: Path = ROOT, log=print) -> list[str]:
    """Write the student repository into ``dest``; return the files written (relative paths).

    Raises LeakError, and leaves the folder for inspection, if a solution or hidden-test line
    would be released."""
    dest = Path(dest)
    files = public_files(root)
    _clear(dest, root)
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("docs/") and name.endswith(".md"):  # the pages of docs/, as the README: for students
            target.write_text(without_instructor_blocks((root / name).read_text(), set(files), name))
        else:
            shutil.copy2(root / name, target)
    readme = student_readme((root / "README.md").read_text(), set(files))
    (dest / "README.md").write_text(readme)
    written = sorted(files + ["README.md", MANIFEST])
    manifest = {"made_by": "python -m peftlab release", "source_commit": _source_commit(root), "files": written}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    leaks = find_leaks(dest, secret_lines(root, files))
    if leaks:
        shown = "\n".join(f"  {name}: {line}" for name, line in leaks[:20])
        raise LeakError(f"the release in {dest} would show {len(leaks)} solution or hidden-test lines; "
                           f"nothing may be published:\n{shown}")
    log(f"wrote the student release to {dest}: {len(written)} files "
        f"({sum(1 for f in written if f.startswith('exercises/'))} in exercises/, "
        f"{sum(1 for f in written if f.startswith('lectures/'))} in lectures/); no solution or hidden-test line in it")
    return written
