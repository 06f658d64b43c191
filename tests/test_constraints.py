"""The pinned grading environment: ``constraints.txt`` pins an exact version of every package that
``requirements.txt``, ``pyproject.toml`` and ``scripts/setup.sh`` install, each version satisfies its
requirement, set-up installs with it, and the environment running these tests is the pinned one.

Run: ``.venv/bin/python -m pytest tests/test_constraints.py -n 0``. CPU only, instant.
"""
from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert match, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        name = canonicalize_name(match.group(1))
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = Version(match.group(2))
    return found


def requirements() -> list[tuple[str, Requirement]]:
    """(where, requirement) for everything the set-up installs."""
    out = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            out.append(("requirements.txt", Requirement(line)))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out += [("pyproject.toml", Requirement(r)) for r in project["dependencies"]]
    out += [(f"pyproject.toml [{extra}]", Requirement(r)) for extra, reqs in project["optional-dependencies"].items()
            for r in reqs]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for command in re.findall(r"pip install ([^\n]*)", setup):
        words = [w for w in command.split() if not w.startswith("-") and w not in ("requirements.txt", "constraints.txt", ".")]
        out += [("scripts/setup.sh", Requirement(w)) for w in words]
    return out


def test_every_requirement_is_pinned_to_a_version_it_allows():
    pinned = pins()
    assert len(requirements()) > 20
    problems = []
    for where, requirement in requirements():
        name = canonicalize_name(requirement.name)
        if name == "peftlab":
            continue
        if name not in pinned:
            problems.append(f"{where}: {requirement} has no pin in constraints.txt")
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            problems.append(f"{where}: {requirement} does not allow the pinned {name}=={pinned[name]}")
    assert not problems, "\n".join(problems)


def test_setup_installs_with_the_constraints():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
    assert installs and "torch==2.13.0" in installs[0], "torch 2.13.0 (the CPU build) is installed first"
    for line in installs:
        if "-e ." not in line:  # the package itself, --no-deps
            assert "-c constraints.txt" in line, f"scripts/setup.sh installs without the constraints: {line.strip()}"
    assert "peftlab" not in pins() and not any("/" in str(v) for v in pins().values())


def test_this_environment_is_the_pinned_one():
    """The suite runs in what constraints.txt says (a local build tag, torch's +cpu, is ignored)."""
    differ = []
    for name, version in pins().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
        if installed.public != version.public:
            differ.append(f"{name}: installed {installed}, pinned {version}")
    if differ:
        pytest.fail("this environment differs from constraints.txt (run scripts/setup.sh, or re-create the "
                    "constraints after an upgrade the suite passes with):\n" + "\n".join(differ))
