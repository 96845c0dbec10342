"""``make pdf`` end to end on three pages of the built book: printed by headless Chromium, offline.

``scripts/make_pdf.py`` prints the book's front page, a short chapter with a widget and the last page of the
TOC. The test renders every PDF page to PNG with ``pdftoppm`` and checks that none is blank; lists the images the
chapter's pages paint (``pdfimages``: every figure and the frame each widget shows); reads the text back with
``pdftotext`` to check that the maths was typeset (no TeX source left), that pages are numbered and that the
contents and bookmarks name each chapter at its first page; and checks that no link in the PDF points into the
machine that built it.

Needs the built book (``make book``), Chromium (``apt-get install -y chromium``) and poppler-utils
(``apt-get install -y poppler-utils``: pdftoppm, pdftotext, pdfimages). Without them the tests are skipped with
a reason, unless ``NETMOMENTS_BROWSER_TEST=required`` (set by ``make test`` when Chromium is present), which
turns a missing build, Playwright or poppler-utils into a failure.
"""
from __future__ import annotations

import html as htmllib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = Path(os.environ.get("NETMOMENTS_HTML", ROOT / "_build" / "html"))
REQUIRED = os.environ.get("NETMOMENTS_BROWSER_TEST") == "required"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# TeX that MathJax replaces when it typesets: any of it in the PDF's text is maths printed as source.
RAW_TEX = ("\\(", "\\)", "\\[", "\\]", "$$", "\\frac", "\\begin{", "\\mathbb", "\\sigma")
# A page counts as blank below this share of dark pixels. A page of text at 40 dpi is 3-10 % ink; a blank one
# with only its page number, under 0.1 %.
MIN_INK = 0.005
DPI = 40


def _skip_or_fail(reason: str):
    if REQUIRED:
        pytest.fail(f"PDF test required but {reason}", pytrace=False)
    pytest.skip(f"SKIP PDF test: {reason}", allow_module_level=True)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


make_pdf = _load("make_pdf")

if make_pdf.find_chromium() is None:
    pytest.skip("SKIP PDF test: no Chromium found (apt-get install -y chromium)", allow_module_level=True)
for _module in ("playwright", "pypdf", "PIL"):
    if importlib.util.find_spec(_module) is None:
        _skip_or_fail(f"{_module} is not installed (pip install -r requirements.txt)")
for _tool in ("pdftoppm", "pdftotext", "pdfimages"):
    if shutil.which(_tool) is None:
        _skip_or_fail(f"{_tool} not found (apt-get install -y poppler-utils)")
if not (HTML / "index.html").is_file():
    _skip_or_fail(f"no built book at {HTML} (make book)")

from PIL import Image  # noqa: E402
from pypdf import PdfReader  # noqa: E402


def _code_text(html: str) -> str:
    return " ".join(re.findall(r"<pre[^>]*>(.*?)</pre>", html, flags=re.S))


def _article(html: str) -> str:
    """The page's article (what is printed), without scripts (the saved widget state)."""
    match = re.search(r"<article\b.*?</article>", html, flags=re.S)
    return re.sub(r"<script\b.*?</script>", "", match.group(0) if match else "", flags=re.S)


def _choose_pages() -> tuple[list[str], str]:
    """The root page, the shortest chapter with a widget and maths (no TeX in its code), the last TOC page."""
    outline = [doc for doc, _ in make_pdf.toc_outline(ROOT / "_toc.yml") if (HTML / f"{doc}.html").is_file()]
    candidates = []
    for doc in outline[1:-1]:
        page = (HTML / f"{doc}.html").read_text(encoding="utf8")
        code = _code_text(page)
        if WIDGET_VIEW in page and "math notranslate" in page and not any(t in code for t in RAW_TEX):
            # printed length: the article's markup less its images (inline PNG data)
            candidates.append((len(re.sub(r"<img\b[^>]*>", "", _article(page))), doc))
    if not candidates:
        _skip_or_fail("the built book has no chapter with a widget and maths")
    widget_doc = min(candidates)[1]
    return [outline[0], widget_doc, outline[-1]], widget_doc


PAGES, WIDGET_DOC = _choose_pages()


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    out = tmp_path_factory.mktemp("pdf") / "book.pdf"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_pdf.py"), "--html", str(HTML),
                           "--out", str(out), "--pages", *PAGES],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"make_pdf failed:\n{done.stdout}\n{done.stderr}"
    assert re.search(r"\d+ pages, [\d.]+ MB", done.stdout), done.stdout
    return out


@pytest.fixture(scope="module")
def reader(printed):
    return PdfReader(printed)


