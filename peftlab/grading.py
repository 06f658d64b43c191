"""Helpers for the graded assignments' locked cells: fair grading that cannot be borrowed or faked.

Three problems a graded notebook meets, and what this module does about each:

- **Warnings zero a cell.** nbgrader 0.9.6 scores a test cell 0 if anything reaches stderr, so a
  correct answer that triggers a library warning would lose its points. ``start()`` sends warnings,
  log records and ``sys.stderr`` to stdout, where they are shown but do not count.
- **Faked checks.** An answer cell can run ``torch.testing.assert_close = lambda *a, **k: None``.
  ``start()`` captures the checking functions before any answer cell runs, and returns them as an
  immutable namespace (``REF.assert_close``, ``REF.isclose``, ...): hidden tests compare through it.
  ``check_untouched()`` fails a test cell if a student replaced any of those functions on their
  module (the autograder also reads answer cells for such assignments).
- **Borrowed answers.** The package implements most graded functions. ``switched_off("peftlab.quant.
  dequantize_4bit", ...)`` makes those functions raise for the duration of a ``with`` block, however
  an answer reaches them: the function objects themselves get a refusing code object (so a reference
  bound earlier, as a default argument, in a closure or under an alias, refuses too), and the names
  are rebound on their module, on every ``peftlab`` module that re-exports them, and in the notebook's
  globals (what has no code object of its own to swap, such as a builtin, is caught by the names only).

Usage, in an assignment::

    # locked set-up cell
    from peftlab import grading
    REF = grading.start()

    # a hidden test
    with grading.switched_off("peftlab.quant.dequantize_4bit", "peftlab.kernels.dequantize_nf4"):
        REF.assert_close(dequantize_weight(q), expected)
"""
from __future__ import annotations

import builtins
import contextlib
import importlib
import logging
import math
import sys
import types
import warnings

import torch

__all__ = ["REFERENCES", "References", "check_untouched", "start", "switched_off"]


class References(types.SimpleNamespace):
    """The checking functions as they were before any answer cell ran (attributes cannot be reassigned)."""

    def __setattr__(self, name, value):
        raise AttributeError("the grading references are read-only")

    def __delattr__(self, name):
        raise AttributeError("the grading references are read-only")


# (attribute name in References, module, attribute on the module): the functions tests compare with
_CHECKS = [
    ("assert_close", torch.testing, "assert_close"),
    ("isclose", math, "isclose"),
    ("allclose", torch, "allclose"),
    ("equal", torch, "equal"),
    ("isfinite", torch, "isfinite"),
    ("abs", builtins, "abs"),
    ("all", builtins, "all"),
    ("any", builtins, "any"),
    ("len", builtins, "len"),
    ("isinstance", builtins, "isinstance"),
    ("sum", builtins, "sum"),
    ("max", builtins, "max"),
    ("min", builtins, "min"),
    ("sorted", builtins, "sorted"),
    ("round", builtins, "round"),
]
REFERENCES = References(**{name: getattr(module, attr) for name, module, attr in _CHECKS})


def _warning_to_stdout(message, category, filename, lineno, file=None, line=None):
    print(warnings.formatwarning(message, category, filename, lineno, line).rstrip(), file=sys.stdout)


