"""nbgrader preprocessors of the course, registered in ``nbgrader_config.py`` for ``nbgrader autograde``.

- ``FlagTampering`` (after the notebook ran, before its scores are saved): reads every code cell the
  student wrote (answer cells and cells they added; the locked cells are the instructor's, restored by
  nbgrader) with ``ast``. A submission that replaces or shadows what the tests check with (see
  ``find_tampering``: assigning to ``torch.*``, ``math.*``, ``numpy.*``, ``builtins`` or ``peftlab.*``,
  rebinding a builtin the tests check with or a name a locked cell set up, ``setattr``/``exec``/``globals()`` tricks)
  gets an error output, ``GradingFlag: <what and where>``, in every autograded test cell of the
  notebook: nbgrader scores each of them 0, and the feedback says why. The notebook's metadata
  records the findings under ``peftlab_grading``; an instructor who judges it a false alarm gives the
  points back by hand in the formgrader (or re-runs autograde with
  ``--FlagTampering.enabled=False`` for that student).
- ``RestoreDeletedCells`` (while nbgrader sanitizes a submission): nbgrader's ``OverwriteCells`` with
  ``add_missing_cells`` on, so a test cell a student deleted is put back (with its hidden tests) and
  graded, instead of landing as a manual-grading item. nbgrader 0.9.6 puts it after the previous
  answer or test cell and fails (``KeyError``) when the cell before it in the source is another locked
  cell (a heading); this version puts it after the nearest earlier source cell the submission still has.

- ``ScoreByPassing`` (after the notebook ran, before its scores are saved): an autograded test cell scores
  its points when it raises nothing and 0 when it raises, whatever else it displays. nbgrader 0.9.6's
  ``determine_grade`` reads a test cell's first ``execute_result`` as a partial grade and stops there (a
  value that is not a number counts as full marks), so an answer that publishes a result in the test
  cell (``get_ipython().displayhook("ok")`` from inside a function, or from a ``pre_run_cell`` hook)
  would hide the ``AssertionError`` after it. Each ``execute_result`` of a test cell becomes a
  ``display_data`` with the same content: the feedback still shows it, the grade reads only errors.
  (nbgrader's ``Execute`` already records an error from the kernel's reply when a cell's error output
  was cleared or never shown.) The course gives no partial credit through outputs.

- ``ExecuteTestsOutOfHistory`` (in place of nbgrader's ``Execute``): runs the notebook as ``Execute`` does,
  but runs each autograded test cell with ``store_history=False``, so its source, hidden tests included,
  never enters IPython's input history (``In``, ``_ih``, ``_i``, ``_i<n>`` in the notebook's namespace),
  where an answer called from that cell could read the expected values. (Python code can still walk
  the call stack or ``linecache``; the grading guide says what is not defended.)

This static check is the second line of defence: the hidden tests compare through ``peftlab.grading``'s
references, captured before any answer ran, so a patch this reading misses still does not pass them.
"""
from __future__ import annotations

import ast

from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.preprocessors import Execute, NbGraderPreprocessor, OverwriteCells

PROTECTED_MODULES = ("torch", "math", "numpy", "builtins", "peftlab", "sys")
# builtins a test is likely to check with (``peftlab.grading``'s references and the conversions asserts use);
# shadowing one at the top level of an answer changes every later test cell that calls it
CHECKING_BUILTINS = frozenset({"abs", "all", "any", "len", "isinstance", "issubclass", "sum", "max", "min", "sorted",
                               "round", "float", "int", "bool", "str", "list", "dict", "set", "tuple", "zip", "range",
                               "enumerate", "callable", "hasattr", "getattr"})
DYNAMIC_CODE = frozenset({"exec", "eval", "compile", "__import__"})
# IPython's hooks that rewrite the code of the cells that run after them (the test cells): an AST transformer
# that drops ``assert`` statements, an input transformer that empties a cell
CODE_REWRITERS = frozenset({"ast_transformers", "input_transformers_cleanup", "input_transformers_post",
                            "input_transformer_manager", "input_splitter", "transform_cell", "transform_ast",
                            "run_cell", "run_ast_nodes", "run_code"})
