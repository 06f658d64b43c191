"""Never publish a solution: every line of ``solutions/`` that is not in the student release, and the
search for any of them in a built site, download or archive (``peftlab.site`` refuses to finish on one).
"""
from __future__ import annotations

import json
import re
import zipfile
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _text(value) -> str:
    """A notebook field (a string or nbformat's list of lines) as one string."""
    return "".join(value) if isinstance(value, list) else str(value)


def _normalize(line: str) -> str:
    return re.sub(r"\s+", " ", line).strip()


def solution_lines(root: Path = ROOT, min_length: int = 10) -> set[str]:
    """Lines that only the solutions hold: between ``### BEGIN SOLUTION``/``### END SOLUTION`` and
    ``### BEGIN HIDDEN TESTS``/``### END HIDDEN TESTS``, and whole solution cells without markers
    (written answers), less lines that public files (lectures, releases, the package's source) also hold."""
    import nbformat

    secret: set[str] = set()
    for path in sorted((root / "solutions").rglob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            lines = cell.source.splitlines()
            meta = cell.metadata.get("nbgrader", {})
            inside = False
            marked = any("BEGIN SOLUTION" in ln or "BEGIN HIDDEN TESTS" in ln for ln in lines)
            for line in lines:
                if "BEGIN SOLUTION" in line or "BEGIN HIDDEN TESTS" in line:
                    inside = True
                elif "END SOLUTION" in line or "END HIDDEN TESTS" in line:
                    inside = False
                elif inside or (meta.get("solution") and not marked):
                    secret.add(_normalize(line))
    public: set[str] = set()
    public_cells: list[str] = []  # whole cells, whitespace collapsed: a page renders a cell's lines as one text
    for folder in ("lectures", "exercises"):
        for path in sorted((root / folder).rglob("*.ipynb")):
            for cell in nbformat.read(path, as_version=4).cells:
                public |= {_normalize(ln) for ln in cell.source.splitlines()}
                public_cells.append(_normalize(cell.source))
    for path in sorted((root / "peftlab").rglob("*.py")):  # the package is public: the course zip ships it
        public |= {_normalize(ln) for ln in path.read_text().splitlines()}
    # a secret inside public text (a hidden test's call of a visible helper, or a hidden line that a visible
    # cell writes across two lines) is public
    public_text = "\n".join(public) + "\n" + "\n".join(public_cells)
    return {s for s in secret - public if len(s) >= min_length and re.search(r"[A-Za-z]", s) and s not in public_text}


class _TextOf(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _TextOf()
    parser.feed(markup)
    return "".join(parser.parts)


def leaks_in_text(text: str, secrets: set[str]) -> list[str]:
    """Secrets that ``text`` shows: as a whole line, or (long ones) anywhere inside."""
    lines = {_normalize(line) for line in text.splitlines()}
    flat = _normalize(text)
    return sorted(s for s in secrets if s in lines or (len(s) >= 40 and s in flat))


def _texts(path: Path):
    """(name, text) of a site file; a zip gives each member (and flags solutions/ and tests/ members)."""
    suffix = path.suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                parts = name.split("/")
                if "solutions" in parts[:2] or "tests" in parts[:2]:
                    yield f"{path.name}:{name}.ipynb", "### BEGIN SOLUTION (a solutions/ or tests/ file)"
                if name.endswith((".py", ".ipynb", ".md", ".txt", ".json", ".html", ".toml", ".cfg")):
                    yield f"{path.name}:{name}", archive.read(name).decode("utf-8", "replace")
    elif suffix in (".html", ".htm"):
        yield path.name, html_text(path.read_text(errors="replace"))
    elif suffix == ".ipynb":
        nb = json.loads(path.read_text())
        yield path.name, "\n".join(_text(c.get("source", "")) for c in nb.get("cells", []))
    elif suffix in (".py", ".md", ".txt", ".json", ".csv", ".css", ".js", ".svg"):
        yield path.name, path.read_text(errors="replace")


def find_leaks(site_dir: Path, secrets: set[str]) -> list[tuple[str, str]]:
    """Every (file, solution line) that the built site shows, in pages, downloads and the zip."""
    found = []
    for path in sorted(site_dir.rglob("*")):
        if not path.is_file() or ".cache" in path.relative_to(site_dir).parts:
            continue
        for name, text in _texts(path):
            rel = path.relative_to(site_dir).as_posix() + name[len(path.name):]
            if rel.endswith((".html", ".ipynb")) and ("BEGIN SOLUTION" in text or "BEGIN HIDDEN TESTS" in text):
                found.append((rel, "an nbgrader solution or hidden-test marker"))
            found += [(rel, s) for s in leaks_in_text(text, secrets)]
    return found
