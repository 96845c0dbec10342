"""Fast checks of the book's sources: the TOC, the stored notebooks and the offline configuration.

These do not build the book (``make book`` does); they catch the mistakes that would otherwise only show up as
a failed strict build, an nbval failure on another machine, or a page that needs the internet.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
TOC = ROOT / "_toc.yml"
CONFIG = ROOT / "_config.yml"
BIB = BOOK / "references.bib"

CDN = re.compile(r"cdn\.jsdelivr|unpkg\.com|cdnjs|googleapis|gstatic|bootstrapcdn|cdn\.mathjax|fontawesome\.com", re.I)
# Sources whose output changes run to run (or is a widget): nbval must not compare it. Cells that display a
# widget are also caught by their stored widget-view output.
VOLATILE_SOURCE = re.compile(
    r"\binteract(?:ive)?\s*\(|\binteract_manual\b|\bdisplay\s*\(\s*\w*widget"
    r"|%%?timeit|%%?time\b|\bperf_counter\b|\btime\.time\s*\(|\btimeit\.|\btqdm\b|progress\s*=\s*True"
)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _load_check_book():
    spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toc_entries() -> list[str]:
    # One TOC walker for the build check and the tests.
    return _load_check_book().toc_files(TOC)


def _resolve(entry: str) -> Path | None:
    base = ROOT / entry
    if base.suffix in (".md", ".ipynb"):
        return base if base.is_file() else None
    for suffix in (".ipynb", ".md"):
        if base.with_suffix(suffix).is_file():
            return base.with_suffix(suffix)
    return None


NOTEBOOKS = sorted(p for p in BOOK.glob("*.ipynb"))
NB_IDS = [p.name for p in NOTEBOOKS]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


# ---------------------------------------------------------------- the table of contents


def test_toc_root_and_parts():
    toc = yaml.safe_load(TOC.read_text(encoding="utf8"))
    assert toc["format"] == "jb-book"
    assert toc["root"] == "book/intro"
    # An uncaptioned toctree (a part's "Further reading") continues the part before it without taking a number.
    captions = [part["caption"] for part in toc["parts"] if "caption" in part]
    order = [
        "Front matter",
        "Part I: Moments of Affine-ReLU-Affine",
        "Part II: Deep networks",
        "Part III: Attacks",
        "Part IV: Course assignments",
        "Reference",
        "Appendix",
        "Back matter",
    ]
    assert set(captions) <= set(order), f"unexpected part captions: {set(captions) - set(order)}"
    assert captions == [c for c in order if c in captions], "parts are out of order"
    assert captions[0] == "Front matter" and captions[-1] == "Back matter"
    for part in toc["parts"]:
        assert part.get("chapters"), f"part {part.get('caption')!r} has no chapters (the strict build rejects it)"


def test_every_toc_entry_exists():
    missing = [e for e in _toc_entries() if _resolve(e) is None]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_toc_has_no_duplicates():
    entries = [re.sub(r"\.(md|ipynb)$", "", e) for e in _toc_entries()]
    assert len(entries) == len(set(entries))


def test_every_notebook_is_in_the_toc():
    listed = {_resolve(e) for e in _toc_entries()}
    unlisted = [p.name for p in NOTEBOOKS if p not in listed]
    assert not unlisted, f"notebooks missing from _toc.yml (they would not be built): {unlisted}"


def test_numbered_chapters_in_order():
    numbered = [Path(e).name for e in _toc_entries() if re.match(r"\d\d_", Path(e).name)]
    assert numbered == sorted(numbered), f"numbered chapters out of order in _toc.yml: {numbered}"


# ---------------------------------------------------------------- the notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_first_code_cell_is_matplotlib_inline(path):
    cells = _code_cells(_load(path))
    assert cells, "a chapter notebook with no code"
    assert "%matplotlib inline" in _source(cells[0])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_is_stored_executed(path):
    nb = _load(path)
    unexecuted = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c.get("execution_count") is None]
    assert not unexecuted, f"code cells never executed (nbval needs stored outputs): {unexecuted}"
    errors = [
        i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
        for out in c.get("outputs", []) if out.get("output_type") == "error"
    ]
    assert not errors, f"cells stored with an error output: {errors}"
    counts = [c["execution_count"] for c in _code_cells(nb)]
    assert counts == sorted(counts), "cells executed out of order (re-run the whole notebook)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_volatile_cells_are_tagged(path):
    untagged = []
    for i, cell in enumerate(_code_cells(_load(path))):
        tags = cell.get("metadata", {}).get("tags", [])
        volatile = VOLATILE_SOURCE.search(_source(cell)) or any(
            WIDGET_VIEW in out.get("data", {}) for out in cell.get("outputs", [])
        )
        if volatile and "nbval-ignore-output" not in tags:
            untagged.append(i)
    assert not untagged, f"code cells with widgets/timing/progress bars not tagged nbval-ignore-output: {untagged}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_does_not_touch_the_backend(path):
    for cell in _code_cells(_load(path)):
        src = _source(cell)
        assert "MPLBACKEND" not in src, "never set MPLBACKEND: it hides figures from the book"
        assert not re.search(r"matplotlib\.use\s*\(", src), "never switch the matplotlib backend in a chapter"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NB_IDS)
def test_notebook_uses_the_python3_kernel(path):
    assert _load(path)["metadata"].get("kernelspec", {}).get("name") == "python3"


# ---------------------------------------------------------------- citations


def _bib_keys() -> set[str]:
    return set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", BIB.read_text(encoding="utf8")))


def test_bibliography_has_the_papers():
    keys = _bib_keys()
    for key in ("bibi2018analytic", "alfadly2020network", "genz2004numerical", "owen1956tables",
                "drezner1990computation", "lecun1998gradient"):
        assert key in keys


def test_every_citation_is_defined():
    keys = _bib_keys()
    texts = [p.read_text(encoding="utf8") for p in BOOK.glob("*.md")]
    texts += ["\n".join(_source(c) for c in _load(p)["cells"] if c["cell_type"] == "markdown") for p in NOTEBOOKS]
    cited = set()
    for text in texts:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
            cited.update(k.strip() for k in group.split(","))
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"


# ---------------------------------------------------------------- offline configuration


def test_config_has_no_cdn():
    text = CONFIG.read_text(encoding="utf8")
    assert not CDN.search(text)
    assert not re.search(r"https?://", text), "_config.yml must not point the book at the network"


def test_config_is_strict_and_offline():
    config = yaml.safe_load(CONFIG.read_text(encoding="utf8"))
    assert config["execute"]["execute_notebooks"] == "force"
    assert config["only_build_toc_files"] is True
    sphinx = config["sphinx"]["config"]
    assert "sphinx_thebe" not in sphinx["extensions"]
    assert {"sphinx_exercise", "sphinxcontrib.bibtex", "myst_nb"} <= set(sphinx["extensions"])
    assert "_static_vendor" in sphinx["html_static_path"]
    assert sphinx["mathjax_path"].startswith("vendor/mathjax/")
    widget_js = list(sphinx["nb_ipywidgets_js"])
    assert any(p.endswith("require.js") for p in widget_js) and any(p.endswith("embed-amd.js") for p in widget_js)
    assert not any("//" in p for p in widget_js)
    # A root-level _static/ would make Jupyter Book inject every .js under html_static_path into every page.
    assert not (ROOT / "_static").exists()


def test_vendor_script_provides_what_the_config_loads():
    config = yaml.safe_load(CONFIG.read_text(encoding="utf8"))["sphinx"]["config"]
    script = (ROOT / "scripts" / "vendor_js.sh").read_text(encoding="utf8")
    assert "npm pack" in script
    for path in [config["mathjax_path"], *config["nb_ipywidgets_js"]]:
        folder, name = path.split("/")[-2:]
        assert f"{folder}/" in script and name in script, f"{path} is loaded but vendor_js.sh does not provide it"


# ---------------------------------------------------------------- the teaching structure (d2l's arc)

CHAPTERS = [p for p in NOTEBOOKS if re.match(r"\d\d_", p.name)]
CHAPTER_IDS = [p.name for p in CHAPTERS]
EXERCISE = re.compile(r"```\{exercise\}([^\n]*)\n:label: ([\w-]+)")
SOLUTION = re.compile(r"```\{solution\} ([\w-]+)")
DIFFICULTY = re.compile(r"\((★{1,3})(, open)?\)\s*$")
# "chapter 4" written as plain text instead of a {doc} link; code (indented or fenced) and links are exempt.
PLAIN_CHAPTER_REF = re.compile(r"(?<![\[`/<{])\b[Cc]hapters? \d\b")


def _markdown_prose(nb: dict) -> str:
    """The chapter's markdown with fenced code, math blocks and indented code removed."""
    kept, stack = [], []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for line in _source(cell).split("\n"):
            if line.startswith("```"):
                if stack and line.strip() == "```":
                    stack.pop()
                else:
                    kind = line[3:].strip()
                    stack.append(kind.startswith("{") and not kind.startswith(("{code", "{math")))
                continue
            if all(stack) and not line.startswith("    "):
                kept.append(line)
    return "\n".join(kept)


