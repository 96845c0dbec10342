#!/usr/bin/env python
"""Print the built HTML book to one PDF, offline, with headless Chromium.

    python scripts/make_pdf.py [--html _build/html] [--out _build/pdf/netmoments.pdf] [--pages DOC ...]

Every page listed in ``_toc.yml`` is opened in reading order from ``file://`` with the network blocked, left
until MathJax has typeset its maths and the widget manager has drawn every saved widget, and printed to A4 with
print CSS that drops the navigation bar, the sidebars and the buttons. The pages are then joined behind a title
page and a table of contents (chapter titles with their page numbers), every page is numbered in its footer,
the PDF gets one bookmark per part and chapter, and links between chapters become links inside the PDF.

Why a browser and not LaTeX: the pages already hold what the reader sees (MathJax maths, the figures, the
widget frames saved when the notebooks ran), so printing them keeps the book and its PDF identical, and needs
nothing beyond the Chromium that the browser test already drives (``apt-get install -y chromium``).
Jupyter Book's own ``pdfhtml`` builder downloads a browser and fails offline.

Exit status 1 when a page is missing, MathJax reports an error on a page, or a page tried to reach the
network; prints the page count, the size and the time taken.
"""
from __future__ import annotations

import argparse
import html as htmllib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Flags for a container: no sandbox (root), no GPU, /dev/shm may be tiny.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# A4 with 15 mm margins leaves 180 mm = 680 CSS px; printing at 0.8 lays the page out on 850 px, close to the
# text column of the HTML book (whose display equations are broken to fit it), at a 10 pt body text.
PAGE_FORMAT = "A4"
PAGE_MARGIN = {"top": "15mm", "bottom": "18mm", "left": "15mm", "right": "15mm"}
PRINT_SCALE = 0.8

# The theme's own print CSS already drops the sidebars; this removes what is left of the interactive chrome and
# the theme's print title and in-page contents list, and keeps figures and code readable on paper.
PRINT_CSS = """
@media print {
  .bd-header, .bd-sidebar-primary, .bd-sidebar-secondary, .bd-header-article, .header-article-items,
  .prev-next-area, .prev-next-footer, .bd-footer, .bd-footer-article, .bd-footer-content, #pst-back-to-top,
  .search-button, .theme-switch-button, .copybtn, .headerlink, .skip-link, #jb-print-toc,
  .sbt-scroll-pixel-helper, #jb-print-docs-body { display: none !important; }
  /* The theme prints an unnumbered copy of the title and hides the heading; keep the numbered heading. */
  .bd-main .bd-content .bd-article h1:first-of-type { display: block !important; }
  .bd-main .bd-content { margin-left: 0 !important; }
  .bd-main .bd-content .bd-article-container { max-width: 100% !important; }
  .bd-main .bd-content .bd-article-container .bd-article { padding-left: 0; padding-right: 0; }
  .bd-container__inner, .bd-page-width { max-width: 100% !important; }
  html, body { background: #fff !important; }
  pre { white-space: pre-wrap !important; overflow: visible !important; }
  /* A code cell's frame otherwise stays behind, empty, when its code moves to the next page. */
  .cell_input, .cell_output, img, figure, .widget-subarea, mjx-container[display="true"] { break-inside: avoid; }
  h1, h2, h3, h4 { break-after: avoid; }
}
"""

TITLE_CSS = """
@page { size: A4; margin: 25mm 22mm; }
body { font-family: "DejaVu Sans", "Liberation Sans", sans-serif; color: #111; }
.title { break-after: page; text-align: center; padding-top: 70mm; }
.title h1 { font-size: 30pt; font-weight: 500; margin: 0 0 12mm; }
.title p { font-size: 13pt; margin: 3mm 0; color: #333; }
h2 { font-size: 18pt; font-weight: 500; margin: 0 0 8mm; }
.part { font-weight: 600; margin: 5mm 0 1.5mm; font-size: 11pt; }
.entry { display: flex; font-size: 10.5pt; margin: 1mm 0 1mm 6mm; }
.entry .name { flex: 0 1 auto; }
.entry .dots { flex: 1 1 auto; border-bottom: 1px dotted #888; margin: 0 2mm 1.2mm; }
.entry .num { flex: 0 0 auto; }
"""

