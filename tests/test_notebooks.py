"""Notebooks: every lecture runs top to bottom, and every committed notebook is stored clean.

- ``test_lecture_runs``: executes each ``lectures/*.ipynb`` (a glob, so new lectures are picked up
  with no change here) with nbclient on the ``python3`` kernel, from the ``lectures/`` folder, with
  ``PEFTLAB_QUICK=1`` (short runs) and ``MPLBACKEND=Agg``; a cell that raises fails the test with
  the cell's source and traceback. Marked ``notebook`` (slow: about a minute per lecture on a CPU).
- ``test_committed_notebook_is_clean``: every notebook under ``lectures/``, ``solutions/`` and
  ``exercises/`` has no outputs, ``execution_count`` null and kernelspec ``python3`` (fast).

Run: ``.venv/bin/python -m pytest tests/test_notebooks.py`` (all), ``-m "not notebook"`` (only the
fast check), ``-k 01_full`` (one lecture). CPU only; a GPU is used by the notebooks if present.
Notebooks are executed in memory and never written back, so the committed files stay clean.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LECTURES = ROOT / "lectures"
COMMITTED_FOLDERS = ("lectures", "solutions", "exercises")
CELL_TIMEOUT_S = 600  # per cell: a quick run's longest cell needs well under a minute on an idle 2-core CPU
KERNEL = "python3"


def _notebooks(*folders: str) -> list[Path]:
    found = []
    for folder in folders:
        found += [p for p in sorted((ROOT / folder).rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts]
    return found


def _id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def stored_state_problems(nb) -> list[str]:
    """What is wrong with how ``nb`` is stored: outputs, execution counts, a kernel other than python3."""
    problems = []
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != KERNEL:
        problems.append(f"kernelspec name is {kernel!r}, expected {KERNEL!r}")
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {index} has {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {index} has execution_count {cell.execution_count}")
    return problems


@pytest.mark.parametrize("path", _notebooks(*COMMITTED_FOLDERS), ids=_id)
def test_committed_notebook_is_clean(path):
    problems = stored_state_problems(nbformat.read(path, as_version=4))
    shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
    assert not problems, (f"{_id(path)} is not stored clean: {shown}. Clear outputs before "
                          "committing (Jupyter: Edit > Clear Outputs of All Cells, or "
                          "jupyter nbconvert --clear-output --inplace <notebook>).")


def test_clean_check_catches_outputs():
    """The check above must be able to fail: an executed-looking notebook is flagged on every count."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python2", "display_name": "Python 2", "language": "python"}
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    cell.execution_count = 3
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), cell, nbformat.v4.new_code_cell("x = 1")]
    problems = stored_state_problems(nb)
    assert problems == ["kernelspec name is 'python2', expected 'python3'", "cell 1 has 1 output(s)",
                        "cell 1 has execution_count 3"]
    nb.metadata["kernelspec"]["name"] = KERNEL
    cell.outputs, cell.execution_count = [], None
    assert stored_state_problems(nb) == []


@pytest.mark.notebook
@pytest.mark.parametrize("path", _notebooks("lectures"), ids=lambda p: p.name)
def test_lecture_runs(path, monkeypatch, tmp_path):
    from jupyter_client import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # the kernel is a child process: it inherits this environment
    monkeypatch.setenv("PEFTLAB_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    # IPC sockets, not TCP ports: the nbgrader tests start kernels at the same time in the other xdist
    # worker, and two processes choosing free TCP ports at once can pick the same one.
    km = KernelManager(kernel_name=KERNEL, transport="ipc", ip=str(tmp_path / "kernel"))
    client = NotebookClient(nb, km=km, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(LECTURES)}})
    try:
        client.execute()
    except CellExecutionError as err:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # drop the traceback's terminal colours
        pytest.fail(f"{path.name} failed in quick mode:\n{plain}", pytrace=False)
    finally:  # nbclient leaves a kernel it did not start running: each would hold its models in memory
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