def test_teaching_checks_can_fail():
    # The checks below must reject what they are meant to catch.
    assert PLAIN_CHAPTER_REF.search("as chapter 4 shows") and not PLAIN_CHAPTER_REF.search(
        "as {doc}`chapter 4 <04_network_moments>` shows")
    assert not DIFFICULTY.search("Whitening") and DIFFICULTY.search("Other activations (★★★, open)").group(2)
    fake = {"cells": [{"cell_type": "markdown", "source": "see chapter 2\n```python\nchapter 3\n```\n    chapter 5"}]}
    assert PLAIN_CHAPTER_REF.findall(_markdown_prose(fake)) == ["chapter 2"]


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_opens_with_a_question_and_a_box(path):
    opening = _source(_load(path)["cells"][0])
    assert "**The question.**" in opening, "the first cell should pose the chapter's motivating question"
    box = opening[opening.find("This chapter at a glance"):]
    assert "This chapter at a glance" in opening, "the first cell should hold the 'at a glance' box"
    for part in ("**Learning objectives.**", "**Prerequisites.**", "**Time.**"):
        assert part in box, f"the box lacks {part}"


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_has_summary_and_marked_exercises(path):
    prose = "\n".join(_source(c) for c in _load(path)["cells"] if c["cell_type"] == "markdown")
    assert "## Summary" in prose and "## Exercises" in prose
    exercises = EXERCISE.findall(prose)
    solved = set(SOLUTION.findall(prose))
    assert len(exercises) >= 4, f"{len(exercises)} exercises, at least 4 expected"
    unmarked = [label for title, label in exercises if not DIFFICULTY.search(title)]
    assert not unmarked, f"exercises without a difficulty mark (★, ★★, ★★★): {unmarked}"
    open_ = [label for title, label in exercises if DIFFICULTY.search(title).group(2)]
    assert open_, "no open problem (title ending '(★★★, open)')"
    assert not set(open_) & solved, f"open problems must have no solution: {set(open_) & solved}"
    unsolved = [label for title, label in exercises if label not in open_ and label not in solved]
    assert not unsolved, f"exercises without a solution: {unsolved}"


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_references_are_links(path):
    plain = PLAIN_CHAPTER_REF.findall(_markdown_prose(_load(path)))
    assert not plain, f"plain-text chapter references (use {{doc}} links): {plain}"