NUMBERS_CSS = """
@page { size: A4; margin: 0; }
body { margin: 0; font-family: "DejaVu Sans", "Liberation Sans", sans-serif; }
.sheet { height: 297mm; position: relative; break-after: page; overflow: hidden; }
.sheet span { position: absolute; bottom: 8mm; left: 0; right: 0; text-align: center; font-size: 9pt; color: #444; }
"""


@dataclass
class Chapter:
    """One printed page of the book: its document name, part caption, title and pages in the joined PDF."""

    doc: str
    part: str
    title: str = ""
    n_pages: int = 0
    first_page: int = 0  # 0-based index in the joined PDF
    pdf: Path | None = None
    problems: list[str] = field(default_factory=list)


def toc_outline(toc_path: Path) -> list[tuple[str, str]]:
    """(document, part caption) for every file in a jb-book ``_toc.yml``, root first, in reading order.

    Sections nested under a chapter follow it, with the chapter's part; a part without a caption counts as the
    part before it. The root has the caption "".
    """
    toc = yaml.safe_load(toc_path.read_text(encoding="utf8"))
    out = [(_strip_suffix(toc["root"]), "")]

    def walk(entries, caption):
        for entry in entries or []:
            if "file" in entry:
                out.append((_strip_suffix(entry["file"]), caption))
            walk(entry.get("sections"), caption)
            walk(entry.get("chapters"), caption)

    caption = ""
    for part in toc.get("parts") or []:
        # A part without a caption only keeps its chapters out of the numbering: they close the part before it.
        caption = part.get("caption") or caption
        walk(part.get("chapters"), caption)
    walk(toc.get("chapters"), "")
    return out