def start() -> References:
    """Route warnings, log records and whatever is written to ``sys.stderr`` to stdout, and return the
    captured checking functions.

    Libraries keep their own log handlers (transformers has one on its ``transformers`` logger), made
    with the ``sys.stderr`` of their import: every handler that writes to it writes to stdout from now on.
    Error tracebacks are not written to ``sys.stderr`` by the kernel, so a failing test still fails."""
    stderr = sys.stderr
    warnings.showwarning = _warning_to_stdout
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (stderr, sys.__stderr__):
            root.removeHandler(handler)
    if not any(getattr(h, "peftlab_grading", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.peftlab_grading = True
        root.addHandler(handler)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (stderr, sys.__stderr__):
                handler.setStream(sys.stdout)
    logging.lastResort = logging.StreamHandler(sys.stdout)
    sys.stderr = sys.stdout
    return REFERENCES


def check_untouched() -> None:
    """Raise AssertionError if an answer replaced a checking function on its module (e.g. assert_close)."""
    replaced = [f"{module.__name__}.{attr}" for name, module, attr in _CHECKS
                if getattr(module, attr, None) is not getattr(REFERENCES, name)]
    if replaced:
        raise AssertionError(f"an answer cell replaced {', '.join(replaced)}; answers must not change the "
                             "functions the tests check with")


def _resolve(dotted: str):
    """``"peftlab.quant.dequantize_4bit"`` -> (owner object, attribute name, the object itself).

    The owner is the longest importable module prefix, then attributes (``peftlab.quant.Quantized4bit.scales``)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:-1]:
            owner = getattr(owner, attr)
        if not hasattr(owner, parts[-1]):
            raise AttributeError(f"{dotted} does not exist: {'.'.join(parts[:-1])} has no attribute {parts[-1]!r}")
        return owner, parts[-1], getattr(owner, parts[-1])
    raise ImportError(f"{dotted}: no importable module at its start (expected e.g. 'peftlab.quant.quantize_4bit')")


def _refusing_code(code: types.CodeType, message: str) -> types.CodeType:
    """A code object that raises ``AssertionError(message)``, with as many free variables as ``code``.

    CPython lets a function's ``__code__`` be replaced only by code with the same number of free
    variables (its closure cells stay): the refusing function is built inside a factory that binds the
    same names, and mentions them once so that they become its free variables."""
    free = code.co_freevars
    lines = ["def _factory():"] + [f"    {name} = None" for name in free] + ["    def _refuse(*args, **kwargs):"]
    if free:
        lines.append(f"        ({', '.join(free)},)")
    lines += [f"        raise AssertionError({message!r})", "    return _refuse"]
    namespace: dict = {}
    exec("\n".join(lines), namespace)  # noqa: S102 (source built here from identifiers and a repr)
    refusing = namespace["_factory"]().__code__
    assert len(refusing.co_freevars) == len(free)
    return refusing.replace(co_name=code.co_name, co_qualname=code.co_qualname, co_filename=code.co_filename)


def _functions_of(obj) -> list[types.FunctionType]:
    """The Python functions whose code runs when ``obj`` is used: a function itself (and what it wraps,
    ``functools.wraps``), a bound method's function, a property's accessors, and a class's own methods."""
    found: list[types.FunctionType] = []

    def add(candidate):
        while candidate is not None:
            if isinstance(candidate, types.MethodType):
                candidate = candidate.__func__
            if isinstance(candidate, (staticmethod, classmethod)):
                candidate = candidate.__func__
            if not isinstance(candidate, types.FunctionType) or any(candidate is f for f in found):
                return
            found.append(candidate)
            candidate = getattr(candidate, "__wrapped__", None)

    if isinstance(obj, property):
        for accessor in (obj.fget, obj.fset, obj.fdel):
            add(accessor)
    elif isinstance(obj, type):
        for value in vars(obj).values():
            if isinstance(value, property):
                found += [f for f in _functions_of(value) if not any(f is g for g in found)]
            else:
                add(value)
    else:
        add(obj)
    return found


@contextlib.contextmanager
def switched_off(*dotted_names: str, namespace: dict | None = None):
    """Within the block, the named functions raise AssertionError however the notebook reaches them.

    Swapped: the code object of each named function (of a class: of its own methods and properties), so
    every reference to it refuses, wherever it was bound (a default argument, a closure, a saved alias).
    Patched: the attribute on its owner; every loaded ``peftlab`` module attribute that is the same
    object (re-exports); every name in ``namespace`` (default: the notebook's ``__main__`` globals)
    bound to it. Everything is restored on exit, even if the block raises.
    """
    if namespace is None:
        namespace = vars(sys.modules["__main__"])
    patches: list[tuple[object, str, object]] = []  # (owner, attribute, original)
    codes: list[tuple[types.FunctionType, types.CodeType]] = []  # (function, its original code)
    for dotted in dotted_names:
        owner, attr, original = _resolve(dotted)
        message = f"{dotted} is switched off in this test: the part asks you to implement it yourself"

        def refuse(*args, _message=message, **kwargs):
            raise AssertionError(_message)

        for function in _functions_of(original):
            if not any(function is done for done, _ in codes):
                codes.append((function, function.__code__))
                function.__code__ = _refusing_code(function.__code__, message)
        if isinstance(original, property):  # e.g. peftlab.quant.Quantized4bit.scales
            refuse = property(refuse)

        targets = [(owner, attr)]
        for module_name, module in list(sys.modules.items()):
            if module_name.split(".")[0] == "peftlab" and module is not None:
                targets += [(module, name) for name, value in list(vars(module).items())
                            if value is original and (module, name) != (owner, attr)]
        targets += [(namespace, name) for name, value in list(namespace.items()) if value is original]
        for target, name in targets:
            if isinstance(target, dict):
                patches.append((target, name, target[name]))
                target[name] = refuse
            else:
                patches.append((target, name, getattr(target, name)))
                setattr(target, name, refuse)
    try:
        yield
    finally:
        for function, code in reversed(codes):
            function.__code__ = code
        for target, name, original in reversed(patches):
            if isinstance(target, dict):
                target[name] = original
            else:
                setattr(target, name, original)
