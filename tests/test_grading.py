"""The assignments' grading helpers: ``peftlab.grading`` (warnings to stdout, captured checking
functions, switching peftlab's implementations off) and the autograder's static reading of answers,
``peftlab.grading_preprocessors.find_tampering`` (what it flags, what it leaves alone, and that no
solution in ``solutions/`` is flagged). The nbgrader runs that use them are in ``test_nbgrader.py``.

Run: ``.venv/bin/python -m pytest tests/test_grading.py -n 0``. CPU only, a few seconds, and one
tiny ``nbgrader autograde`` run (marked ``nbgrader``, about half a minute): a deleted test cell after a
heading is restored and graded.
"""
from __future__ import annotations

import copy
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import torch

import peftlab
from peftlab import grading, utils
from peftlab.grading_preprocessors import FLAG_NAME, FlagTampering, ScoreByPassing, find_tampering, student_cells

ROOT = Path(__file__).resolve().parents[1]

LOCKED = ["import math\nimport torch\nimport torch.nn.functional as F\nimport numpy as np\n"
          "from peftlab import grading\nREF = grading.start()\n\ndef tiny_model(seed=0):\n    return None\n"]


def test_start_sends_warnings_logs_and_stderr_to_stdout():
    code = textwrap.dedent("""
        import logging, sys, warnings
        logging.getLogger("library").addHandler(logging.StreamHandler(sys.stderr))  # made before start()
        from peftlab import grading
        REF = grading.start()
        warnings.warn("a warning")
        logging.getLogger("student").warning("a log record")
        logging.getLogger("library").warning("a library's record")
        print("written to stderr", file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr == "", proc.stderr
    for text in ("a warning", "a log record", "a library's record", "written to stderr"):
        assert text in proc.stdout, (text, proc.stdout)


def test_references_are_captured_and_read_only():
    ref = grading.REFERENCES
    assert ref.assert_close is torch.testing.assert_close and ref.isclose is math.isclose
    with pytest.raises(AttributeError):
        ref.isclose = lambda *args, **kwargs: True


def test_check_untouched_sees_a_replaced_function(monkeypatch):
    grading.check_untouched()
    monkeypatch.setattr(math, "isclose", lambda *args, **kwargs: True)
    with pytest.raises(AssertionError, match="math.isclose"):
        grading.check_untouched()
    assert grading.REFERENCES.isclose(1.0, 1.0) and not grading.REFERENCES.isclose(1.0, 2.0)  # the original


def test_switched_off_reaches_reexports_and_aliases_and_restores():
    original = utils.count_parameters
    assert peftlab.count_parameters is original  # re-exported by the package
    namespace = {"count": original, "other": len}
    with grading.switched_off("peftlab.utils.count_parameters", namespace=namespace):
        for function in (utils.count_parameters, peftlab.count_parameters, namespace["count"]):
            with pytest.raises(AssertionError, match="switched off"):
                function(torch.nn.Linear(2, 2))
        assert namespace["other"] is len
    assert utils.count_parameters is original and peftlab.count_parameters is original and namespace["count"] is original
    with pytest.raises(AttributeError, match="no attribute"):
        with grading.switched_off("peftlab.utils.no_such_function"):
            pass


def test_switched_off_refuses_references_bound_before_the_block():
    """A default argument, a closure and a bound method taken before the block refuse inside it (the
    function's own code is swapped), and work again after it."""
    original = utils.count_parameters
    code = original.__code__

    def by_default(model, _impl=utils.count_parameters):  # delegation through a default argument
        return _impl(model)

    def make_closure():
        impl = utils.count_parameters
        return lambda model: impl(model)

    by_closure = make_closure()
    layer = torch.nn.Linear(2, 2)
    expected = original(layer)
    with grading.switched_off("peftlab.utils.count_parameters", namespace={}):
        for delegate in (by_default, by_closure):
            with pytest.raises(AssertionError, match="switched off"):
                delegate(layer)
    assert original.__code__ is code and by_default(layer) == by_closure(layer) == expected


def test_switched_off_swaps_the_code_of_closures_methods_and_properties():
    import functools

    from peftlab.quant import Quantized4bit

    def outer():
        secret = 3

        @functools.wraps(outer)
        def inner(x):
            return x + secret
        return inner

    wrapped = outer()  # a closure with one free variable: the refusing code must keep one
    module = type(sys)("peftlab._switched_off_fixture")
    module.wrapped = wrapped
    sys.modules[module.__name__] = module
    try:
        code, scales = Quantized4bit.__dict__["code"], Quantized4bit.scales  # a property and a method, taken before
        with grading.switched_off("peftlab._switched_off_fixture.wrapped", "peftlab.quant.Quantized4bit.code",
                                  "peftlab.quant.Quantized4bit", namespace={}):
            for call in (lambda: wrapped(1), lambda: code.fget(None), lambda: scales(None)):
                with pytest.raises(AssertionError, match="switched off"):
                    call()
        assert wrapped(1) == 4 and Quantized4bit.__dict__["code"] is code and Quantized4bit.scales is scales
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize("answer, found", [
    ("torch.testing.assert_close = lambda *a, **k: None", "assigns to torch.testing.assert_close"),
    ("math.isclose = lambda *a, **k: True", "assigns to math.isclose"),
    ("import torch.testing as tt\ntt.assert_close = None", "assigns to torch.testing.assert_close"),
    ("F.cross_entropy = None", "assigns to torch.nn.functional.cross_entropy"),
    ("np.allclose = None", "assigns to numpy.allclose"),
    ("import builtins\nbuiltins.abs = None", "assigns to builtins.abs"),
    ("__builtins__.abs = None", "assigns to builtins.abs"),
    ("peftlab.count_parameters = len", "assigns to peftlab.count_parameters"),
    ("def f():\n    math.isclose = None", "assigns to math.isclose"),
    ("torch.testing.__dict__['assert_close'] = None", "assigns to torch.testing.__dict__[...]"),
    ("setattr(torch.testing, 'assert_close', None)", "calls setattr() on torch.testing"),
    ("vars(math).update(isclose=None)", "changes vars()"),
    ("globals()['torch'] = None", "writes into globals()"),
    ("exec('math.isclose = None')", "calls exec()"),
    ("import sys\nsys.modules['math'] = None", "assigns to sys.modules[...]"),
    ("def all(values):\n    return True", "rebinds the builtin name 'all'"),
    ("def f():\n    global sum\n    sum = len", "rebinds the builtin name 'sum'"),
    ("REF = None", "rebinds 'REF', which a locked cell set up"),
    ("import numpy as torch", "rebinds 'torch', which a locked cell set up"),
    ("def tiny_model(seed=0):\n    return 0", "rebinds 'tiny_model', which a locked cell set up"),
    ("get_ipython().ast_transformers.append(object())", "reaches IPython's ast_transformers"),
    ("ip = get_ipython()\nip.input_transformers_post.append(lambda lines: [])", "reaches IPython's input_transformers_post"),
    ("def f():\n    get_ipython().run_cell = print", "reaches IPython's run_cell"),
])
def test_tampering_is_found(answer, found):
    findings = find_tampering({"cell 'answer'": answer}, LOCKED)
    assert findings and found in findings[0], findings


@pytest.mark.parametrize("answer", [
    "def f(values):\n    sum = 0\n    for value in values:\n        sum += value\n    return sum",  # a local name
    "import math\nimport torch\nimport torch.nn.functional as F\nfrom torch.nn import functional as F",  # the same imports
    "x = torch.zeros(3)\nx[0] = 1\nlayer = torch.nn.Linear(2, 2)\nlayer.weight.data = torch.ones(2, 2)\ntorch.manual_seed(0)",
    "%timeit 1 + 1\nclass Counter:\n    sum = 3\n    def len(self):\n        return 0",  # magics; names of a class
    "import warnings\nwarnings.warn('fine')\nfrom peftlab.quant import quantize_4bit\nsetattr(layer, 'weight', None)",
    "def broken(:\n    pass",  # a syntax error fails when it runs; nothing to read
])
def test_ordinary_answers_are_not_flagged(answer):
    assert find_tampering({"cell 'answer'": answer}, LOCKED) == []


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*/*.ipynb")), ids=lambda p: p.parent.name)
def test_no_solution_is_flagged(path):
    nb = nbformat.read(path, as_version=4)
    assert find_tampering(*student_cells(nb)) == []


def _notebook(answer: str):
    nb = nbformat.v4.new_notebook()
    meta = lambda **kw: {"nbgrader": {"schema_version": 3, "locked": False, "solution": False, "grade": False, **kw}}  # noqa: E731
    nb.cells = [nbformat.v4.new_code_cell(LOCKED[0], metadata=meta(grade_id="imports", locked=True)),
                nbformat.v4.new_code_cell(answer, metadata=meta(grade_id="answer", solution=True)),
                nbformat.v4.new_code_cell("assert True", metadata=meta(grade_id="test", locked=True, grade=True, points=2))]
    return nb


def test_flag_zeroes_every_test_cell_and_says_why():
    from nbgrader.utils import determine_grade

    nb, _ = FlagTampering().preprocess(_notebook("def f():\n    return 1\nmath.isclose = lambda *a, **k: True"), {})
    test_cell = nb.cells[-1]
    assert determine_grade(test_cell) == (0, 2.0)
    assert test_cell.outputs[0].ename == FLAG_NAME and "math.isclose" in test_cell.outputs[0].evalue
    assert nb.metadata["peftlab_grading"]["tampering"]
    clean, _ = FlagTampering().preprocess(_notebook("def f():\n    return 1"), {})
    assert determine_grade(clean.cells[-1]) == (2.0, 2.0) and clean.metadata["peftlab_grading"]["tampering"] == []


def test_a_test_cell_scores_by_passing_whatever_it_displays():
    """nbgrader reads a test cell's first execute_result as its grade; ScoreByPassing makes only errors count."""
    from nbgrader.utils import determine_grade

    published = nbformat.v4.new_output("execute_result", data={"text/plain": "'ok'"}, execution_count=3)
    error = nbformat.v4.new_output("error", ename="AssertionError", evalue="wrong", traceback=["AssertionError: wrong"])
    shown = nbformat.v4.new_output("display_data", data={"text/plain": "0.5"})
    cases = [([published, error], 0), ([shown, published, error], 0), ([published], 2.0), ([shown], 2.0), ([], 2.0),
             ([error, published], 0)]
    for outputs, expected in cases:
        nb = _notebook("def f():\n    return 1")
        nb.cells[-1].outputs = copy.deepcopy(outputs)
        if outputs[:1] == [published]:  # nbgrader alone: a published result that comes first decides the grade
            assert determine_grade(nb.cells[-1]) == (2.0, 2.0)
        graded, _ = ScoreByPassing().preprocess(nb, {})
        assert determine_grade(graded.cells[-1]) == (expected, 2.0), (outputs, graded.cells[-1].outputs)
        kinds = [o.output_type for o in graded.cells[-1].outputs]
        assert "execute_result" not in kinds and len(kinds) == len(outputs), kinds  # shown, not dropped
    answer_nb = _notebook("1 + 1")
    answer_nb.cells[1].outputs = [copy.deepcopy(published)]  # an answer cell's result is left as it is
    assert ScoreByPassing().preprocess(answer_nb, {})[0].cells[1].outputs[0].output_type == "execute_result"


def _course_notebook():
    """A two-part assignment whose second test cell comes right after a locked heading, with hidden tests."""
    def meta(grade_id, **flags):
        return {"nbgrader": {"schema_version": 3, "grade_id": grade_id, "locked": False, "solution": False,
                             "grade": False, **flags}}
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1", metadata=meta("setup", locked=True)),
        nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 2\n    ### END SOLUTION",
                                  metadata=meta("f", solution=True)),
        nbformat.v4.new_code_cell("assert f() == 2", metadata=meta("test_f", locked=True, grade=True, points=1)),
        nbformat.v4.new_markdown_cell("## Part B (1 point)", metadata=meta("part_b", locked=True)),
        nbformat.v4.new_code_cell("assert x == 1\n### BEGIN HIDDEN TESTS\nassert f() + x == 3\n### END HIDDEN TESTS",
                                  metadata=meta("test_sum", locked=True, grade=True, points=1)),
    ]
    return nb


def _autograde(tmp_path, submissions: dict) -> dict:
    """Generate the two-part course in ``tmp_path`` and autograde ``submissions`` (student -> notebook) with the
    course's ``nbgrader_config.py``; returns student -> grade_id -> (score, needs manual grade)."""
    import os

    from nbgrader.api import Gradebook

    shutil.copy(ROOT / "nbgrader_config.py", tmp_path)
    (tmp_path / "solutions" / "t").mkdir(parents=True)
    nbformat.write(_course_notebook(), tmp_path / "solutions" / "t" / "t.ipynb")
    for student, notebook in submissions.items():
        (tmp_path / "submitted" / student / "t").mkdir(parents=True)
        nbformat.write(notebook, tmp_path / "submitted" / student / "t" / "t.ipynb")
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("NBGRADER_EXECUTION", None)
    for args in (["generate_assignment", "t", "--force"], ["autograde", "t"]):
        proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "| ERROR]" not in log, log[-3000:]
    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}", "peftlab") as gradebook:
        return {student: {g.name: (g.score, g.needs_manual_grade) for nb in gradebook.find_submission("t", student).notebooks
                          for g in nb.grades} for student in submissions}


@pytest.mark.nbgrader
def test_a_deleted_test_cell_after_a_heading_is_restored(tmp_path):
    """nbgrader 0.9.6's own add_missing_cells fails (KeyError) for a test cell right after a locked heading."""
    submission = _course_notebook()
    del submission.cells[4]  # the test cell after the heading
    grades = _autograde(tmp_path, {"student": submission})["student"]
    assert grades == {"test_f": (1.0, False), "test_sum": (1.0, False)}, grades
    graded = nbformat.read(tmp_path / "autograded" / "student" / "t" / "t.ipynb", as_version=4)
    ids = [cell.metadata.get("nbgrader", {}).get("grade_id") for cell in graded.cells]
    assert ids == ["setup", "f", "test_f", "part_b", "test_sum"], ids
    assert "assert f() + x == 3" in graded.cells[4].source  # restored with its hidden test


PUBLISHING_ANSWER = """
def f():
    ### BEGIN SOLUTION
    get_ipython().displayhook("ok")  # a result shown in the test cell that calls f
    return 3  # wrong: the test wants 2
    ### END SOLUTION


def _publish(*args):
    get_ipython().displayhook("ok")


get_ipython().events.register("pre_run_cell", _publish)  # a result shown at the start of every later cell
"""


HISTORY_READING_ANSWER = r"""
def f():
    ### BEGIN SOLUTION
    import re  # the answer reads the expected value from the source of the test cell that calls it
    namespace = get_ipython().user_ns
    sources = [str(s) for s in list(namespace.get("_ih", [])) + list(namespace.get("In", []))]
    sources += [str(v) for k, v in namespace.items() if k.startswith("_i")]
    for source in reversed(sources):
        found = re.search(r"f\(\)( \+ x)? == (\d+)", source)
        if found:
            return int(found.group(2)) - (1 if found.group(1) else 0)
    return 0
    ### END SOLUTION
"""


@pytest.mark.nbgrader
def test_a_wrong_answer_that_publishes_a_result_scores_zero(tmp_path):
    """Under real ``nbgrader autograde`` with the course's config: a wrong answer that shows ``"ok"`` in the
    test cells, from inside its function and from a ``pre_run_cell`` hook, scores 0 (plain nbgrader 0.9.6
    reads the shown result as full marks); the right answer that publishes the same way keeps its points.
    An answer that reads the expected values from the input history (``In``, ``_ih``, ``_i``) of the test
    cell calling it finds none (``ExecuteTestsOutOfHistory``) and scores 0."""
    submissions = {}
    for student, answer in (("wrong", PUBLISHING_ANSWER), ("right", PUBLISHING_ANSWER.replace("return 3", "return 2")),
                            ("history", HISTORY_READING_ANSWER)):
        submissions[student] = _course_notebook()
        submissions[student].cells[1].source = answer
    grades = {student: {gid: score for gid, (score, _) in cells.items()}
              for student, cells in _autograde(tmp_path, submissions).items()}
    assert grades == {"wrong": {"test_f": 0.0, "test_sum": 0.0}, "right": {"test_f": 1.0, "test_sum": 1.0},
                      "history": {"test_f": 0.0, "test_sum": 0.0}}, grades
    graded = nbformat.read(tmp_path / "autograded" / "wrong" / "t" / "t.ipynb", as_version=4)
    shown = [o.output_type for o in graded.cells[2].outputs]
    assert "display_data" in shown and "error" in shown, shown  # the result is still shown, beside the error

