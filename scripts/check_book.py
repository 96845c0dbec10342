#!/usr/bin/env python
"""Check a built HTML book: every chapter present, outputs rendered, nothing loaded from the internet.

    python scripts/check_book.py _build/html

Fails (exit 1) when
- a file listed in _toc.yml has no HTML page;
- a page references a CDN or loads a script, stylesheet, font or image from an http(s) URL;
- a chapter whose stored notebook has image outputs has no ``<img`` in its page;
- a chapter whose stored notebook has widget outputs has no embedded widget state, or does not load the
  vendored require.js / embed-amd.js;
- a page with maths does not load the vendored MathJax, or a vendored file is missing from the build;
- a page is larger than 5 MB (each widget frame is stored in the page: coarsen the widget's grid);
- an image of a captioned figure has no alt text, a file name for alt text, or alt text other than its caption
  (book/_ext/alt_text.py fills it in at build time; a screen reader reads it).
Prints one line per page (with its size) and a summary.
"""
from __future__ import annotations

import argparse
import html as html_lib
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

CDN_HOSTS = re.compile(
    r"(cdn\.jsdelivr\.net|unpkg\.com|cdnjs\.cloudflare\.com|ajax\.googleapis\.com|fonts\.googleapis\.com"
    r"|fonts\.gstatic\.com|code\.jquery\.com|bootstrapcdn\.com|cdn\.mathjax\.org|use\.fontawesome\.com"
    r"|kit\.fontawesome\.com|polyfill\.io|cdn\.plot\.ly|cdn\.bokeh\.org|[a-z0-9-]+\.cloudfront\.net)",
    re.IGNORECASE,
)
# Anything the browser would fetch by itself (as opposed to a hyperlink the reader may click).
REMOTE_RESOURCE = re.compile(
    r"""<(?:script|img|iframe|source|embed)\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//"""
    r"""|<link\b(?=[^>]*\brel\s*=\s*["']?(?:stylesheet|preload|modulepreload|icon|prefetch))[^>]*\bhref\s*=\s*["']?(?:https?:)?//"""
    r"""|@import\s+(?:url\()?\s*["']?(?:https?:)?//"""
    r"""|url\(\s*["']?https?://""",
    re.IGNORECASE,
)
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PAGE_LIMIT_MB = 5.0
VENDORED = {
    "mathjax": "_static/vendor/mathjax/tex-chtml.js",
    "require": "_static/vendor/require/require.js",
    "embed": "_static/vendor/html-manager/embed-amd.js",
}


GRADER_MARKERS = ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS")

