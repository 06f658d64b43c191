"""The first code cell of every notebook: install peftlab on Colab, then print device and versions.

Every notebook (``lectures/``, ``solutions/``, ``exercises/``) starts with the same set-up cell, made by
``setup_cell``: one variable at its top, ``PEFTLAB_SOURCE``, says where peftlab comes from on Colab (the
course zip uploaded to Colab's Files panel by default, or any pip source such as a git URL or a wheel),
and the cell installs ``peftlab[course]`` when the notebook imports a package of the ``course`` extra
(peft, bitsandbytes, triton, ...), plain ``peftlab`` otherwise. Outside Colab the cell only imports
the peftlab already installed.

``python -m peftlab.colab`` rewrites the first code cell of every lecture and solution notebook that
differs (only that cell); ``exercises/`` are generated from ``solutions/``, so run ``nbgrader
generate_assignment <a> --force`` afterwards for each changed ``solutions/<a>``.
tests/test_colab_cells.py checks every notebook against this module and installs the cell's source
in a fresh virtual environment.
"""
from __future__ import annotations

import ast
import functools
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_FOLDERS = ("lectures", "solutions", "exercises")
DEFAULT_SOURCE = "peftlab-course.zip"  # the name the course site's download link gives the zip
COURSE_EXTRA = "course"

_CELL = '''\
# Set-up. On Colab this installs peftlab from PEFTLAB_SOURCE: by default the course zip uploaded to
# Colab's Files panel (download peftlab-course.zip from the course site); any pip source works too,
# e.g. "git+https://github.com/<owner>/<repo>.git". Elsewhere the peftlab already installed is used.
PEFTLAB_SOURCE = "{source}"
import sys
if "google.colab" in sys.modules:
    import os, subprocess
    if os.path.exists(PEFTLAB_SOURCE):  # an uploaded zip or folder
        PEFTLAB_SOURCE = "file://" + os.path.abspath(PEFTLAB_SOURCE)
    elif "://" not in PEFTLAB_SOURCE:
        raise FileNotFoundError(f"{{PEFTLAB_SOURCE}} not found: upload it in the Files panel or set PEFTLAB_SOURCE")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{requirement} @ {{PEFTLAB_SOURCE}}"], check=True)
import peftlab
device = peftlab.print_environment()'''


def setup_cell(extra: str | None, source: str = DEFAULT_SOURCE) -> str:
    """The set-up cell's source: installs ``peftlab[extra]`` (or plain ``peftlab``) from ``source`` on Colab."""
    requirement = f"peftlab[{extra}]" if extra else "peftlab"
    return _CELL.format(source=source, requirement=requirement)


def cell_requirement(source: str) -> str | None:
    """What a set-up cell installs (``peftlab`` or ``peftlab[course]``), or None if it is not one."""
    match = re.search(r'f"(peftlab(?:\[[\w,]+\])?) @ \{PEFTLAB_SOURCE\}"', source)
    return match.group(1) if match else None


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every committed notebook, by glob, so new lectures and assignments are picked up."""
    found = []
    for folder in NOTEBOOK_FOLDERS:
        found += [p for p in sorted((root / folder).rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts]
    return found


def first_code_cell(nb: dict) -> dict | None:
    return next((c for c in nb["cells"] if c["cell_type"] == "code"), None)


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def notebook_imports(nb: dict) -> set[str]:
    """Top-level names of the modules the notebook's code cells import (shell and magic lines skipped)."""
    names: set[str] = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        code = "\n".join(line for line in _source(cell).splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def optional_extras(root: Path = ROOT) -> dict[str, list[str]]:
    """pyproject.toml's optional dependency lists, by extra: {"course": ["jupyterlab>=4", ...]}."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return dict(project.get("optional-dependencies", {}))


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@functools.lru_cache(maxsize=None)
def extra_modules(extra: str = COURSE_EXTRA, root: Path = ROOT) -> frozenset[str]:
    """Import names provided only by ``extra`` (not by peftlab's own dependencies)."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    base = {_dist_name(r) for r in project["dependencies"]}
    return frozenset(_dist_name(r).replace("-", "_") for r in optional_extras(root)[extra] if _dist_name(r) not in base)


@functools.lru_cache(maxsize=None)
def functions_needing(modules: frozenset[str], root: Path = ROOT) -> dict[str, str]:
    """peftlab functions that import one of ``modules`` inside their body: {function name: module}.

    A notebook that calls one (``memory.adamw_8bit`` needs bitsandbytes) needs that module installed
    although it never imports it. Module-level imports guarded by try/except (triton in the kernels,
    with a PyTorch fallback) are optional and not counted.
    """
    needing: dict[str, str] = {}
    for path in sorted((root / "peftlab").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                hit = next((n.split(".")[0] for n in names if n.split(".")[0] in modules), None)
                if hit:
                    needing[fn.name] = hit
    return needing


def needed_extra(nb: dict, root: Path = ROOT) -> str | None:
    """``"course"`` when the notebook imports (or calls peftlab code that imports) a course-only package."""
    course = extra_modules(COURSE_EXTRA, root)
    if notebook_imports(nb) & course:
        return COURSE_EXTRA
    code = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "code")
    if any(re.search(rf"\b{re.escape(name)}\b", code) for name in functions_needing(course, root)):
        return COURSE_EXTRA
    return None


def _dump(nb: dict, like: str) -> str:
    """Serialize as the file was: indent 1, key order kept, ASCII escapes only if the file used them."""
    for ensure_ascii in (False, True):
        if json.dumps(json.loads(like), indent=1, ensure_ascii=ensure_ascii) + "\n" == like:
            return json.dumps(nb, indent=1, ensure_ascii=ensure_ascii) + "\n"
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def with_setup_cell(text: str, root: Path = ROOT) -> str:
    """The notebook file ``text`` with its first code cell replaced by the set-up cell it needs."""
    nb = json.loads(text)
    cell = first_code_cell(nb)
    wanted = setup_cell(needed_extra(nb, root))
    if cell is None or _source(cell) == wanted:
        return text
    lines = wanted.splitlines(keepends=True)
    cell["source"] = lines if isinstance(cell["source"], list) else wanted
    return _dump(nb, text)


def main(argv: list[str] | None = None) -> int:
    changed = []
    for path in notebooks():
        if path.relative_to(ROOT).parts[0] == "exercises":  # nbgrader's release: regenerated from solutions/
            continue
        text = path.read_text()
        new = with_setup_cell(text)
        if new != text:
            path.write_text(new)
            changed.append(path.relative_to(ROOT).as_posix())
    print("\n".join(f"rewrote the set-up cell of {p}" for p in changed) or "every set-up cell is up to date")
    if any(p.startswith("solutions/") for p in changed):
        print("now run: nbgrader generate_assignment <assignment> --force  (for each changed solutions/<assignment>)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