def _strip_suffix(name: str) -> str:
    for suffix in (".ipynb", ".md"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_chromium() -> str | None:
    return next(filter(None, (shutil.which(n) for n in CHROMIUM_NAMES)), None)


def _load_page(context, url: str, blocked: list[str]):
    page = context.new_page()

    def block(route):
        blocked.append(route.request.url)
        route.abort()

    page.route("http*://**", block)
    page.goto(url, wait_until="load")
    return page


def print_chapter(context, html_dir: Path, chapter: Chapter, out: Path, timeout_ms: int) -> None:
    """Print one book page to ``out`` once its maths is typeset and its widgets are drawn; fills ``chapter``."""
    blocked: list[str] = []
    page = _load_page(context, (html_dir / f"{chapter.doc}.html").as_uri(), blocked)
    try:
        page.wait_for_function("() => window.MathJax === undefined || window.MathJax.startup !== undefined",
                               timeout=timeout_ms)
        page.evaluate("() => window.MathJax === undefined ? true : MathJax.startup.promise.then(() => true)")
        # The html-manager draws each saved widget into the element just before its view script.
        page.wait_for_function(
            """(mime) => Array.from(document.querySelectorAll(`script[type="${mime}"]`)).every(s => {
                const area = s.previousElementSibling;
                return area && area.classList.contains('widget-subarea') && area.childElementCount > 0;
            })""", arg=WIDGET_VIEW, timeout=timeout_ms)
        page.evaluate("() => document.fonts.ready.then(() => true)")
        page.evaluate("""() => Promise.all(Array.from(document.images).map(img => img.complete ? null :
                          new Promise(done => { img.onload = img.onerror = done; })))""")
        errors = page.evaluate("() => document.querySelectorAll('mjx-merror').length")
        if errors:
            chapter.problems.append(f"{errors} MathJax error(s)")
        chapter.title = page.evaluate("""() => {
            // The article's own heading carries the chapter number; the theme's print title does not.
            const h = document.querySelector('article h1') || document.querySelector('h1');
            if (!h) return document.title;
            const c = h.cloneNode(true);
            c.querySelectorAll('.headerlink').forEach(e => e.remove());
            return c.textContent.replace(/\\s+/g, ' ').trim();
        }""")
        page.add_style_tag(content=PRINT_CSS)
        page.emulate_media(media="print")
        page.pdf(path=str(out), format=PAGE_FORMAT, margin=PAGE_MARGIN, scale=PRINT_SCALE, print_background=True)
    finally:
        page.close()
    if blocked:
        chapter.problems.append(f"tried to reach the network: {blocked[:3]}")
    chapter.pdf = out


def _print_html(context, markup: str, out: Path) -> None:
    blocked: list[str] = []
    page = context.new_page()
    page.route("http*://**", lambda route: (blocked.append(route.request.url), route.abort()))
    page.set_content(markup, wait_until="load")
    page.pdf(path=str(out), prefer_css_page_size=True, print_background=True)
    page.close()
    if blocked:
        raise RuntimeError(f"the title page tried to reach the network: {blocked[:3]}")


def front_matter_html(title: str, author: str, date: str, chapters: list[Chapter], offset: int) -> str:
    """Title page and contents; a chapter's number is its 1-based page in the joined PDF (front matter first)."""
    e = htmllib.escape
    rows, part = [], None
    for ch in chapters:
        if ch.part != part and ch.part:
            rows.append(f'<div class="part">{e(ch.part)}</div>')
        part = ch.part
        rows.append(f'<div class="entry"><span class="name">{e(ch.title)}</span><span class="dots"></span>'
                    f'<span class="num">{ch.first_page + offset + 1}</span></div>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>{TITLE_CSS}</style></head><body>"
            f"<div class='title'><h1>{e(title)}</h1><p>{e(author)}</p><p>{e(date)}</p></div>"
            f"<h2>Contents</h2>{''.join(rows)}</body></html>")


def numbers_html(n_pages: int, first_numbered: int) -> str:
    """One blank A4 sheet per page with its number in the footer (none before ``first_numbered``)."""
    sheets = "".join(f"<div class='sheet'>{f'<span>{i + 1}</span>' if i >= first_numbered else ''}</div>"
                     for i in range(n_pages))
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{NUMBERS_CSS}</style></head><body>{sheets}</body></html>"


def _book_date() -> str:
    """The date of the last commit (the book is what the code does at that commit); today outside a repository."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return time.strftime("%Y-%m-%d")


def _internal_links(writer, html_dir: Path, chapters: list[Chapter]) -> int:
    """Turn ``file://`` links to other book pages into links to that chapter's first page inside the PDF.

    Links to anything else on the builder's disk are removed (they would point nowhere on the reader's machine);
    web links are kept. Returns the number of links rewritten.
    """
    from pypdf.generic import ArrayObject, NameObject, NumberObject

    first = {(html_dir / f"{ch.doc}.html").resolve(): ch.first_page for ch in chapters}
    rewritten = 0
    for page in writer.pages:
        annots = page.get("/Annots")
        if annots is None:
            continue
        keep = ArrayObject()
        for ref in annots.get_object():
            annot = ref.get_object()
            uri = annot.get("/A", {}).get("/URI") if annot.get("/Subtype") == "/Link" else None
            if uri is None or not str(uri).startswith("file:"):
                keep.append(ref)
                continue
            target = Path(unquote(urlparse(str(uri)).path)).resolve()
            if target in first:
                dest = ArrayObject([writer.pages[first[target]].indirect_reference, NameObject("/XYZ"),
                                    NumberObject(0), NumberObject(10_000), NumberObject(0)])
                del annot["/A"]
                annot[NameObject("/Dest")] = dest
                keep.append(ref)
                rewritten += 1
        page[NameObject("/Annots")] = keep
    return rewritten


def make_pdf(html_dir: Path, out: Path, toc: Path = ROOT / "_toc.yml", config: Path = ROOT / "_config.yml",
             pages: list[str] | None = None, timeout_s: float = 120.0, log=print) -> dict:
    """Print the book in ``html_dir`` to ``out``; returns a summary (pages, bytes, seconds, chapters, problems).

    ``pages`` restricts the PDF to those documents (in TOC order); by default every TOC entry is printed.
    Raises FileNotFoundError for a missing page, RuntimeError without Chromium or Playwright.
    """
    start = time.perf_counter()
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium found (apt-get install -y chromium)")
    if importlib.util.find_spec("playwright") is None or importlib.util.find_spec("pypdf") is None:
        raise RuntimeError("playwright and pypdf are needed (pip install -r requirements.txt)")
    from playwright.sync_api import sync_playwright
    from pypdf import PdfReader, PdfWriter

    outline = toc_outline(toc)
    if pages is not None:
        unknown = sorted(set(pages) - {doc for doc, _ in outline})
        if unknown:
            raise ValueError(f"not in {toc.name}: {unknown}")
        outline = [(doc, part) for doc, part in outline if doc in set(pages)]
    chapters = [Chapter(doc, part) for doc, part in outline]
    missing = [ch.doc for ch in chapters if not (html_dir / f"{ch.doc}.html").is_file()]
    if missing:
        raise FileNotFoundError(f"no HTML page for {missing} in {html_dir} (make book)")
    cfg = (yaml.safe_load(config.read_text(encoding="utf8")) if config.is_file() else None) or {}

    out.parent.mkdir(parents=True, exist_ok=True)
    timeout_ms = int(timeout_s * 1000)
    with tempfile.TemporaryDirectory(prefix="make_pdf_") as tmp, sync_playwright() as p:
        tmp = Path(tmp)
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        # Playwright's 30 s default is too short for the longest pages on a busy 2-core machine.
        context.set_default_timeout(timeout_ms)
        context.set_default_navigation_timeout(timeout_ms)
        try:
            for i, ch in enumerate(chapters):
                t0 = time.perf_counter()
                print_chapter(context, html_dir, ch, tmp / f"{i:03d}.pdf", timeout_ms)
                ch.n_pages = len(PdfReader(ch.pdf).pages)
                log(f"  {ch.doc:45s} {ch.n_pages:3d} pages  {time.perf_counter() - t0:5.1f} s"
                    + (f"  PROBLEM: {'; '.join(ch.problems)}" if ch.problems else ""))
            body = 0
            for ch in chapters:
                ch.first_page = body
                body += ch.n_pages
            # The contents' length does not depend on its page numbers: print once to count, then for real.
            title = cfg.get("title", "Book")
            author, date = cfg.get("author", ""), _book_date()
            _print_html(context, front_matter_html(title, author, date, chapters, 0), tmp / "front.pdf")
            n_front = len(PdfReader(tmp / "front.pdf").pages)
            _print_html(context, front_matter_html(title, author, date, chapters, n_front), tmp / "front.pdf")
            _print_html(context, numbers_html(n_front + body, 1), tmp / "numbers.pdf")
        finally:
            browser.close()

        writer = PdfWriter()
        writer.append(str(tmp / "front.pdf"), import_outline=False)
        for ch in chapters:
            writer.append(str(ch.pdf), import_outline=False)
        numbers = PdfReader(tmp / "numbers.pdf")
        for page, sheet in zip(writer.pages, numbers.pages):
            page.merge_page(sheet)
        for ch in chapters:
            ch.first_page += n_front
        links = _internal_links(writer, html_dir, chapters)
        writer.add_outline_item(title="Contents", page_number=0)
        parents = {}
        for ch in chapters:
            parent = None
            if ch.part:
                if ch.part not in parents:
                    parents[ch.part] = writer.add_outline_item(title=ch.part, page_number=ch.first_page)
                parent = parents[ch.part]
            writer.add_outline_item(title=ch.title, page_number=ch.first_page, parent=parent)
        writer.add_metadata({"/Title": str(title), "/Author": str(author)})
        writer.page_mode = "/UseOutlines"
        with open(out, "wb") as fh:
            writer.write(fh)

    problems = [f"{ch.doc}: {msg}" for ch in chapters for msg in ch.problems]
    return {"pages": n_front + body, "bytes": out.stat().st_size, "seconds": time.perf_counter() - start,
            "chapters": [(ch.doc, ch.title, ch.first_page, ch.n_pages) for ch in chapters],
            "links": links, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--html", type=Path, default=ROOT / "_build" / "html", help="the built book (make book)")
    ap.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf" / "netmoments.pdf")
    ap.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    ap.add_argument("--config", type=Path, default=ROOT / "_config.yml", help="for the title and author")
    ap.add_argument("--pages", nargs="+", metavar="DOC", help="only these TOC entries, e.g. book/intro")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one page to render")
    args = ap.parse_args(argv)
    if not (args.html / "index.html").is_file():
        print(f"make_pdf: no built book at {args.html} (make book)", file=sys.stderr)
        return 1
    try:
        from playwright.sync_api import Error as PlaywrightError
    except ImportError:  # make_pdf says what is missing
        PlaywrightError = RuntimeError

    try:
        summary = make_pdf(args.html, args.out, args.toc, args.config, args.pages, args.timeout)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"make_pdf: {err}", file=sys.stderr)
        return 1
    except PlaywrightError as err:
        print(f"make_pdf: the browser failed (a page that never finished rendering? try --timeout): "
              f"{str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    for problem in summary["problems"]:
        print(f"make_pdf: PROBLEM {problem}", file=sys.stderr)
    print(f"make_pdf: {args.out}: {summary['pages']} pages, {summary['bytes'] / 1e6:.1f} MB, "
          f"{len(summary['chapters'])} chapters, {summary['links']} links between chapters, "
          f"{summary['seconds']:.0f} s")
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