def _text(pdf: Path, first: int | None = None, last: int | None = None) -> str:
    """pdftotext of pages first..last (1-based, inclusive)."""
    args = ["pdftotext", "-layout", "-enc", "UTF-8"]
    if first is not None:
        args += ["-f", str(first), "-l", str(last or first)]
    return subprocess.run([*args, str(pdf), "-"], capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def rendered(printed, tmp_path_factory) -> list[np.ndarray]:
    """Every page as an RGB array at DPI."""
    folder = tmp_path_factory.mktemp("png")
    subprocess.run(["pdftoppm", "-r", str(DPI), "-png", str(printed), str(folder / "p")], check=True, timeout=120)
    files = sorted(folder.glob("p-*.png"), key=lambda p: int(p.stem.split("-")[-1]))
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _ink(page: np.ndarray) -> float:
    return float((page.mean(axis=2) < 160).mean())


def test_every_page_has_ink(rendered, reader):
    assert len(rendered) == len(reader.pages) >= len(PAGES) + 1
    ink = [_ink(page) for page in rendered]
    blank = [i + 1 for i, share in enumerate(ink) if share < MIN_INK]
    assert not blank, f"blank pages {blank} (ink shares {[round(x, 4) for x in ink]})"


def test_pages_are_a4_and_numbered(printed, reader):
    for page in reader.pages:
        width, height = float(page.mediabox.width), float(page.mediabox.height)
        assert abs(width - 595.3) < 2 and abs(height - 841.9) < 2, (width, height)
    n = len(reader.pages)
    for number in (2, n):
        lines = [line.strip() for line in _text(printed, number).splitlines() if line.strip()]
        assert lines and lines[-1] == str(number), f"page {number} ends with {lines[-1:]!r}, not its number"


def test_maths_is_typeset(printed):
    text = _text(printed)
    left = {tex: text.count(tex) for tex in RAW_TEX if tex in text}
    assert not left, f"TeX source in the PDF (MathJax did not typeset before printing): {left}"


def _chapter_bookmarks(reader: PdfReader) -> list[tuple[str, int]]:
    """(title, 0-based page) of every chapter bookmark in order: parts (followed by their chapters) and the
    contents bookmark left out."""
    items, out = list(reader.outline), []
    for i, item in enumerate(items):
        if isinstance(item, list):
            out += [(child.title, reader.get_destination_page_number(child)) for child in item]
        elif i > 0 and not (i + 1 < len(items) and isinstance(items[i + 1], list)):
            out.append((item.title, reader.get_destination_page_number(item)))
    return out


def _h1(doc: str) -> str:
    article = _article((HTML / f"{doc}.html").read_text(encoding="utf8"))
    h1 = re.sub(r'<a class="headerlink".*?</a>', "", re.search(r"<h1[^>]*>(.*?)</h1>", article, re.S).group(1),
                flags=re.S)
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", "", h1)).split())


def test_bookmarks_and_contents_point_at_each_chapter(printed, reader):
    bookmarks = _chapter_bookmarks(reader)
    assert [title for title, _ in bookmarks] == [_h1(doc) for doc in PAGES]
    n_front = bookmarks[0][1]
    assert n_front >= 1, "no title page before the first chapter"
    contents = " ".join(_text(printed, 1, n_front).split())
    for (title, first), doc in zip(bookmarks, PAGES):
        shown = " ".join(_text(printed, first + 1).split())
        assert " ".join(title.split()[:3]) in shown, f"{doc}: bookmark page {first + 1} does not show {title!r}"
        assert re.search(re.escape(title) + r"[ .]*" + str(first + 1) + r"\b", contents), (
            f"contents do not list {title!r} at page {first + 1}")
    pages = [first for _, first in bookmarks] + [len(reader.pages)]
    assert all(a < b for a, b in zip(pages, pages[1:])), f"chapters out of order or empty: {pages}"


def test_widget_chapter_prints_its_figures_and_widget(printed, reader):
    # Every figure of the chapter and the frame each widget shows must be drawn on its pages; pdfimages lists
    # the images each page paints (soft masks on lines of their own).
    bookmarks = _chapter_bookmarks(reader)
    k = PAGES.index(WIDGET_DOC)
    first, last = bookmarks[k][1] + 1, bookmarks[k + 1][1]
    listing = subprocess.run(["pdfimages", "-list", "-f", str(first), "-l", str(last), str(printed)],
                             capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()[2:]
    painted = [line.split() for line in listing if line.split()[2] == "image"]
    page = (HTML / f"{WIDGET_DOC}.html").read_text(encoding="utf8")
    figures = len(re.findall(r"<img\b", _article(page)))
    widgets = page.count(f'type="{WIDGET_VIEW}"')
    assert figures and widgets
    assert len(painted) >= figures + widgets, (
        f"{WIDGET_DOC}: {len(painted)} images printed, {figures} figures and {widgets} widget(s) in the page")
    small = [p for p in painted if int(p[3]) < 50 or int(p[4]) < 50]
    assert len(painted) - len(small) >= figures + widgets, f"images too small to be figures: {small}"


def test_no_link_points_into_the_build_machine(reader):
    for number, page in enumerate(reader.pages, start=1):
        for ref in page.get("/Annots") or []:
            action = ref.get_object().get("/A") or {}
            uri = str(action.get("/URI", ""))
            assert not uri.startswith("file:"), f"page {number} links to {uri}"
