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
  dequantize_4bit", ...)`` makes those functions raise for the duration of a ``with`` block, wherever
  they are reachable: on their module, on every ``peftlab`` module that re-exports them, and under any
  name in the notebook's globals (``from peftlab.quant import dequantize_4bit as d`` included).

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


@contextlib.contextmanager
def switched_off(*dotted_names: str, namespace: dict | None = None):
    """Within the block, the named functions raise AssertionError wherever the notebook could reach them.

    Patched: the attribute on its owner; every loaded ``peftlab`` module attribute that is the same
    object (re-exports); every name in ``namespace`` (default: the notebook's ``__main__`` globals)
    bound to it. Everything is restored on exit, even if the block raises.
    """
    if namespace is None:
        namespace = vars(sys.modules["__main__"])
    patches: list[tuple[object, str, object]] = []  # (owner, attribute, original)
    for dotted in dotted_names:
        owner, attr, original = _resolve(dotted)

        def refuse(*args, _name=dotted, **kwargs):
            raise AssertionError(f"{_name} is switched off in this test: the part asks you to implement it yourself")

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
        for target, name, original in reversed(patches):
            if isinstance(target, dict):
                target[name] = original
            else:
                setattr(target, name, original)
