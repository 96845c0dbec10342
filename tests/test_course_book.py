"""Part IV of the book: the student notebooks are the tool's release of the sources, executed, with no solution.

Static checks (no build, no kernel): they compare ``book/course/<assignment>.ipynb`` with
``netmoments/course/source/<assignment>/<assignment>.ipynb`` cell by cell, the way nbgrader's release turns one
into the other, so a source edited without ``python course/update_book.py`` is caught here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from netmoments.course import checks, grading

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book" / "course"
NAMES = grading.ASSIGNMENTS
SOLUTION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION\n?", re.S)
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS\n?", re.S)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf8"))


def _src(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _meaningful_lines(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_part_iv_lists_the_instructors_page_and_every_assignment():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    part = next(p for p in toc["parts"] if p.get("caption", "").startswith("Part IV"))
    files = [c["file"] for c in part["chapters"]]
    assert files == ["book/course/instructors"] + [f"book/course/{n}" for n in NAMES]
    assert (BOOK / "instructors.md").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_book_notebook_is_the_student_version_of_the_source(name):
    source = _load(grading.source_notebook(name))
    student = _load(BOOK / f"{name}.ipynb")
    assert len(student["cells"]) == len(source["cells"])
    for src_cell, cell in zip(source["cells"], student["cells"]):
        meta = src_cell.get("metadata", {}).get("nbgrader", {})
        text, book_text = _src(src_cell), _src(cell)
        if meta.get("solution"):
            assert grading.CODE_STUB.splitlines()[-1] in book_text and "BEGIN SOLUTION" not in book_text
            for line in _meaningful_lines("".join(SOLUTION.findall(text))):
                assert line not in book_text, f"{name}: solution line {line!r} is in the book"
            assert SOLUTION.sub(lambda _: grading.CODE_STUB, text).replace(" ", "") \
                .replace("\n", "") == book_text.replace(" ", "").replace("\n", ""), f"{name}: stale blank"
        elif meta.get("grade"):
            hidden = "".join(HIDDEN.findall(text))
            assert hidden and "HIDDEN" not in book_text, f"{name}: {meta['grade_id']}"
            assert HIDDEN.sub("", text).strip() == book_text.strip(), f"{name}: stale test cell {meta['grade_id']}"
        else:
            assert text == book_text, f"{name}: stale cell {text[:60]!r}"


@pytest.mark.parametrize("name", NAMES)
def test_book_notebook_is_executed_and_only_tagged_cells_raise(name):
    student = _load(BOOK / f"{name}.ipynb")
    code = [c for c in student["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "store the book's student notebooks executed"
    for cell in code:
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            assert "raises-exception" in cell.get("metadata", {}).get("tags", []), _src(cell)[:80]
            # NotDone: an unfilled blank (a NotImplementedError); AssertionError: a Check with failed cases.
            assert errors[0]["ename"] in ("NotDone", "AssertionError"), errors[0]["ename"]
    assert any(o.get("ename") == "NotDone" for c in code for o in c.get("outputs", []))


ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|Users|var/folders)/")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize("name", NAMES)
def test_stored_errors_are_short_and_name_no_machine_path(name):
    """A reader sees one short message per cell that calls a blank, not a wall of traceback frames, and no output
    holds a path of the machine that executed the notebook."""
    for index, cell in enumerate(_load(BOOK / f"{name}.ipynb")["cells"]):
        for out in cell.get("outputs", []):
            text = ANSI.sub("", json.dumps(out, ensure_ascii=False).replace("\\u001b", "\x1b"))
            assert not ABSOLUTE_PATH.search(text), f"{name} cell {index}: {ABSOLUTE_PATH.search(text).group()!r}"
            if out.get("output_type") != "error":
                continue
            lines = ANSI.sub("", "\n".join(out["traceback"])).splitlines()
            assert len(lines) <= 4, f"{name} cell {index}: a {len(lines)}-line traceback:\n" + "\n".join(lines)
            assert "Traceback" not in lines[0] and "----" not in lines[0], lines[0]
            if out["ename"] == "NotDone":  # one line: which function's blank, and what to do
                assert len(lines) == 1 and re.fullmatch(rf"NotDone: \w+: {re.escape(checks.BLANK)}", lines[0]), lines


@pytest.mark.parametrize("name", NAMES)
def test_source_notebook_is_a_complete_assignment(name):
    source = _load(grading.source_notebook(name))
    intro = _src(source["cells"][0])
    assert intro.startswith("# Assignment") and "**Time:**" in intro and "Learning objectives" in intro
    graded = [c for c in source["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("grade")]
    solutions = [c for c in source["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("solution")]
    assert graded and solutions and all(c["metadata"]["nbgrader"]["points"] > 0 for c in graded)
    for cell in graded:  # every graded cell reports through Check (all cases, then one AssertionError)
        text = _src(cell)
        assert "Check(globals()" in text and text.rstrip().endswith("check.done()")
        assert "raises-exception" in cell["metadata"].get("tags", [])
    for cell in source["cells"]:  # the reference run is clean
        assert not any(o.get("output_type") == "error" for o in cell.get("outputs", []))


@pytest.mark.parametrize("name", NAMES)
def test_stored_tracebacks_lex_cleanly(name):
    """The strict build fails on a traceback Pygments' ipythontb lexer cannot read (e.g. a backtick, "class 0")."""
    lexers = pytest.importorskip("pygments.lexers")
    from pygments.token import Error

    lexer = lexers.get_lexer_by_name("ipythontb")
    for cell in _load(BOOK / f"{name}.ipynb")["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(out["traceback"]))
                bad = [value for token, value in lexer.get_tokens(text) if token is Error]
                assert not bad, f"{name}: {bad} in {out['evalue'][:200]!r}"
