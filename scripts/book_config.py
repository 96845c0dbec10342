#!/usr/bin/env python
"""Write a copy of ``_config.yml`` with the repository and launch buttons turned on, for a published book.

    python scripts/book_config.py --repository-url https://github.com/OWNER/netmoments [--branch main] \
        --out _build/launch/_config.yml
    jupyter-book build . --config _build/launch/_config.yml ...

(``make book REPOSITORY_URL=https://github.com/OWNER/netmoments`` does both.) The committed ``_config.yml``
keeps every button that points at a server off, so the default build names no repository. Given a URL, the copy
turns on the repository and issues buttons and, on every page built from a notebook, launch buttons for Binder
and (for GitHub) Colab, which open that notebook from the repository. They are plain links: the build itself
stays offline. The download button (the page as .ipynb, source or print-to-PDF) is sphinx-book-theme's
``use_download_button`` theme option, on by default, and is left alone.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BINDERHUB_URL = "https://mybinder.org"
COLAB_URL = "https://colab.research.google.com"
# sphinx-book-theme reads the last two path parts as owner/repository and recognises these hosts.
REPO_URL = re.compile(r"^https://(?P<host>github\.com|gitlab\.com|bitbucket\.org)/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)$")
LAUNCH_KEYS = ("binderhub_url", "jupyterhub_url", "colab_url", "deepnote_url")
REPOSITORY_BUTTONS = ("use_repository_button", "use_issues_button")


def normalize_repository_url(url: str) -> str:
    """``https://github.com/owner/repo`` from the URL as typed (trailing slash or ``.git`` dropped).

    Raises ValueError for anything that is not an https URL of a GitHub, GitLab or Bitbucket repository.
    """
    cleaned = url.strip().rstrip("/")
    if cleaned.endswith(".git"):
        cleaned = cleaned[: -len(".git")]
    if not REPO_URL.match(cleaned):
        raise ValueError(f"not a repository URL: {url!r} (expected https://github.com/OWNER/REPO; GitLab and "
                         "Bitbucket URLs work too, without the Colab button)")
    return cleaned


def launch_config(config: dict, repository_url: str | None, branch: str = "main",
                  config_dir: Path = ROOT) -> dict:
    """The book configuration with the repository and launch buttons on for ``repository_url``.

    ``config`` is the parsed ``_config.yml`` (not modified). With ``repository_url`` None or empty the result
    equals ``config``: every server button stays as committed (off). ``config_dir`` is where ``_config.yml``
    lives: Jupyter Book resolves ``sphinx.local_extensions`` paths against the config file's folder, so the copy
    names them absolutely and can be written anywhere.
    """
    out = copy.deepcopy(config)
    if not repository_url:
        return out
    url = normalize_repository_url(repository_url)
    host = REPO_URL.match(url).group("host")
    if not branch or not re.fullmatch(r"[\w./-]+", branch):
        raise ValueError(f"not a branch name: {branch!r}")
    # Pages are named from the repository root (book/01_....ipynb), so the path to the book is empty.
    out["repository"] = {"url": url, "branch": branch, "path_to_book": ""}
    html = out.setdefault("html", {})
    for key in REPOSITORY_BUTTONS:
        html[key] = True
    launch = out.setdefault("launch_buttons", {})
    launch["notebook_interface"] = "jupyterlab"
    launch["binderhub_url"] = BINDERHUB_URL
    # Colab opens notebooks from GitHub only; sphinx-book-theme warns (a failure under -W) for other hosts.
    launch["colab_url"] = COLAB_URL if host == "github.com" else ""
    # Thebe would load its kernel client from a CDN on every page: the book stays offline until a reader clicks.
    launch["thebe"] = False
    local = (out.get("sphinx") or {}).get("local_extensions") or {}
    for name, path in local.items():
        local[name] = str((Path(config_dir) / path).resolve())
    return out


def buttons_on(config: dict) -> dict[str, bool]:
    """Which server buttons a configuration turns on: repository, issues, and each launch service."""
    html = config.get("html") or {}
    launch = config.get("launch_buttons") or {}
    on = {key: bool(html.get(key)) for key in REPOSITORY_BUTTONS}
    on.update({key: bool(launch.get(key)) for key in LAUNCH_KEYS})
    on["thebe"] = bool(launch.get("thebe"))
    return on


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository-url", required=True, help="https://github.com/OWNER/REPO")
    ap.add_argument("--branch", default="main", help="the branch the launch buttons open (default: main)")
    ap.add_argument("--config", type=Path, default=ROOT / "_config.yml")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.out.resolve() == args.config.resolve():
        print("book_config: refusing to overwrite the committed configuration", file=sys.stderr)
        return 1
    config = yaml.safe_load(args.config.read_text(encoding="utf8"))
    try:
        out = launch_config(config, args.repository_url, args.branch, args.config.resolve().parent)
    except ValueError as err:
        print(f"book_config: {err}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Generated by scripts/book_config.py from {args.config.name} for {out['repository']['url']}; "
              "do not edit.\n")
    args.out.write_text(header + yaml.safe_dump(out, sort_keys=False, allow_unicode=True), encoding="utf8")
    on = [key for key, value in buttons_on(out).items() if value]
    print(f"book_config: {args.out} ({', '.join(on)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
