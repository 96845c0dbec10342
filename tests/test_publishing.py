"""Publishing without building the book: the Pages workflow, the launch-button configuration and the PDF's layout.

- ``.github/workflows/book.yml`` builds with ``make book`` and uploads ``_build/html`` to GitHub Pages.
- ``scripts/book_config.py`` turns the repository, Binder and Colab buttons on only when a repository URL is
  given (``make book REPOSITORY_URL=...``); the committed ``_config.yml`` keeps them off and the download
  button on.
- ``scripts/make_pdf.py`` prints pages in ``_toc.yml`` order and numbers its contents consistently
  (the printing itself is tested in ``tests/test_pdf.py``).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
CONFIG = ROOT / "_config.yml"
URL = "https://github.com/someone/netmoments"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


book_config = _load("book_config")
make_pdf = _load("make_pdf")
check_book = _load("check_book")


@pytest.fixture(scope="module")
def committed() -> dict:
    return yaml.safe_load(CONFIG.read_text(encoding="utf8"))


# --- the Pages workflow -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf8"))


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_workflow_runs_on_push_to_main(workflow):
    # YAML 1.1 reads the bare key `on` as the boolean True.
    triggers = workflow.get("on", workflow.get(True))
    assert "main" in triggers["push"]["branches"]


def test_workflow_builds_with_make_book_and_publishes_the_html(workflow):
    steps = _steps(workflow)
    runs = [step.get("run", "") for step in steps]
    builds = [i for i, run in enumerate(runs) if re.search(r"^\s*make book\b", run, re.M)]
    assert builds, "no step runs `make book`"
    uploads = [i for i, step in enumerate(steps) if step.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert uploads, "no step uploads a Pages artifact"
    assert steps[uploads[0]]["with"]["path"].rstrip("/") == "_build/html"
    assert builds[0] < uploads[0], "the artifact is uploaded before the book is built"
    assert any(step.get("uses", "").startswith("actions/deploy-pages@") for step in steps)
    assert workflow["permissions"].get("pages") == "write" and workflow["permissions"].get("id-token") == "write"


def test_workflow_gives_the_build_a_repository_url(workflow):
    build = next(step["run"] for step in _steps(workflow) if "make book" in step.get("run", ""))
    assert "REPOSITORY_URL=" in build and "github.repository" in build


# --- launch buttons -----------------------------------------------------------------------------------------


def test_committed_config_has_every_server_button_off(committed):
    assert not any(book_config.buttons_on(committed).values()), book_config.buttons_on(committed)
    assert not (committed.get("repository") or {}).get("url")


def test_download_button_is_not_turned_off(committed):
    # sphinx-book-theme shows it unless html_theme_options sets use_download_button to false; Jupyter Book 1's
    # html: section has no key for it.
    theme = ((committed.get("sphinx") or {}).get("config") or {}).get("html_theme_options") or {}
    assert theme.get("use_download_button", True) is not False
    assert "use_download_button" not in (committed.get("html") or {}), "Jupyter Book 1 ignores html.use_download_button"


@pytest.mark.parametrize("url", [None, ""])
def test_no_url_leaves_the_config_unchanged(committed, url):
    assert book_config.launch_config(committed, url) == committed


def test_url_turns_on_repository_binder_and_colab(committed):
    out = book_config.launch_config(committed, URL + ".git/", branch="pages")
    on = book_config.buttons_on(out)
    assert on["use_repository_button"] and on["use_issues_button"]
    assert on["binderhub_url"] and on["colab_url"]
    assert not on["thebe"], "thebe loads a kernel client from a CDN on every page"
    assert out["repository"]["url"] == URL
    assert out["repository"]["branch"] == "pages"
    assert out["launch_buttons"]["binderhub_url"].startswith("https://")
    # everything else is the committed configuration
    for key in set(committed) - {"repository", "html", "launch_buttons", "sphinx"}:
        assert out[key] == committed[key], key
    assert committed["repository"]["url"] == "", "launch_config modified its input"


def test_gitlab_url_gets_binder_but_no_colab(committed):
    on = book_config.buttons_on(book_config.launch_config(committed, "https://gitlab.com/someone/netmoments"))
    assert on["binderhub_url"] and not on["colab_url"]


@pytest.mark.parametrize("bad", ["github.com/someone/netmoments", "http://github.com/a/b", "https://example.org/a/b",
                                 "https://github.com/someone", "https://github.com/a/b/tree/main"])
def test_bad_url_is_refused(committed, bad):
    with pytest.raises(ValueError, match="repository URL"):
        book_config.launch_config(committed, bad)


def test_local_extensions_resolve_from_anywhere(committed, tmp_path):
    # Jupyter Book resolves local_extensions against the config file's folder; the copy lives in _build/.
    out = book_config.launch_config(committed, URL, config_dir=ROOT)
    for name, path in ((out.get("sphinx") or {}).get("local_extensions") or {}).items():
        assert Path(path).is_absolute() and (Path(path) / f"{name}.py").is_file(), (name, path)


def test_cli_writes_a_config_jupyter_book_accepts(tmp_path):
    out = tmp_path / "launch" / "_config.yml"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "book_config.py"), "--repository-url", URL,
                           "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load(out.read_text(encoding="utf8"))
    assert written["repository"]["url"] == URL
    from jupyter_book.config import get_final_config

    # get_final_config appends the local extensions' folders to sys.path: leave the test process as it was.
    saved = list(sys.path)
    try:
        sphinx_config, _ = get_final_config(user_yaml=out, cli_config={"latex_individualpages": False},
                                            validate=True, raise_on_invalid=True)
    finally:
        sys.path[:] = saved
    theme = sphinx_config["html_theme_options"]
    assert theme["repository_url"] == URL and theme["use_repository_button"] is True
    assert theme["launch_buttons"]["colab_url"] and theme["launch_buttons"]["binderhub_url"]


def test_cli_refuses_a_bad_url_and_the_committed_file(tmp_path):
    script = str(ROOT / "scripts" / "book_config.py")
    bad = subprocess.run([sys.executable, script, "--repository-url", "https://example.org/a/b", "--out",
                          str(tmp_path / "c.yml")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not a repository URL" in bad.stderr
    assert not (tmp_path / "c.yml").exists()
    same = subprocess.run([sys.executable, script, "--repository-url", URL, "--config", str(tmp_path / "x.yml"),
                           "--out", str(tmp_path / "x.yml")], capture_output=True, text=True, timeout=60)
    assert same.returncode == 1 and "refusing" in same.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_book_passes_the_generated_config_only_with_a_url():
    def dry_run(*args):
        done = subprocess.run(["make", "-n", "book", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if "jupyter-book build" in line]

    plain, = dry_run()
    assert "--config" not in plain
    published, = dry_run(f"REPOSITORY_URL={URL}")
    assert "--config _build/launch/_config.yml" in published


# --- the PDF's layout (no browser) --------------------------------------------------------------------------


def test_pdf_follows_the_toc_order():
    outline = make_pdf.toc_outline(ROOT / "_toc.yml")
    assert [doc for doc, _ in outline] == check_book.toc_files(ROOT / "_toc.yml")
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf8"))
    captions = [part["caption"] for part in toc["parts"] if part.get("caption")]
    seen = [part for _, part in outline if part]
    assert list(dict.fromkeys(seen)) == captions, "every part, in order"
    assert outline[0][1] == ""
    # A part without a caption (a chapter kept out of the numbering) belongs to the part before it.
    for i, part in enumerate(toc["parts"]):
        if i and not part.get("caption"):
            doc = make_pdf._strip_suffix(part["chapters"][0]["file"])
            assert dict(outline)[doc] == [p for p in toc["parts"][:i] if p.get("caption")][-1]["caption"]


def test_contents_numbers_chapters_after_the_front_matter():
    chapters = [make_pdf.Chapter("a", "Part I", "1. First <one>", n_pages=3, first_page=0),
                make_pdf.Chapter("b", "Part I", "2. Second", n_pages=5, first_page=3),
                make_pdf.Chapter("c", "Back", "Bibliography", n_pages=1, first_page=8)]
    page = make_pdf.front_matter_html("T & T", "A", "2026-01-01", chapters, offset=2)
    numbers = [int(n) for n in re.findall(r'<span class="num">(\d+)</span>', page)]
    assert numbers == [3, 6, 11]
    assert "1. First &lt;one&gt;" in page and "T &amp; T" in page
    assert page.count('class="part"') == 2


def test_page_numbers_skip_the_title_page():
    sheets = make_pdf.numbers_html(5, first_numbered=1)
    assert sheets.count("class='sheet'") == 5
    assert re.findall(r"<span>(\d+)</span>", sheets) == ["2", "3", "4", "5"]
