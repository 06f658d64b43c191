"""The course website: every lecture executed, with its outputs and figures; every assignment as released.

``python -m peftlab site`` builds a static site into ``_site/`` (ignored by git), offline, from the
notebooks and registry packages alone (nbclient executes, nbconvert's markdown filter and pygments
render, latex2mathml turns the math into MathML that browsers draw without a script):

- ``index.html``: the syllabus (every lecture and assignment with its page, "open in Colab" and
  download links), the comparison of every method (``python -m peftlab compare``: figure and table);
- ``lectures/<name>.html``: each lecture executed top to bottom, outputs and figures included;
- ``assignments/<a>.html``: the student release from ``exercises/``, not executed. Solutions and
  hidden tests never enter the site: the build refuses to finish if any line of them appears in a
  page, a download or the course zip (``find_leaks``);
- ``guide.html``, ``frontier.html``, ``real_model.html``, ``package.html``: the pages of ``docs/``
  (``DOC_PAGES``: the syllabus and instructor guide, the frontier, real models, the package map), with
  the figures they show;
- ``downloads/``: the notebooks as committed, and ``peftlab-course.zip`` (the package, lectures and
  released assignments), which the notebooks' Colab set-up cell installs from (see ``peftlab.colab``).

Execution is cached in ``_site/.cache``: a notebook is executed again only when its code or markdown
changed or the mode differs, and the comparison only when the mode differs. The mode (quick:
``PEFTLAB_QUICK=1``; full: the full-size runs) is recorded on every page and in ``build.json``. Changes
to the ``peftlab`` package do not invalidate the cache: rebuild with ``--force`` after changing it.
``--readme-images docs`` also writes the learning-vs-forgetting figure and a screenshot of a lecture page
(headless Chromium) for the README.
"""
from __future__ import annotations

import csv
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .site_leaks import ROOT, find_leaks, html_text, leaks_in_text, solution_lines  # noqa: F401  (used by tests, release)
from .site_chromium import CHROMIUM_FLAGS, chromium_binary, screenshot  # noqa: F401
from .site_render import DOC_PAGES, _rewrite_links, doc_page, page, render_cells, render_markdown, render_output  # noqa: F401

SITE_DIR = ROOT / "_site"
ASSETS = Path(__file__).resolve().parent / "site_assets"
KERNEL = "python3"
CELL_TIMEOUT_S = 900
COURSE_ZIP = "peftlab-course.zip"  # the name the Colab set-up cell looks for (peftlab.colab.DEFAULT_SOURCE)
COURSE_ZIP_PATHS = ("pyproject.toml", "README.md", "requirements.txt", "nbgrader_config.py", "peftlab",
                    "lectures", "exercises")  # never solutions/ or tests/
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # figures as image/png outputs, even where MPLBACKEND=Agg


# --------------------------------------------------------------------------------------- the notebooks

@dataclass
class Notebook:
    kind: str  # "lecture" or "assignment"
    path: Path  # the committed notebook
    href: str  # its page, relative to the site root
    download: str  # its downloadable copy, relative to the site root
    title: str = ""
    number: str = ""  # "03" for lectures/03_lora.ipynb and exercises/a03/a03.ipynb
    points: float = 0.0
    record: dict = field(default_factory=dict)  # how the page was executed (lectures)


def _title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if match:
                title = re.sub(r"[*_`]", "", match.group(1))
                return re.sub(r"\s*\(\d+(?:\.\d+)? points?\)\s*$", "", title).strip()  # points are shown apart
    return ""


def course_notebooks(root: Path = ROOT) -> list[Notebook]:
    """Lectures (``lectures/*.ipynb``) and released assignments (``exercises/*/*.ipynb``), found by glob."""
    import nbformat

    found = []
    for path in sorted((root / "lectures").glob("*.ipynb")):
        found.append(Notebook("lecture", path, f"lectures/{path.stem}.html", f"downloads/lectures/{path.name}",
                              number=path.stem.split("_")[0]))
    for path in sorted((root / "exercises").glob("*/*.ipynb")):
        folder = path.parent.name
        stem = folder if path.stem == folder else f"{folder}-{path.stem}"
        found.append(Notebook("assignment", path, f"assignments/{stem}.html",
                              f"downloads/exercises/{folder}/{path.name}", number=folder.lstrip("a")))
    for item in found:
        nb = nbformat.read(item.path, as_version=4)
        item.title = _title(nb) or item.path.stem
        if item.kind == "assignment":
            item.points = sum(float(p) for c in nb.cells if c.cell_type == "markdown"
                              for p in re.findall(r"^##\s.*\((\d+(?:\.\d+)?) points?\)", c.source, re.M))
    return found


