"""The Colab set-up cell: every notebook's first code cell installs what that notebook imports, and it installs.

- ``test_setup_cell_fits_the_notebook``: for every notebook under ``lectures/``, ``solutions/`` and
  ``exercises/`` (a glob: new notebooks are picked up), the first code cell is ``peftlab.colab``'s set-up
  cell with ``PEFTLAB_SOURCE`` as its first line of code; the requirement it installs (``peftlab`` or
  ``peftlab[course]``) provides, through pyproject.toml's dependency lists, every third-party module the
  notebook imports (or reaches through peftlab, as ``memory.adamw_8bit`` reaches bitsandbytes), and
  installs the ``course`` extra only where the notebook needs it; a release's cell equals its source's.
- ``test_guide_shows_the_setup_cell``: the guide's Colab section (docs/guide.md) shows the same cell, character for character.
- ``test_setup_cell_installs``: each distinct set-up cell runs, as on Colab (a stand-in ``google.colab``
  module), in a fresh virtual environment, offline (``PIP_NO_INDEX``): its pip command installs
  ``peftlab`` from the course zip the site offers (``peftlab.site.make_course_zip``, built from this
  checkout) under its default name, then imports it and loads the tiny base from the installed copy.
  The fresh environment sees this checkout's installed packages (torch, peft, ...) as Colab has its
  own, except peftlab itself; a zip without ``pyproject.toml`` must fail first, so the check can fail.
- ``test_fit_check_can_fail``: hand-made notebooks with a wrong cell are flagged.

Run: ``.venv/bin/python -m pytest tests/test_colab_cells.py -n 0``. CPU only, no network; about a
minute (two virtual environments). Fix a notebook's cell with ``python -m peftlab.colab``.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from peftlab import colab
from peftlab.site import COURSE_ZIP, make_course_zip

ROOT = Path(__file__).resolve().parents[1]
KERNEL_MODULES = {"IPython", "ipykernel"}  # every Jupyter kernel (and Colab) has them


packages_distributions = functools.lru_cache(maxsize=None)(metadata.packages_distributions)


def _id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _dist(requirement: str) -> str:
    return colab._dist_name(requirement)


def provided_distributions(requirement: str) -> set[str]:
    """Distributions that installing ``requirement`` (``peftlab`` or ``peftlab[course]``) brings."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dists = {_dist(r) for r in project["dependencies"]} | {"peftlab"}
    extras = requirement.partition("[")[2].rstrip("]")
    for extra in filter(None, extras.split(",")):
        dists |= {_dist(r) for r in project["optional-dependencies"][extra]}
    return dists


def setup_cell_problems(nb: dict, expected_source: str | None = None) -> list[str]:
    """What is wrong with ``nb``'s set-up cell; ``expected_source``: the cell it must equal (a release's source)."""
    cell = colab.first_code_cell(nb)
    if cell is None:
        return ["no code cell"]
    source = colab._source(cell)
    code_lines = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    problems = []
    if not code_lines or not code_lines[0].startswith("PEFTLAB_SOURCE = "):
        problems.append("its first line of code is not PEFTLAB_SOURCE = ...")
    requirement = colab.cell_requirement(source)
    if requirement is None:
        return problems + ["it installs no peftlab requirement"]
    dists = provided_distributions(requirement)
    module_dists = packages_distributions()
    for module in sorted(colab.notebook_imports(nb) - set(sys.stdlib_module_names) - KERNEL_MODULES - {"peftlab"}):
        providers = {_dist(d) for d in module_dists.get(module, [module])}
        if not providers & dists:
            problems.append(f"it installs {requirement}, which does not provide '{module}' that the notebook imports")
    needed = colab.needed_extra(nb)
    if needed and f"[{needed}]" not in requirement:
        problems.append(f"the notebook needs the [{needed}] extra (peft, bitsandbytes, ...) but the cell installs {requirement}")
    if "[" in requirement and not needed:
        problems.append(f"it installs {requirement} but the notebook needs no extra (plain peftlab is faster on Colab)")
    wanted = expected_source if expected_source is not None else colab.setup_cell(needed)
    if source != wanted:
        problems.append("it differs from peftlab.colab's set-up cell (python -m peftlab.colab rewrites it)")
    return problems


@pytest.mark.parametrize("path", colab.notebooks(), ids=_id)
def test_setup_cell_fits_the_notebook(path):
    expected = None
    if path.relative_to(ROOT).parts[0] == "exercises":  # the release's cell is its source's, via nbgrader
        source_nb = ROOT / "solutions" / path.relative_to(ROOT / "exercises")
        if source_nb.exists():
            expected = colab._source(colab.first_code_cell(_read(source_nb)))
    problems = setup_cell_problems(_read(path), expected)
    assert not problems, f"{_id(path)}'s set-up cell: " + "; ".join(problems)