CLAIMED_RUN_TIME = re.compile(r"the notebook runs in about (a minute|\d+ seconds|\d+ minutes)")


def _claimed_seconds(text: str) -> float:
    phrase = CLAIMED_RUN_TIME.search(text).group(1)
    if phrase == "a minute":
        return 60.0
    number, unit = phrase.split()
    return float(number) * (60 if unit == "minutes" else 1)


def _stored_run_seconds(nb: dict) -> float | None:
    from datetime import datetime

    stamps = [c["metadata"].get("execution", {}) for c in _code_cells(nb)]
    stamps = [s for s in stamps if "iopub.execute_input" in s and "shell.execute_reply" in s]
    if not stamps:
        return None
    parse = lambda s: datetime.fromisoformat(s.rstrip("Z"))  # noqa: E731
    return (parse(stamps[-1]["shell.execute_reply"]) - parse(stamps[0]["iopub.execute_input"])).total_seconds()


def test_run_time_parser():
    assert _claimed_seconds("the notebook runs in about 35 seconds on") == 35
    assert _claimed_seconds("the notebook runs in about a minute on") == 60
    assert _claimed_seconds("the notebook runs in about 2 minutes") == 120


@pytest.mark.parametrize("path", CHAPTERS + [BOOK / "A1_phi2_quadrature.ipynb"], ids=CHAPTER_IDS + ["A1"])
def test_box_run_time_matches_the_stored_execution(path):
    # The box's run time was measured on an idle machine; the stored notebook may have been executed under load,
    # so only a gross mismatch (a claim off by more than 4x either way) fails.
    nb = _load(path)
    claimed = _claimed_seconds(_source(nb["cells"][0]))
    stored = _stored_run_seconds(nb)
    assert stored is not None, "no execution timestamps stored (execute with nbconvert --execute)"
    assert claimed / 4 <= stored <= claimed * 4, f"the box says about {claimed:.0f} s, the stored run took {stored:.0f} s"
