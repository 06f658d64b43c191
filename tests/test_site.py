"""The course website: built in quick mode, checked as files and in a real browser (headless Chromium).

- ``site`` (module fixture): ``peftlab.site.build_site`` in quick mode into a temporary folder, its
  execution cache in ``_site/.cache`` (the command's own), so a second run re-executes only the
  lectures that changed; a first run executes every lecture (several minutes on a 2-core CPU).
- files: every lecture and released assignment has a page that records the quick mode, and so has each page
  of ``docs/`` the site builds (``DOC_PAGES``); no page is made from ``solutions/``; every relative link and
  image of every page resolves, anchors included; no solution or hidden-test line appears in any page,
  download or the course zip, and a copy of the site with one solution line planted in a lecture page (and
  one in a downloaded notebook) is caught.
- browser: Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) loads every page;
  each lecture shows every figure its executed notebook holds (``<img>`` complete, naturalWidth > 0),
  the landing page shows the comparison figure, every link in the rendered page resolves, the page's
  visible text holds no solution line (the planted copy is caught here too); screenshots of the landing
  page and of one lecture go to ``results/site_screenshots/``.

Run: ``.venv/bin/python -m pytest tests/test_site.py -n 0`` (marked ``notebook``). CPU; needs chromium and chromedriver
(``apt-get install -y chromium chromium-driver``): without them the browser test skips, except in CI
(``CI`` set), where it fails.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from peftlab import site as course_site

pytestmark = pytest.mark.notebook  # the build executes every lecture
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "results" / "site_screenshots"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "_site"
    record = course_site.build_site(out, mode="quick", cache_dir=ROOT / "_site" / ".cache")
    return out, record


@pytest.fixture(scope="module")
def secrets():
    found = course_site.solution_lines()
    assert len(found) > 50, "too few solution lines found to check anything"
    return found


def _pages(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.html") if ".cache" not in p.relative_to(out).parts)


def _executed_figures(notebook: Path) -> int:
    """Image outputs of the lecture as the build executed it (from the cache the build used)."""
    nb = nbformat.read(notebook, as_version=4)
    key = course_site.cache_key(nb, "quick")[:16]
    cached = next((ROOT / "_site" / ".cache").glob(f"lectures--{notebook.stem}.quick.{key}.ipynb"))
    executed = nbformat.read(cached, as_version=4)
    return sum(1 for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if any(m in o.get("data", {}) for m in ("image/png", "image/jpeg", "image/svg+xml")))


# ------------------------------------------------------------------------------------------- files

def test_every_notebook_has_a_page_in_quick_mode(site):
    out, record = site
    lectures = sorted((ROOT / "lectures").glob("*.ipynb"))
    exercises = sorted((ROOT / "exercises").glob("*/*.ipynb"))
    assert record["mode"] == "quick" and set(record["lectures"]) == {p.name for p in lectures}
    for path in lectures:
        text = (out / "lectures" / f"{path.stem}.html").read_text()
        assert '<meta name="peftlab-mode" content="quick">' in text and "quick mode" in text
        assert (out / "downloads" / "lectures" / path.name).read_bytes() == path.read_bytes()
    for path in exercises:
        assert (out / "downloads" / "exercises" / path.parent.name / path.name).read_bytes() == path.read_bytes()
    pages = {p.relative_to(out).as_posix() for p in _pages(out)}
    assert {"index.html", "guide.html"} | {href for _, href, _ in course_site.DOC_PAGES} <= pages  # docs/ pages
    assert len([p for p in pages if p.startswith("assignments/")]) == len(exercises)
    assert not [p for p in out.rglob("*") if "solutions" in p.relative_to(out).parts]
    assert json.loads((out / "build.json").read_text())["mode"] == "quick"


def _links(markup: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]+)"', markup)


def test_relative_links_and_images_resolve(site):
    out, _ = site
    broken = []
    for page in _pages(out):
        markup = page.read_text()
        for link in _links(markup):
            if re.match(r"^(https?:|mailto:|data:)", link):
                continue
            target, _, anchor = link.partition("#")
            target_path = (page.parent / unquote(target)).resolve() if target else page
            if not target_path.is_file():
                broken.append(f"{page.relative_to(out)} -> {link}")
            elif anchor and target_path.suffix == ".html" and f'id="{anchor}"' not in target_path.read_text():
                broken.append(f"{page.relative_to(out)} -> {link} (no such anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken[:20])


def test_no_solution_text_anywhere(site, secrets, tmp_path):
    out, _ = site
    assert course_site.find_leaks(out, secrets) == []
    # the check can fail: a copy with one solution line planted in a lecture page, then in a download
    planted = sorted(secrets, key=len)[len(secrets) // 2]
    copy = tmp_path / "planted"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".cache"))
    lecture = sorted((copy / "lectures").glob("*.html"))[0]
    markup = lecture.read_text()
    lecture.write_text(markup.replace("</main>", f"<pre>{course_site.html.escape(planted)}</pre></main>", 1))
    leaks = course_site.find_leaks(copy, secrets)
    assert planted in [line for _, line in leaks] and {where for where, _ in leaks} == {lecture.relative_to(copy).as_posix()}
    lecture.write_text(markup)
    download = sorted((copy / "downloads" / "exercises").rglob("*.ipynb"))[0]
    nb = json.loads(download.read_text())
    nb["cells"][-1]["source"] = ["x = 1\n", "    " + planted + "\n"]
    download.write_text(json.dumps(nb))
    leaks = course_site.find_leaks(copy, secrets)
    assert planted in [line for _, line in leaks] and {where for where, _ in leaks} == {download.relative_to(copy).as_posix()}


# ----------------------------------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = course_site.chromium_binary(), shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "headless Chromium needs: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for a driver on the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in course_site.CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1100,1500")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


_INSPECT = """
return {
  mode: (document.querySelector('meta[name="peftlab-mode"]') || {}).content,
  text: document.body.innerText,
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 40), complete: i.complete,
                                                  width: i.naturalWidth, height: i.naturalHeight})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
};"""


def _load(browser, path: Path) -> dict:
    browser.get(path.resolve().as_uri())
    browser.execute_script("return document.readyState")  # selenium's get waits for the load event
    return browser.execute_script(_INSPECT)


def test_every_page_in_chromium(site, secrets, browser):
    out, _ = site
    problems = []
    for page in _pages(out):
        rel = page.relative_to(out).as_posix()
        seen = _load(browser, page)
        if seen["mode"] != "quick":
            problems.append(f"{rel}: mode {seen['mode']!r}")
        bad = [i for i in seen["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
        if bad:
            problems.append(f"{rel}: {len(bad)} image(s) not shown: {bad[:2]}")
        if rel.startswith("lectures/"):
            expected = _executed_figures(ROOT / "lectures" / f"{page.stem}.ipynb")
            shown = len(seen["images"]) - len(bad)
            if shown != expected:
                problems.append(f"{rel}: {shown} figures shown, its executed notebook has {expected}")
        if rel == "index.html" and not any("learning_vs_forgetting" in i["src"] for i in seen["images"]):
            problems.append("index.html: the learning-vs-forgetting figure is missing")
        for link in seen["links"]:
            url = urlparse(link)
            if url.scheme == "file":
                target = Path(unquote(url.path))
                if not target.is_file():
                    problems.append(f"{rel}: link to a missing file {target}")
                elif url.fragment and target.suffix == ".html" and not any(
                        f'id="{fragment}"' in target.read_text() for fragment in (url.fragment, unquote(url.fragment))):
                    problems.append(f"{rel}: link to a missing anchor {link}")
        leaks = course_site.leaks_in_text(seen["text"], secrets)
        if leaks:
            problems.append(f"{rel}: shows solution text: {leaks[:2]}")
    assert not problems, "\n".join(problems[:30])

    lectures = [p for p in _pages(out) if p.parent.name == "lectures"]
    figures = {p: _executed_figures(ROOT / "lectures" / f"{p.stem}.ipynb") for p in lectures}
    assert sum(figures.values()) > 0 and len(lectures) >= 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shown = max(figures, key=lambda p: (figures[p], "lora" in p.stem))
    for name, page in (("landing.png", out / "index.html"), (f"lecture_{shown.stem}.png", shown)):
        _load(browser, page)
        assert browser.save_screenshot(str(SCREENSHOTS / name))
        assert (SCREENSHOTS / name).stat().st_size > 20_000, f"{name} looks blank"

    # the browser check can fail: a planted solution line in a copy of a lecture page is seen
    planted = sorted(secrets)[0]
    copy = out.parent / "planted.html"
    copy.write_text(lectures[0].read_text().replace(
        "</main>", f'<div class="cell code"><pre>{course_site.html.escape(planted)}</pre></div></main>', 1))
    assert planted in course_site.leaks_in_text(_load(browser, copy)["text"], secrets)