FLAG_NAME = "GradingFlag"


def _student_code(source: str) -> str:
    """Python source of a cell, with IPython syntax (``%magic``, ``!cmd``) turned into plain calls."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 (no IPython, or a cell it cannot read: parse it as it is)
        return source


def _dotted(node) -> list[str] | None:
    """``torch.testing.assert_close`` -> ["torch", "testing", "assert_close"]; None for other expressions."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


class _Bindings(ast.NodeVisitor):
    """Names the locked cells set up at the top level: imports (name -> dotted path), functions and classes
    (test helpers), and the grading references (``REF = grading.start()``) (name -> None)."""

    def __init__(self):
        self.paths: dict[str, str | None] = {"__builtins__": "builtins"}

    def visit_Import(self, node):
        for alias in node.names:
            if alias.asname:
                self.paths[alias.asname] = alias.name
            else:
                root = alias.name.split(".")[0]
                self.paths[root] = root

    def visit_ImportFrom(self, node):
        if node.level == 0 and node.module:
            for alias in node.names:
                if alias.name != "*":
                    self.paths[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def visit_Assign(self, node):  # REF = grading.start(): the references the tests compare through
        if any(isinstance(n, ast.Name) and n.id == "grading" for n in ast.walk(node.value)):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.paths.setdefault(target.id, None)

    def visit_FunctionDef(self, node):  # only the top level binds notebook names
        self.paths.setdefault(node.name, None)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef


def locked_bindings(sources: list[str]) -> tuple[dict[str, str | None], set[str]]:
    """(name -> module path for every import of every cell, names the locked cells bind at the top level).

    ``sources``: the code of the locked cells."""
    collector = _Bindings()
    for source in sources:
        try:
            collector.visit(ast.parse(_student_code(source)))
        except SyntaxError:
            continue
    paths = {name: path for name, path in collector.paths.items() if path is not None}
    return paths, set(collector.paths) - {"__builtins__"}


class _Finder(ast.NodeVisitor):
    def __init__(self, imports: dict[str, str], locked_names: set[str]):
        self.imports = dict(imports)
        self.locked_names = locked_names
        self.found: list[tuple[int, str]] = []
        self.scopes: list[set[str]] = []  # the names declared `global` in each enclosing function

    # -- helpers
    def _resolve(self, node) -> str | None:
        parts = _dotted(node)
        if not parts:
            return None
        head = self.imports.get(parts[0], parts[0] if parts[0] in PROTECTED_MODULES else None)
        return None if head is None else ".".join([head] + parts[1:])

    def _protected(self, path: str | None) -> bool:
        return bool(path) and path.split(".")[0] in PROTECTED_MODULES

    def _at_top_level(self, name: str) -> bool:
        return not self.scopes or name in self.scopes[-1]

    def _flag(self, node, what: str):
        self.found.append((getattr(node, "lineno", 0), what))

    def _check_target(self, target, node):
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._check_target(element, node)
        elif isinstance(target, ast.Starred):
            self._check_target(target.value, node)
        elif isinstance(target, ast.Name):
            self._check_name(target.id, node)
        elif isinstance(target, (ast.Attribute, ast.Subscript)):
            base = target.value
            if isinstance(base, ast.Call) and _dotted(base.func) and _dotted(base.func)[-1] in ("globals", "vars"):
                self._flag(node, f"writes into {_dotted(base.func)[-1]}()")
                return
            path = self._resolve(base)
            if self._protected(path):
                shown = f"{path}.{target.attr}" if isinstance(target, ast.Attribute) else f"{path}[...]"
                self._flag(node, f"assigns to {shown}")

    def _check_name(self, name: str, node, new_path: str | None = None):
        if not self._at_top_level(name):
            return
        if new_path is not None and self.imports.get(name) == new_path:
            return  # importing again what the locked cells imported under the same name
        if name in CHECKING_BUILTINS:
            self._flag(node, f"rebinds the builtin name {name!r}")
        elif name in self.locked_names:
            self._flag(node, f"rebinds {name!r}, which a locked cell set up")
        if new_path is not None and not self.scopes:
            self.imports[name] = new_path

    # -- binding statements
    def visit_Assign(self, node):
        for target in node.targets:
            self._check_target(target, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        if node.value is not None or not isinstance(node.target, ast.Name):
            self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_Delete(self, node):
        for target in node.targets:
            self._check_target(target, node)

    def visit_NamedExpr(self, node):
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_For(self, node):
        self._check_target(node.target, node)
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_With(self, node):
        for item in node.items:
            if item.optional_vars is not None:
                self._check_target(item.optional_vars, node)
        self.generic_visit(node)

    visit_AsyncWith = visit_With

    def visit_Import(self, node):
        for alias in node.names:
            name = alias.asname or alias.name.split(".")[0]
            self._check_name(name, node, alias.name if alias.asname else alias.name.split(".")[0])

    def visit_ImportFrom(self, node):
        for alias in node.names:
            if alias.name == "*":
                self._flag(node, f"imports * from {node.module}")
            else:
                self._check_name(alias.asname or alias.name, node, f"{'.' * node.level}{node.module}.{alias.name}")

    def visit_FunctionDef(self, node):
        self._check_name(node.name, node)
        for decorator in node.decorator_list:
            self.visit(decorator)
        self.scopes.append({name for stmt in ast.walk(node) if isinstance(stmt, ast.Global) for name in stmt.names})
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self.scopes.append(set())
        self.generic_visit(node)
        self.scopes.pop()

    def visit_ClassDef(self, node):
        self._check_name(node.name, node)
        for decorator in node.decorator_list:
            self.visit(decorator)
        for base in node.bases:
            self.visit(base)
        self.scopes.append(set())  # names in a class body are the class's
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()

    def visit_Attribute(self, node):
        if node.attr in CODE_REWRITERS:
            self._flag(node, f"reaches IPython's {node.attr}, which can rewrite the test cells that run after it")
        self.generic_visit(node)

    # -- calls that change modules or run code no one can read
    def visit_Call(self, node):
        parts = _dotted(node.func)
        name = parts[-1] if parts else None
        if parts and len(parts) == 1 and name in DYNAMIC_CODE and name not in self.imports:
            self._flag(node, f"calls {name}(), which can change what the tests check with unseen")
        elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call) \
                and _dotted(node.func.value.func) in (["globals"], ["vars"]) \
                and node.func.attr in ("update", "__setitem__", "setdefault", "pop", "clear", "__delitem__"):
            self._flag(node, f"changes {_dotted(node.func.value.func)[0]}()")
        elif name in ("setattr", "delattr") and len(parts) == 1 and node.args and self._protected(self._resolve(node.args[0])):
            self._flag(node, f"calls {name}() on {self._resolve(node.args[0])}")
        elif parts and name in ("__setattr__", "__delattr__", "update", "__setitem__", "setdefault", "pop") \
                and len(parts) >= 2 and parts[-2] == "__dict__":
            self._flag(node, f"changes {'.'.join(parts[:-1])}")
        elif parts and name in ("__setattr__", "__delattr__") and self._protected(self._resolve(node.func.value)):
            self._flag(node, f"calls {name}() on {self._resolve(node.func.value)}")
        self.generic_visit(node)


def find_tampering(student_sources: dict[str, str], locked_sources: list[str]) -> list[str]:
    """What the student's cells do to the checking machinery, one line per finding ("cell 'x', line 3: ...").

    ``student_sources``: label -> code of every cell the student wrote; ``locked_sources``: the code of
    the locked cells. A cell that does not parse is skipped: it fails when it runs."""
    imports, locked_names = locked_bindings(locked_sources)
    findings = []
    for label, source in student_sources.items():
        try:
            tree = ast.parse(_student_code(source))
        except SyntaxError:
            continue
        finder = _Finder(imports, locked_names)
        finder.visit(tree)
        findings += [f"{label}, line {line}: {what}" for line, what in finder.found]
    return findings


def student_cells(nb) -> tuple[dict[str, str], list[str]]:
    """(label -> source of each code cell the student wrote, sources of the locked code cells)."""
    student, locked = {}, []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("locked"):
            locked.append(cell.source)
        else:
            student[f"cell '{meta['grade_id']}'" if meta.get("grade_id") else f"added cell {index}"] = cell.source
    return student, locked


class FlagTampering(NbGraderPreprocessor):
    """Zero every autograded test cell of a notebook whose student cells tamper with the checks."""

    def preprocess(self, nb, resources):
        findings = find_tampering(*student_cells(nb))
        nb.metadata["peftlab_grading"] = {"tampering": findings}
        if not findings:
            return nb, resources
        student = resources.get("nbgrader", {}).get("student", "?")
        self.log.warning("%s: answers change what the tests check with; every test cell scores 0:\n  %s",
                         student, "\n  ".join(findings))
        message = ("answers may not replace or shadow the functions the tests check with (torch, math, numpy, "
                   "builtins, peftlab, or names a locked cell set up): " + "; ".join(findings)
                   + ". Every test cell of this notebook scores 0; ask your instructor if this is a mistake.")
        for cell in nb.cells:
            if utils.is_grade(cell) and not utils.is_solution(cell) and cell.cell_type == "code":
                cell.outputs.append(NotebookNode(output_type="error", ename=FLAG_NAME, evalue=message,
                                                 traceback=[f"{FLAG_NAME}: {message}"]))
        return nb, resources


def _is_test(cell) -> bool:
    return utils.is_grade(cell) and not utils.is_solution(cell) and cell.cell_type == "code"


class ExecuteTestsOutOfHistory(Execute):
    """nbgrader's ``Execute`` (configured as ``Execute``: ``c.Execute.timeout`` applies), with the test cells
    kept out of IPython's input history."""

    def preprocess_cell(self, cell, resources, index):
        if not _is_test(cell):
            return super().preprocess_cell(cell, resources, index)
        self._check_assign_resources(resources)
        return self.execute_cell(cell, index, store_history=False), self.resources


class ScoreByPassing(NbGraderPreprocessor):
    """A test cell's points come from passing it: its ``execute_result`` outputs become ``display_data``."""

    def preprocess_cell(self, cell, resources, index):
        if _is_test(cell):
            published = sum(output.output_type == "execute_result" for output in cell.outputs)
            if published:
                cell.outputs = [NotebookNode(output_type="display_data", data=output.get("data", {}),
                                             metadata=output.get("metadata", {}))
                                if output.output_type == "execute_result" else output for output in cell.outputs]
                self.log.info("%s: %d result(s) shown in the test cell do not decide its grade",
                              cell.metadata["nbgrader"]["grade_id"], published)
        return cell, resources


class RestoreDeletedCells(OverwriteCells):
    """OverwriteCells that puts a deleted test cell back after the nearest earlier cell still present."""

    def add_missing_grade_cells(self, nb, resources):
        source_nb = self.gradebook.find_notebook(self.notebook_id, self.assignment_id)
        source_cells = list(source_nb.source_cells)
        order = [cell.name for cell in source_cells]
        solution_ids = {cell.name for cell in source_nb.solution_cells}
        for grade_cell in source_nb.grade_cells:
            present = {cell.metadata.get("nbgrader", {}).get("grade_id"): i for i, cell in enumerate(nb.cells)
                       if cell.metadata.get("nbgrader", {}).get("grade_id")}
            if grade_cell.name in present:
                continue
            self.log.warning("Missing grade cell %s encountered, adding it back to the notebook", grade_cell.name)
            where = order.index(grade_cell.name)
            restored = self.missing_cell_transform(source_cells[where], grade_cell.max_score,
                                                   is_solution=grade_cell.name in solution_ids)
            earlier = [present[name] for name in order[:where] if name in present]
            nb.cells.insert(earlier[-1] + 1 if earlier else 0, restored)
        return nb, resources
