"""Rendering for the course website (``peftlab.site``): markdown with MathML, code, outputs and widgets, pages.

nbconvert's markdown filter and pygments render; latex2mathml turns the math into MathML that browsers
draw without a script.
"""
from __future__ import annotations

import base64
import html
import re
import shutil

from .site_leaks import _text, html_text


_MATH = re.compile(r"(```.*?```|`[^`\n]+`|\$\$.+?\$\$|(?<![\\$\w])\$(?![\s$])[^$\n]+?(?<![\s\\])\$)", re.S)


def _mathml(tex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    try:
        return convert(tex.strip(), display="block" if display else "inline")
    except Exception:  # noqa: BLE001 - a formula latex2mathml cannot read is shown as its TeX
        return f"<code>{html.escape(tex)}</code>"


def render_markdown(text: str) -> str:
    """Markdown to HTML, with ``$...$`` and ``$$...$$`` as MathML (no script, no network)."""
    from nbconvert.filters import markdown2html_mistune

    formulas: list[str] = []
    sources: list[str] = []

    def stash(match):
        found = match.group(0)
        if found.startswith("`"):
            return found
        display = found.startswith("$$")
        sources.append(found[2:-2] if display else found[1:-1])
        formulas.append(_mathml(sources[-1], display))
        return f"PEFTLABMATH{len(formulas) - 1}X"

    rendered = markdown2html_mistune(_MATH.sub(stash, text))

    def plain(attribute):  # a heading's id and anchor link get the formula's letters, not its MathML
        value = re.sub(r"PEFTLABMATH(\d+)X", lambda m: re.sub(r"[^A-Za-z0-9]+", "", sources[int(m.group(1))]) or "math",
                       attribute.group(2))
        return f'{attribute.group(1)}="{value}"'

    rendered = re.sub(r'(id|href)="([^"]*)"', plain, rendered)
    return re.sub(r"PEFTLABMATH(\d+)X", lambda m: formulas[int(m.group(1))], rendered)


def _highlight(code: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return highlight(code, PythonLexer(), HtmlFormatter(cssclass="highlight"))


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def _widget_text(model_id: str, state: dict) -> str | None:
    """A progress bar's last state as text (tqdm in a notebook is a widget: its text/plain is the first state)."""
    model = state.get(model_id, {})
    if model.get("model_name") != "HBoxModel":
        return None
    parts = []
    for child in model.get("state", {}).get("children", []):
        child_model = state.get(str(child).replace("IPY_MODEL_", ""), {})
        values = child_model.get("state", {})
        if child_model.get("model_name") == "HTMLModel":
            parts.append(re.sub(r"[\xa0\u2007]", " ", html_text(str(values.get("value", "")))))
        elif child_model.get("model_name") in ("FloatProgressModel", "IntProgressModel"):
            done = values.get("value", 0) / (values.get("max") or 1)
            parts.append("|" + "█" * round(10 * done) + " " * (10 - round(10 * done)) + "|")
        else:
            return None
    return "".join(parts) if parts else None


def render_output(output, widget_state: dict | None = None) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        text = _strip_ansi(_text(output.get("text", "")))
        text = re.sub(r"[^\n]*\r(?!\n)", "", text)  # progress bars redraw a line with \r: keep the last state
        return f'<pre class="{html.escape(output.get("name", "stdout"))}">{html.escape(text)}</pre>'
    if kind == "error":
        trace = _strip_ansi("\n".join(output.get("traceback", [])))
        return f'<pre class="error">{html.escape(trace)}</pre>'
    data = output.get("data", {})
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            payload = _text(data[mime]).replace("\n", "")
            return f'<img src="data:{mime};base64,{payload}" alt="figure">'
    if "image/svg+xml" in data:
        svg = base64.b64encode(_text(data["image/svg+xml"]).encode()).decode()
        return f'<img src="data:image/svg+xml;base64,{svg}" alt="figure">'
    if "text/html" in data:
        return f'<div class="html">{_text(data["text/html"])}</div>'
    if "text/markdown" in data:
        return render_markdown(_text(data["text/markdown"]))
    if "application/vnd.jupyter.widget-view+json" in data:
        model_id = data["application/vnd.jupyter.widget-view+json"].get("model_id", "")
        text = _widget_text(model_id, widget_state or {})
        if text is not None:
            return f'<pre class="progress">{html.escape(text)}</pre>'
        return '<p class="widget-note">(an interactive widget: run the notebook to use it)</p>'
    if "text/plain" in data:
        return f'<pre>{html.escape(_strip_ansi(_text(data["text/plain"])))}</pre>'
    return ""


def render_cells(nb) -> str:
    widget_state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(f'<div class="cell markdown">{render_markdown(cell.source)}</div>')
        elif cell.cell_type == "code":
            outputs = "".join(render_output(o, widget_state) for o in cell.get("outputs", []))
            outputs = f'<div class="output">{outputs}</div>' if outputs else ""
            parts.append(f'<div class="cell code"><div class="input">{_highlight(cell.source)}</div>{outputs}</div>')
    return "\n".join(parts)


def _rewrite_links(body: str, page_href: str, link_map: dict[str, str]) -> str:
    """Links to notebooks become links to their pages; other relative links to the repository become text."""
    depth = page_href.count("/")
    up = "../" * depth

    def fix(match):
        href, label = match.group(1), match.group(2)
        if re.match(r"^(https?:|mailto:|#)", href):
            return match.group(0)
        target = href.split("#")[0]
        anchor = href[len(target):]
        name = target.split("/")[-1]
        if target in link_map:
            return f'<a href="{up}{link_map[target]}{anchor}">{label}</a>'
        if name in link_map:
            return f'<a href="{up}{link_map[name]}{anchor}">{label}</a>'
        return label

    return re.sub(r'<a href="([^"]*)"[^>]*>(.*?)</a>', fix, body, flags=re.S)


def page(title: str, body: str, href: str, mode: str, kind: str, extra_head: str = "") -> str:
    up = "../" * href.count("/")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="peftlab-mode" content="{mode}">
<meta name="peftlab-kind" content="{kind}">
<title>{html.escape(title)} · peftlab</title>
<link rel="stylesheet" href="{up}assets/style.css">
<link rel="stylesheet" href="{up}assets/pygments.css">{extra_head}
</head>
<body>
<header class="site"><a class="home" href="{up}index.html">peftlab: full fine-tuning vs parameter-efficient fine-tuning</a>
<nav><a href="{up}index.html#syllabus">Syllabus</a><a href="{up}guide.html">Instructor guide</a>
<a href="{up}index.html#comparison">Comparison</a><a href="{up}frontier.html">Frontier</a></nav></header>
<main>
{body}
</main>
<footer>Built by <code>python -m peftlab site</code> in {mode} mode.</footer>
</body>
</html>
"""


# The pages of docs/ the site builds: (file in docs/, page, title). guide.md first: the landing page shows its
# schedule. docs/grading_guide.md is for instructors only and is never published.
DOC_PAGES = (("guide.md", "guide.html", "Syllabus and instructor guide"),
             ("frontier.md", "frontier.html", "The learning-forgetting frontier"),
             ("real_model.md", "real_model.html", "Real models"),
             ("package.md", "package.html", "The package, module by module"))


def doc_page(path, href: str, title: str, mode: str, link_map: dict[str, str], out_dir) -> str:
    """A page of ``docs/`` as a site page: links to notebooks and other pages rewritten, the images it shows
    copied to the site's ``docs/`` folder, links to other files of the repository left as text."""
    body = _rewrite_links(render_markdown(path.read_text()), href, link_map)
    up = "../" * href.count("/")

    def image(match):
        source = path.parent / match.group(2)
        if re.match(r"^(https?:|data:)", match.group(2)) or not source.is_file():
            return match.group(0)
        (out_dir / "docs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out_dir / "docs" / source.name)
        return f'{match.group(1)}="{up}docs/{source.name}"'

    body = re.sub(r'(<img[^>]*?\ssrc)="([^"]+)"', image, body)
    return page(title, body, href, mode, "doc")
