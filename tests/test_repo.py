"""Repository hygiene: the README's commands exist and it stays short, nothing names this machine, the
layout is complete, the package map in docs/package.md names every module, docs/guide.md's points are the
notebooks'. CPU only, instant (ruff a few seconds)."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (e.g. an unpacked archive): scan the tree
        return [p for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts and ".git" not in p.parts]
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def test_no_machine_paths_in_the_repo():
    pattern = re.compile(r"(/work/|/root/|/home/\w+/|site-packages/)")
    offenders = []
    for path in tracked_files():
        if path.suffix in {".safetensors", ".png", ".db"} or path.name == "test_repo.py":
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not offenders, offenders


def test_readme_gives_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/setup.sh && .venv/bin/python -m peftlab compare" in readme
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/setup.sh" in ci and "-m pytest" in ci


MAX_README_LINES = 250  # what the course is, the two commands, the course map, where to read on


def test_readme_is_short_and_points_on():
    """The README stays a front page; the rest lives once in docs/ and CONTRIBUTING.md, each linked from it."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= MAX_README_LINES, f"README.md has {len(readme.splitlines())} lines"
    for page in ("docs/guide.md", "docs/frontier.md", "docs/real_model.md", "docs/package.md", "CONTRIBUTING.md"):
        assert (ROOT / page).is_file() and f"]({page}" in readme, f"README.md does not link {page}"
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    assert "python -m pytest -m fast" in contributing and "register" in contributing


def test_layout():
    for path in ("README.md", "requirements.txt", "pyproject.toml", "nbgrader_config.py", ".ci/run",
                 "peftlab", "lectures", "solutions", "exercises", "tests"):
        assert (ROOT / path).exists(), path
    config = (ROOT / "nbgrader_config.py").read_text()
    assert 'source_directory = "solutions"' in config and 'release_directory = "exercises"' in config
    ignored = (ROOT / ".gitignore").read_text()
    for name in ("submitted/", "autograded/", "feedback/", "gradebook.db"):
        assert name in ignored


def test_torch_pinned_to_the_cpu_build():
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text()
    assert "torch==2.13.0" in (ROOT / "scripts" / "setup.sh").read_text()


def test_ruff_is_clean():
    """The linter configured in pyproject.toml ([tool.ruff]) finds nothing in the code, tests and scripts."""
    import sys

    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


MAX_MODULE_LINES = 460  # "one concept per file, readable top to bottom in one sitting"


def test_every_module_reads_in_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "peftlab").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules by job: {long}"


def test_compare_and_the_loop_know_no_method():
    """The registry is the only door: compare, sweep, train and evaluate import no method module."""
    import ast

    for name in ("compare.py", "sweep.py", "train.py", "evaluate.py"):
        tree = ast.parse((ROOT / "peftlab" / name).read_text())
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        method_modules = [m for m in imported if m.startswith("methods.") or ".methods." in m]
        assert not method_modules, f"{name} imports {method_modules}"


def test_the_package_map_names_every_module():
    """docs/package.md, the package's one map, names every module; peftlab/__init__.py points to it, not a copy."""
    modules = {str(p.relative_to(ROOT / "peftlab")) for p in (ROOT / "peftlab").rglob("*.py")
               if "__pycache__" not in p.parts and p.name != "__main__.py"}
    modules -= {"__init__.py", "kernels/__init__.py", "memory/__init__.py", "memory_widget.py"}
    text = (ROOT / "docs" / "package.md").read_text()
    missing = sorted(m for m in modules if f"`{m}`" not in text)
    assert not missing, f"docs/package.md does not name {missing}"
    docstring = (ROOT / "peftlab" / "__init__.py").read_text().split('"""')[1]
    assert "docs/package.md" in docstring and not [m for m in modules if f"``{m}``" in docstring], (
        "peftlab/__init__.py's docstring keeps a second module map: point to docs/package.md instead")


def test_guide_assignment_points_are_the_notebooks():
    """docs/guide.md's table of assignments gives each notebook's total and hand-graded points as the
    notebook itself has them (its title, and its nbgrader cells graded by hand)."""
    import json

    guide = (ROOT / "docs" / "guide.md").read_text()
    table = guide[guide.index("## Assignments: student time and weights"):]
    listed = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)))
              for m in re.finditer(r"^\| (a\d\d) [^|]+\| (\d+) \((\d+) \+ (\d+)\) \|", table, re.M)}
    notebooks = sorted((ROOT / "solutions").glob("a*/a*.ipynb"))
    assert set(listed) == {nb.stem for nb in notebooks}
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        total = int(re.search(r"\((\d+) points\b", "".join(cells[0]["source"])).group(1))
        hand = sum(c["metadata"]["nbgrader"]["points"] for c in cells
                   if c["metadata"].get("nbgrader", {}).get("grade") and c["metadata"]["nbgrader"].get("solution"))
        assert listed[path.stem] == (total, total - hand, hand), (path.stem, listed[path.stem], total, hand)


def test_readme_course_map_points_are_the_notebooks():
    """The README's course map gives each assignment the total points its notebook's title gives."""
    import json

    readme = (ROOT / "README.md").read_text()
    listed = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"\[(a\d\d)\]\(exercises/a\d\d/a\d\d\.ipynb\):[^|]*\((\d+) points\) \|", readme)}
    notebooks = sorted((ROOT / "solutions").glob("a*/a*.ipynb"))
    assert set(listed) == {nb.stem for nb in notebooks}
    for path in notebooks:
        title = "".join(json.loads(path.read_text())["cells"][0]["source"])
        assert listed[path.stem] == int(re.search(r"\((\d+) points\b", title).group(1)), path.stem
