#!/usr/bin/env python
"""Open a built page in headless Chromium with the network cut off, screenshot it, and check what rendered.

    python scripts/check_offline.py [_build/html/book/02_one_relu_one_gaussian.html] [--out shot.png]

Chromium runs with a fresh profile, background networking off and every host name resolving to nothing, so
anything the page tried to fetch from the internet would be missing. After the page's JavaScript has run
(``--virtual-time-budget``) the script reads the rendered DOM and fails (exit 1) when the page has maths that
MathJax did not typeset, saved widgets that the widget manager did not draw, or figures missing. The screenshot
is for a person to look at. Skips (exit 0, with a message) when no Chromium is installed:
``apt-get install -y chromium``.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PAGE = ROOT / "_build" / "html" / "book" / "02_one_relu_one_gaussian.html"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_args(browser: str, profile: str, budget_ms: int, window: str) -> list[str]:
    return [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        # No network: every host name fails to resolve (file:// is unaffected).
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        f"--window-size={window}",
    ]


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def rendered_counts(dom: str) -> dict[str, int]:
    return {
        "typeset maths (mjx-container)": len(re.findall(r"<mjx-container\b", dom)),
        "drawn widgets (.widget-*)": len(re.findall(r'class="[^"]*\bwidget-(?:slider|hslider|vbox|hbox|output|inline-hbox|dropdown|checkbox)\b', dom)),
        "images (<img)": len(re.findall(r"<img\b", dom)),
        "MathJax errors (mjx-merror)": len(re.findall(r"<mjx-merror\b", dom)),
    }


def source_counts(html: str) -> dict[str, int]:
    return {
        "maths": len(re.findall(r'class="math\b|class="[^"]*\bmath notranslate', html)),
        "widget views": html.count("application/vnd.jupyter.widget-view+json"),
        "images": len(re.findall(r"<img\b", html)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", type=Path, default=DEFAULT_PAGE, help="a built .html page")
    parser.add_argument("--out", type=Path, default=None, help="screenshot path (default: _build/offline_<page>.png)")
    parser.add_argument("--window-size", default="1280,3000", help="WIDTH,HEIGHT of the screenshot")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time the page's JavaScript gets")
    parser.add_argument("--timeout", type=float, default=180.0, help="wall-clock limit per Chromium run, seconds")
    args = parser.parse_args(argv)

    browser = find_browser()
    if browser is None:
        print("check_offline: SKIPPED - no Chromium found (apt-get install -y chromium)")
        return 0
    page = args.page.resolve()
    if not page.is_file():
        print(f"check_offline: {page} does not exist (build the book first: make book)", file=sys.stderr)
        return 1
    out = (args.out or ROOT / "_build" / f"offline_{page.stem}.png").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    url = page.as_uri()

    with tempfile.TemporaryDirectory(prefix="nm-chromium-") as profile:
        base = chromium_args(browser, profile, args.budget_ms, args.window_size)
        dump = run(base + ["--dump-dom", url], args.timeout)
    with tempfile.TemporaryDirectory(prefix="nm-chromium-") as profile:
        base = chromium_args(browser, profile, args.budget_ms, args.window_size)
        shot = run(base + [f"--screenshot={out}", url], args.timeout)

    if dump.returncode != 0 or not dump.stdout:
        print(f"check_offline: Chromium failed to render {url}:\n{dump.stderr[-2000:]}", file=sys.stderr)
        return 1
    expected = source_counts(page.read_text(encoding="utf8", errors="replace"))
    got = rendered_counts(dump.stdout)
    print(f"check_offline: {page.relative_to(ROOT) if page.is_relative_to(ROOT) else page}")
    print(f"  in the page source: {expected}")
    print(f"  after JavaScript:   {got}")

    problems = []
    if expected["maths"] and not got["typeset maths (mjx-container)"]:
        problems.append("the page has maths but MathJax typeset none of it")
    if got["MathJax errors (mjx-merror)"]:
        problems.append(f"MathJax reported {got['MathJax errors (mjx-merror)']} error(s) in the maths")
    if expected["widget views"] and not got["drawn widgets (.widget-*)"]:
        problems.append("the page has saved widgets but none was drawn")
    if expected["images"] and got["images (<img)"] < expected["images"]:
        problems.append("images went missing")
    if shot.returncode != 0 or not out.is_file():
        problems.append(f"no screenshot written ({shot.stderr[-500:]})")
    else:
        print(f"  screenshot: {out}")
    for problem in problems:
        print(f"  PROBLEM  {problem}")
    print("check_offline: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