FIGURE = re.compile(r"<figure\b[^>]*>(.*?)</figure>", re.S | re.I)
FIGCAPTION = re.compile(r"<figcaption\b[^>]*>(.*?)</figcaption>", re.S | re.I)
IMG_TAG = re.compile(r"<img\b[^>]*>", re.I)
ALT_ATTR = re.compile(r"""\balt\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
FILE_NAME = re.compile(r"(^|/)[\w.-]+\.(png|jpe?g|gif|svg|webp)$|^[0-9a-f]{16,}$", re.I)


def toc_files(toc_path: Path) -> list[str]:
    """Every document named in a jb-book _toc.yml, root first, without suffix."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("sections", "chapters", "parts"):
                walk(entry.get(key))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return [re.sub(r"\.(ipynb|md)$", "", f) for f in files]


def notebook_outputs(path: Path) -> tuple[int, int]:
    """(number of image outputs, number of widget outputs) stored in a notebook."""
    nb = json.loads(path.read_text(encoding="utf8"))
    images = widgets = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            images += any(m in data for m in IMAGE_MIMES)
            widgets += WIDGET_VIEW in data
    return images, widgets


def _caption_text(caption_html: str) -> str:
    """A figcaption's words: no "Fig. 2.1" number, no permalink, no tags or MathJax delimiters."""
    text = re.sub(r'<span class="caption-number">.*?</span>', "", caption_html, flags=re.S)
    text = re.sub(r'<a class="headerlink".*?</a>', "", text, flags=re.S)
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", text))
    text = text.replace("\\(", "").replace("\\)", "")
    return re.sub(r"\s+", " ", text).strip()


def _words(text: str) -> str:
    # alt text and caption are compared on letters and digits only: spacing and punctuation around maths differ
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def figure_alt_problems(html: str, rel: str) -> list[str]:
    """Images of captioned figures whose alt text is missing, a file name, or not their caption."""
    problems = []
    for number, figure in enumerate(FIGURE.finditer(html), 1):
        caption = FIGCAPTION.search(figure.group(1))
        if caption is None:
            continue
        caption_text = _caption_text(caption.group(1))
        for tag in IMG_TAG.findall(figure.group(1)):
            match = ALT_ATTR.search(tag)
            alt = html_lib.unescape(next(g for g in match.groups() if g is not None)).strip() if match else ""
            where = f"{rel}: figure {number} ({caption_text[:40]!r})"
            if not alt:
                problems.append(f"{where}: its image has no alt text")
            elif FILE_NAME.search(alt):
                problems.append(f"{where}: its image's alt text is a file name ({alt[:60]!r})")
            elif _words(alt) != _words(caption_text):
                problems.append(f"{where}: its image's alt text is not its caption ({alt[:60]!r})")
    return problems


def check_page(html: str, rel: str) -> list[str]:
    """Problems with any page: CDNs, remote resources, MathJax not the vendored one."""
    problems = []
    for match in CDN_HOSTS.finditer(html):
        problems.append(f"{rel}: references a CDN ({match.group(0)})")
        break
    match = REMOTE_RESOURCE.search(html)
    if match:
        problems.append(f"{rel}: loads a remote resource ({match.group(0)[:80]!r})")
    if 'class="math' in html and "vendor/mathjax/tex-chtml.js" not in html:
        problems.append(f"{rel}: has maths but does not load the vendored MathJax")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", type=Path, help="the built HTML folder, e.g. _build/html")
    parser.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    args = parser.parse_args(argv)

    html_dir: Path = args.html_dir
    if not html_dir.is_dir():
        print(f"check_book: {html_dir} is not a folder (build the book first: make book)", file=sys.stderr)
        return 1
    source_root = args.toc.resolve().parent
    problems: list[str] = []
    n_figures = 0

    for name, rel in VENDORED.items():
        if not (html_dir / rel).is_file():
            problems.append(f"vendored {name} missing from the build: {rel} (run bash scripts/vendor_js.sh)")

    for page in sorted(html_dir.rglob("*.html")):
        rel = page.relative_to(html_dir).as_posix()
        if rel.startswith(("_static/", "_sources/", "_images/")):
            continue
        text = page.read_text(encoding="utf8", errors="replace")
        problems += check_page(text, rel)
        problems += figure_alt_problems(text, rel)
        n_figures += len(FIGURE.findall(text))
    for css in sorted((html_dir / "_static").rglob("*.css")) if (html_dir / "_static").is_dir() else []:
        rel = css.relative_to(html_dir).as_posix()
        if rel.startswith("_static/vendor/"):
            continue
        text = css.read_text(encoding="utf8", errors="replace")
        if CDN_HOSTS.search(text) or REMOTE_RESOURCE.search(text):
            problems.append(f"{rel}: stylesheet loads a remote resource")

    n_notebooks = n_images = n_widgets = 0
    docs = toc_files(args.toc)
    for doc in docs:
        page = html_dir / f"{doc}.html"
        notebook = source_root / f"{doc}.ipynb"
        if not page.is_file():
            problems.append(f"{doc}: listed in _toc.yml but {page.relative_to(html_dir)} was not built")
            print(f"  MISSING  {doc}")
            continue
        html = page.read_text(encoding="utf8", errors="replace")
        size_mb = page.stat().st_size / 1e6
        status = [f"{size_mb:.2f} MB"]
        before = len(problems)
        if size_mb > PAGE_LIMIT_MB:
            problems.append(f"{doc}: the page is {size_mb:.2f} MB, over the {PAGE_LIMIT_MB:g} MB limit")
        for marker in GRADER_MARKERS if notebook.is_file() and "/course/" in doc else ():
            if marker in html:
                # an assignment's solutions or hidden tests leaked into the student page
                problems.append(f"{doc}: the page contains the grader marker {marker!r}")
        if notebook.is_file():
            n_notebooks += 1
            images, widgets = notebook_outputs(notebook)
            page_images = html.count("<img")
            status.append(f"{images} image outputs / {page_images} <img>")
            if images and not page_images:
                problems.append(f"{doc}: the notebook has {images} image outputs but the page has no <img")
            n_images += images
            if widgets:
                n_widgets += widgets
                status.append(f"{widgets} widgets")
                if WIDGET_STATE not in html:
                    problems.append(f"{doc}: the notebook has widget outputs but the page has no {WIDGET_STATE}")
                for key in ("require", "embed"):
                    if VENDORED[key].replace("_static/", "") not in html:
                        problems.append(f"{doc}: has widgets but does not load the vendored {VENDORED[key]}")
        verdict = "ok" if len(problems) == before else "FAIL"
        print(f"  {verdict:<8} {doc}" + (f"  ({', '.join(status)})" if status else ""))

    if not (html_dir / "index.html").is_file():
        problems.append("index.html missing")

    print(
        f"check_book: {len(docs)} toc entries ({n_notebooks} notebooks, {n_images} image outputs, "
        f"{n_widgets} widget outputs, {n_figures} figures checked for alt text), {len(problems)} problem(s)"
    )
    for problem in problems:
        print(f"  PROBLEM  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