# --------------------------------------------------------------------------------- execution, cached

def cache_key(nb, mode: str) -> str:
    """Hash of what the notebook says (cell types and sources) and the mode; outputs and ids don't count."""
    payload = json.dumps({"mode": mode, "kernel": KERNEL, "cells": [(c.cell_type, c.source) for c in nb.cells]})
    return hashlib.sha256(payload.encode()).hexdigest()


@contextmanager
def _mode_environment(mode: str):
    """The kernel inherits this process's environment: set the mode and the inline figure backend."""
    saved = dict(os.environ)
    if mode == "quick":
        os.environ["PEFTLAB_QUICK"] = "1"
    else:
        os.environ.pop("PEFTLAB_QUICK", None)
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def execute(path: Path, mode: str, cache_dir: Path, force: bool = False, log=print):
    """The executed notebook and its record, from the cache when the notebook and mode are unchanged."""
    import nbformat
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    key = cache_key(nb, mode)
    stem = f"{path.parent.name}--{path.stem}.{mode}"
    cached_nb, cached_record = cache_dir / f"{stem}.{key[:16]}.ipynb", cache_dir / f"{stem}.{key[:16]}.json"
    if not force and cached_nb.exists() and cached_record.exists():
        record = json.loads(cached_record.read_text())
        log(f"  {path.name}: cached ({mode} mode, executed {record['executed_at']} in {record['seconds']:.0f} s)")
        return nbformat.read(cached_nb, as_version=4), dict(record, cached=True)
    log(f"  {path.name}: executing in {mode} mode ...")
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="peftlab-site-kernel-") as tmp, _mode_environment(mode):
        # IPC sockets, not TCP ports: tests may start kernels in another process at the same time
        km = KernelManager(kernel_name=KERNEL, transport="ipc", ip=str(Path(tmp) / "kernel"))
        client = NotebookClient(nb, km=km, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        finally:  # nbclient leaves a kernel it was handed running
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    seconds = time.time() - start
    from . import __version__

    record = {"notebook": path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name,
              "mode": mode, "key": key, "seconds": round(seconds, 1), "peftlab": __version__,
              "executed_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    for old in cache_dir.glob(f"{stem}.*"):  # one cached run per notebook and mode
        old.unlink()
    nbformat.write(nb, cached_nb)
    cached_record.write_text(json.dumps(record, indent=1) + "\n")
    log(f"  {path.name}: executed in {seconds:.0f} s")
    return nb, dict(record, cached=False)


def _colab_href(nb: Notebook, github: str | None, up: str) -> str:
    if github:
        repo, _, branch = github.partition("@")
        return f"https://colab.research.google.com/github/{repo}/blob/{branch or 'main'}/{nb.path.relative_to(ROOT).as_posix()}"
    return f"{up}guide.html#On-Colab"


def _actions(nb: Notebook, github: str | None, up: str) -> str:
    return (f'<p class="actions"><a class="colab" href="{_colab_href(nb, github, up)}">Open in Colab</a>'
            f'<a class="download" href="{up}{nb.download}" download>Download the notebook</a>'
            f'<a class="download" href="{up}downloads/{COURSE_ZIP}" download>Download the course zip</a></p>')


def _mode_words(mode: str) -> str:
    return ("quick mode (<code>PEFTLAB_QUICK=1</code>: shortened runs, as in the tests)" if mode == "quick"
            else "full mode (the full-size runs)")


def notebook_page(nb_item: Notebook, nb, mode: str, github: str | None, link_map: dict, neighbours) -> str:
    up = "../" * nb_item.href.count("/")
    if nb_item.kind == "lecture":
        rec = nb_item.record
        info = (f'Executed top to bottom in {_mode_words(rec["mode"])} on {rec["executed_at"]}, '
                f'{rec["seconds"]:.0f} s, peftlab {rec["peftlab"]}. Run it yourself: download it, or open it in Colab.')
    else:
        info = (f"The assignment as students receive it (the nbgrader release in <code>exercises/</code>, "
                f"{nb_item.points:g} points), not executed: answer cells are to be filled in. Solutions and hidden "
                "tests are not part of it.")
    prev_item, next_item = neighbours
    pager = '<nav class="pager">' + (
        f'<a href="{up}{prev_item.href}">&larr; {html.escape(prev_item.title)}</a>' if prev_item else "<span></span>") + (
        f'<a href="{up}{next_item.href}">{html.escape(next_item.title)} &rarr;</a>' if next_item else "<span></span>") + "</nav>"
    body = (f'{_actions(nb_item, github, up)}<p class="page-info" data-mode="{mode}">{info}</p>\n'
            f'{_rewrite_links(render_cells(nb), nb_item.href, link_map)}\n{pager}')
    return page(nb_item.title, body, nb_item.href, mode, nb_item.kind)


# --------------------------------------------------------------------------------------- comparison

def run_compare(mode: str, cache_dir: Path, force: bool = False, log=print) -> Path:
    """``python -m peftlab compare`` in ``mode``, cached by mode (``force`` runs it again); returns its output folder."""
    out = cache_dir / f"compare.{mode}"
    if not force and (out / "done").exists():
        log(f"  compare: cached ({mode} mode)")
        return out
    if out.exists():
        shutil.rmtree(out)
    log(f"  compare: running every method in {mode} mode ...")
    start = time.time()
    env = dict(os.environ, MPLBACKEND="Agg")
    if mode == "quick":
        env["PEFTLAB_QUICK"] = "1"
    else:
        env.pop("PEFTLAB_QUICK", None)
    subprocess.run([sys.executable, "-m", "peftlab", "compare", "--out", str(out), "--no-progress"], env=env,
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    (out / "done").write_text(json.dumps({"mode": mode, "seconds": round(time.time() - start, 1)}) + "\n")
    log(f"  compare: done in {time.time() - start:.0f} s")
    return out


def _format_cell(value: str) -> tuple[str, bool]:
    try:
        number = float(value)
    except ValueError:
        return html.escape(value), False
    if number.is_integer() and abs(number) >= 1:
        return f"{int(number):,}", True
    return f"{number:.3g}", True


def comparison_section(out: Path, mode: str) -> tuple[str, list[str]]:
    """The comparison's figures and table as HTML, and the figure files to copy next to index.html."""
    meta = {}
    json_files = sorted(out.glob("*.json"))
    if json_files:
        meta = json.loads(json_files[0].read_text()).get("meta", {})
    figures = sorted(p.name for p in out.glob("*.png"))
    parts = ['<h2 id="comparison">Learning vs forgetting: every method compared</h2>',
             f"<p>Every registered method fine-tunes the same tiny base on the same target task, measured in "
             f"{_mode_words(mode)} by <code>{html.escape(meta.get('command', 'python -m peftlab compare'))}</code>"
             f"{' with PEFTLAB_QUICK=1' if mode == 'quick' else ''}. Learning is the target metric's gain, forgetting the "
             "source metrics' loss; the lectures explain every column.</p>"]
    for name in figures:
        parts.append(f'<figure><img src="compare/{name}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}'
                     "</figcaption></figure>")
    for table in sorted(out.glob("*.csv")):
        with open(table, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        keep = [i for i, name in enumerate(header) if not name.startswith("mem_")]  # the probe's columns: lecture 02
        head = "".join(f"<th>{html.escape(header[i])}</th>" for i in keep)
        lines = []
        for row in body:
            cells = []
            for i in keep:
                text, numeric = _format_cell(row[i] if i < len(row) else "")
                cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
            lines.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f'<div class="output"><table><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody>'
                     f"</table></div><p><small>{html.escape(table.name)}</small></p>")
    return "\n".join(parts), figures


# ------------------------------------------------------------------------------------ guide, landing

def guide_markdown(root: Path = ROOT) -> str:
    """The syllabus and instructor guide, ``docs/guide.md``."""
    path = root / "docs" / "guide.md"
    return path.read_text() if path.is_file() else ""


def _guide_subsection(markdown: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    return match.group(0).replace("## ", "### ", 1) if match else ""


def landing_page(notebooks: list[Notebook], mode: str, github: str | None, compare_html: str, guide: str,
                 link_map: dict) -> str:
    lectures = [n for n in notebooks if n.kind == "lecture"]
    assignments = {n.number: n for n in notebooks if n.kind == "assignment"}
    rows = []
    for lecture in lectures:
        a = assignments.pop(lecture.number, None)
        rec = lecture.record
        assignment_cell = (f'<a href="{a.href}">{html.escape(a.title)}</a> ({a.points:g} points)<br>'
                           f'<small><a href="{_colab_href(a, github, "")}">Colab</a> · '
                           f'<a href="{a.download}" download>download</a></small>') if a else "-"
        rows.append(f'<tr><td>{lecture.number}</td><td><a href="{lecture.href}">{html.escape(lecture.title)}</a><br>'
                    f'<small><a href="{_colab_href(lecture, github, "")}">Colab</a> · '
                    f'<a href="{lecture.download}" download>download</a> · ran {rec["seconds"]:.0f} s in {rec["mode"]} mode'
                    f"</small></td><td>{assignment_cell}</td></tr>")
    for a in assignments.values():  # an assignment without a lecture of its number
        rows.append(f'<tr><td>{a.number}</td><td>-</td><td><a href="{a.href}">{html.escape(a.title)}</a> '
                    f"({a.points:g} points)</td></tr>")
    schedule = _guide_subsection(guide, "Schedule")
    doc_links = "".join(f'<a href="{href}">{html.escape(title)}</a>\n' for _, href, title in DOC_PAGES[1:])
    body = f"""<h1>Full fine-tuning vs parameter-efficient fine-tuning</h1>
<p>A course in Jupyter notebooks: every method is built from scratch, checked against a small readable
PyTorch package (<code>peftlab</code>), and measured: how much the model learns, how much it forgets, and what it
costs in parameters, bytes and seconds. Everything runs offline on a laptop CPU, on a tiny world the package
makes itself. These pages show every lecture executed, in {_mode_words(mode)}; the assignments are shown as
students receive them.</p>
<p class="actions"><a href="guide.html">Syllabus and instructor guide</a>
{doc_links}<a href="downloads/{COURSE_ZIP}" download>Download the course zip</a></p>
<h2 id="syllabus">Syllabus</h2>
<table><thead><tr><th>#</th><th>lecture</th><th>assignment (auto-graded)</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p>On Colab: download the notebook and the course zip, upload the notebook (File &gt; Upload notebook) and the
zip (Files panel), and run the first cell (<a href="guide.html#On-Colab">details</a>).</p>
{_rewrite_links(render_markdown(schedule), "index.html", link_map) if schedule else ""}
{compare_html}
"""
    return page("Course", body, "index.html", mode, "index")


# ------------------------------------------------------------------------------------------ downloads

def course_files(root: Path = ROOT) -> list[Path]:
    """What the course zip holds: git's tracked files under COURSE_ZIP_PATHS (a plain walk outside git)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", *COURSE_ZIP_PATHS], cwd=root, check=True,
                                capture_output=True).stdout.decode().split("\0")
        files = [root / name for name in listed if name and (root / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:
        for name in COURSE_ZIP_PATHS:
            path = root / name
            files += [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()
                                                    and "__pycache__" not in p.parts and ".egg-info" not in str(p)
                                                    and ".ipynb_checkpoints" not in p.parts]
    return sorted(files)


def make_course_zip(dest: Path, root: Path = ROOT) -> Path:
    """``peftlab-course.zip``: one top folder with the package, lectures and released assignments; pip installs it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in course_files(root):
            info = zipfile.ZipInfo(f"peftlab-course/{path.relative_to(root).as_posix()}", (2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return dest


# ---------------------------------------------------------------------------------------------- build

def _github_default() -> str | None:
    try:
        url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=ROOT, capture_output=True, text=True).stdout
    except OSError:
        return None
    match = re.search(r"github\.com[:/]([\w.-]+/[\w.-]+?)(?:\.git)?\s*$", url)
    return match.group(1) if match else None


def build_site(out_dir: Path = SITE_DIR, mode: str | None = None, force: bool = False, github: str | None = None,
               readme_images: Path | None = None, cache_dir: Path | None = None, log=print) -> dict:
    """Build the site into ``out_dir``; returns the build record (also written as ``build.json``)."""
    from .utils import is_quick

    mode = mode or ("quick" if is_quick() else "full")
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', not {mode!r}")
    github = github or _github_default()
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / ".cache"
    start = time.time()
    log(f"building the course site in {mode} mode into {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():  # a fresh site every time; the execution cache stays
        if old.name != ".cache" and old.resolve() != cache_dir.resolve():
            shutil.rmtree(old) if old.is_dir() else old.unlink()

    notebooks = course_notebooks()
    link_map = {}
    for item in notebooks:
        link_map[item.path.relative_to(ROOT).as_posix()] = item.href
        link_map.setdefault(item.path.name, item.href)
    link_map["README.md"] = "index.html"
    for name, href, _ in DOC_PAGES:
        link_map[f"docs/{name}"] = link_map[name] = href
    executed = {}
    for item in notebooks:
        if item.kind == "lecture":
            executed[item.path], item.record = execute(item.path, mode, cache_dir, force, log)
    compare_out = run_compare(mode, cache_dir, force, log)

    import nbformat

    lectures = [n for n in notebooks if n.kind == "lecture"]
    assignments = [n for n in notebooks if n.kind == "assignment"]
    for group in (lectures, assignments):
        for i, item in enumerate(group):
            nb = executed.get(item.path) or nbformat.read(item.path, as_version=4)
            neighbours = (group[i - 1] if i else None, group[i + 1] if i + 1 < len(group) else None)
            target = out_dir / item.href
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(notebook_page(item, nb, mode, github, link_map, neighbours))
            download = out_dir / item.download
            download.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.path, download)

    for name, href, title in DOC_PAGES:
        (out_dir / href).write_text(doc_page(ROOT / "docs" / name, href, title, mode, link_map, out_dir))
    guide = guide_markdown()
    compare_html, figures = comparison_section(compare_out, mode)
    (out_dir / "compare").mkdir(exist_ok=True)
    for name in figures:
        shutil.copyfile(compare_out / name, out_dir / "compare" / name)
    (out_dir / "index.html").write_text(landing_page(notebooks, mode, github, compare_html, guide, link_map))

    (out_dir / "assets").mkdir(exist_ok=True)
    shutil.copyfile(ASSETS / "style.css", out_dir / "assets" / "style.css")
    from pygments.formatters import HtmlFormatter

    (out_dir / "assets" / "pygments.css").write_text(HtmlFormatter().get_style_defs(".highlight"))
    make_course_zip(out_dir / "downloads" / COURSE_ZIP)
    (out_dir / ".nojekyll").write_text("")

    leaks = find_leaks(out_dir, solution_lines())
    if leaks:
        shown = "\n".join(f"  {where}: {line}" for where, line in leaks[:10])
        raise RuntimeError(f"the site would publish solution or hidden-test text ({len(leaks)} finds):\n{shown}")
    record = {"mode": mode, "seconds": round(time.time() - start, 1), "github": github,
              "built_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "lectures": {n.path.name: {k: n.record[k] for k in ("seconds", "executed_at", "cached", "mode")}
                           for n in lectures},
              "assignments": [n.path.relative_to(ROOT).as_posix() for n in assignments]}
    (out_dir / "build.json").write_text(json.dumps(record, indent=1) + "\n")
    if readme_images:
        readme_images = Path(readme_images)
        readme_images.mkdir(parents=True, exist_ok=True)
        if "learning_vs_forgetting.png" in figures:
            shutil.copyfile(out_dir / "compare" / "learning_vs_forgetting.png", readme_images / "learning_vs_forgetting.png")
        shown_lecture = next((n for n in lectures if "lora" in n.path.stem), lectures[0])
        screenshot((out_dir / shown_lecture.href).resolve().as_uri(), readme_images / "lecture_page.png")
        log(f"  README images: {readme_images}/learning_vs_forgetting.png, {readme_images}/lecture_page.png")
    executed_now = sum(not n.record["cached"] for n in lectures)
    log(f"built {len(lectures)} lectures ({executed_now} executed, {len(lectures) - executed_now} cached) and "
        f"{len(assignments)} assignments in {record['seconds']:.0f} s: open {out_dir / 'index.html'}")
    return record