def test_fit_check_can_fail():
    def notebook(cell_source: str, *more: str) -> dict:
        cells = [{"cell_type": "code", "source": s, "metadata": {}, "outputs": [], "execution_count": None}
                 for s in (cell_source, *more)]
        return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

    plain, course = colab.setup_cell(None), colab.setup_cell("course")
    assert setup_cell_problems(notebook(plain, "import torch\nimport matplotlib.pyplot as plt")) == []
    assert setup_cell_problems(notebook(course, "import peft")) == []
    needs_extra = setup_cell_problems(notebook(plain, "import peft"))
    assert any("does not provide 'peft'" in p for p in needs_extra) and any("[course] extra" in p for p in needs_extra)
    assert any("bitsandbytes" in p or "[course]" in p for p in setup_cell_problems(
        notebook(plain, "from peftlab import memory\nopt = memory.adamw_8bit(model)")))
    assert any("needs no extra" in p for p in setup_cell_problems(notebook(course, "import torch")))
    assert any("'pandas'" in p for p in setup_cell_problems(notebook(plain, "import pandas as pd")))
    old_style = plain.replace('PEFTLAB_SOURCE = "peftlab-course.zip"\n', "").replace(
        "import sys\n", 'import sys, os\nPEFTLAB_SOURCE = os.environ.get("PEFTLAB_REPO", "")\n', 1)
    assert any("first line of code" in p for p in setup_cell_problems(notebook(old_style, "import torch")))
    assert setup_cell_problems(notebook("import peftlab", "import torch")) == [
        "its first line of code is not PEFTLAB_SOURCE = ...", "it installs no peftlab requirement"]
    assert any("differs" in p for p in setup_cell_problems(notebook(plain, "import torch"), expected_source=course))


def test_guide_shows_the_setup_cell():
    guide = (ROOT / "docs" / "guide.md").read_text()
    cell = colab.setup_cell("course")
    assert f"```python\n{cell}\n```" in guide, (
        "docs/guide.md's Colab section must show the set-up cell exactly as the notebooks have it:\n" + cell)
    assert "peftlab[course]" in guide and COURSE_ZIP in guide


# ------------------------------------------------------------------------------ installing it for real

def _shadow_site_packages(dest: Path) -> Path:
    """This environment's packages without peftlab, as links: what Colab has before the cell runs."""
    dest.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if name.startswith(("peftlab", "__editable__", "_peftlab")) or name.endswith((".pth", ".egg-link")):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def _run_cell(python: Path, cell: str, cwd: Path) -> subprocess.CompletedProcess:
    """The cell as Colab runs it, then (in a new process, without the stand-in) what it installed."""
    fake_colab = ("import sys, types\n"
                  "sys.modules['google.colab'] = types.ModuleType('google.colab')  # as on Colab\n")
    check = ("import peftlab\n"
             "print('PEFTLAB_FILE', peftlab.__file__)\n"
             "model, tokenizer = peftlab.load_base('tiny')\n"
             "print('BASE_PARAMETERS', sum(p.numel() for p in model.parameters()))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_FIND_LINKS")}
    # offline: nothing may come from an index; setuptools from the environment builds the zip
    env.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    ran = subprocess.run([str(python), "-c", fake_colab + cell], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    if ran.returncode != 0:
        return ran
    checked = subprocess.run([str(python), "-c", check], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.CompletedProcess(checked.args, checked.returncode, ran.stdout + checked.stdout,
                                       ran.stderr + checked.stderr)


def _distinct_cells() -> dict[str, str]:
    cells = {}
    for path in colab.notebooks():
        source = colab._source(colab.first_code_cell(_read(path)))
        cells.setdefault(colab.cell_requirement(source) or "none", source)
    return cells


@pytest.mark.parametrize("requirement", sorted(_distinct_cells()))
def test_setup_cell_installs(requirement, tmp_path):
    cell = _distinct_cells()[requirement]
    venv = tmp_path / "venv"
    # without its own pip and setuptools: the preinstalled ones (as on Colab) build and install the zip
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "colab_preinstalled.pth").write_text(str(_shadow_site_packages(tmp_path / "preinstalled")) + "\n")
    work = tmp_path / "content"  # Colab's working folder, where the Files panel uploads
    work.mkdir()

    # the check can fail: a zip that is not an installable course
    broken = tmp_path / "broken"
    make_course_zip(broken / COURSE_ZIP)
    import zipfile

    with zipfile.ZipFile(broken / COURSE_ZIP) as full, zipfile.ZipFile(work / COURSE_ZIP, "w") as partial:
        for name in full.namelist():
            if not name.endswith("pyproject.toml"):
                partial.writestr(name, full.read(name))
    failed = _run_cell(python, cell, work)
    assert failed.returncode != 0 and "PEFTLAB_FILE" not in failed.stdout

    make_course_zip(work / COURSE_ZIP)
    ran = _run_cell(python, cell, work)
    assert ran.returncode == 0, \
        f"the set-up cell ({requirement}) failed in a fresh environment:\n{ran.stdout}\n{ran.stderr[-3000:]}"
    installed = next(line.split(" ", 1)[1] for line in ran.stdout.splitlines() if line.startswith("PEFTLAB_FILE"))
    assert Path(installed).resolve().is_relative_to(venv.resolve()), \
        f"peftlab was imported from {installed}, not the fresh environment"
    assert "BASE_PARAMETERS" in ran.stdout and "device" in ran.stdout.lower()
