"""One source for the course assignments.

Each nbgrader source notebook ``netmoments/course/source/<a>/<a>.ipynb`` (solutions, hidden tests, the reference
outputs) is paired by jupytext (``[tool.jupytext]`` in pyproject.toml) with the percent-format script
``course/authoring/<a>/<a>.py``: the same cells, with the same nbgrader metadata and tags, as plain text.
These tests fail when a pair disagrees (one side edited without ``make assignments-sync``), when the pairing
stops covering an assignment, and when a second source appears: any other file in the repository that holds a
solution or hidden-test region (an old generator's output, a copy of a notebook, a stray export).
The book's student copies are checked against the notebooks in tests/test_course_book.py.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file
from jupytext.paired_paths import paired_paths

from netmoments.course import grading

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SOURCE = grading.PACKAGE_SOURCE_DIR  # the repository's sources, not an instructor's NETMOMENTS_COURSE_SOURCE
AUTHORING = ROOT / "course" / "authoring"
NAMES = grading.ASSIGNMENTS
FORMATS = "netmoments/course/source///ipynb,course/authoring///py:percent"
# A line that opens an nbgrader region, as it stands in a source cell (not quoted inside code or prose).
REGION = re.compile(r"^[ \t]*### BEGIN (SOLUTION|HIDDEN TESTS)[ \t]*$", re.M)
SKIP_DIRS = {"_build", "node_modules", "__pycache__"}  # besides every hidden folder (.git, .venv, checkpoints)
TEXT_SUFFIXES = {".py", ".md", ".txt", ".rst", ".json", ".toml", ".cfg", ".yml", ".yaml", ".r", ".jl"}


def _notebook(name: str) -> Path:
    return SOURCE / name / f"{name}.ipynb"


def _script(name: str) -> Path:
    return AUTHORING / name / f"{name}.py"


def _tags(cell) -> list[str]:
    return sorted(cell.get("metadata", {}).get("tags", []))


def _disagreements(notebook, script) -> list[str]:
    """Where two notebooks (one read from the .ipynb, one from its script) differ in what the script carries."""
    problems = []
    if notebook.metadata.get("kernelspec") != script.metadata.get("kernelspec"):
        problems.append("kernelspec")
    if len(notebook.cells) != len(script.cells):
        problems.append(f"{len(notebook.cells)} cells in the notebook, {len(script.cells)} in the script")
    for i, (a, b) in enumerate(zip(notebook.cells, script.cells)):
        where = f"cell {i} ({a.source.splitlines()[0][:50] if a.source else 'empty'!r})"
        if a.cell_type != b.cell_type:
            problems.append(f"{where}: {a.cell_type} in the notebook, {b.cell_type} in the script")
        if a.source != b.source:
            problems.append(f"{where}: the sources differ")
        if a.metadata.get("nbgrader") != b.metadata.get("nbgrader"):
            problems.append(f"{where}: the nbgrader metadata differ")
        if _tags(a) != _tags(b):
            problems.append(f"{where}: tags {_tags(a)} in the notebook, {_tags(b)} in the script")
    return problems


def test_the_repository_pairs_the_sources_with_the_authoring_scripts():
    config_file = find_jupytext_configuration_file(str(SOURCE))
    assert config_file is not None and Path(config_file) == ROOT / "pyproject.toml"
    assert tomllib.loads(Path(config_file).read_text())["tool"]["jupytext"]["formats"] == FORMATS


@pytest.mark.parametrize("name", NAMES)
def test_each_source_notebook_is_paired_with_its_script(name):
    notebook = _notebook(name)
    config = load_jupytext_configuration_file(find_jupytext_configuration_file(str(notebook.parent)))
    formats = config.default_formats(str(notebook))
    assert formats == FORMATS, f"jupytext does not pair {notebook}"
    paths = {Path(path) for path, _ in paired_paths(str(notebook), "ipynb", formats)}
    assert paths == {notebook, _script(name)}
    assert _script(name).is_file(), f"missing {_script(name).relative_to(ROOT)}: run make assignments-sync"


@pytest.mark.parametrize("name", NAMES)
def test_the_script_and_the_notebook_agree(name):
    notebook = nbformat.read(_notebook(name), as_version=4)
    script = jupytext.read(_script(name))
    problems = _disagreements(notebook, script)
    assert not problems, (f"{name}: the notebook and course/authoring/{name}/{name}.py disagree (edit one, then "
                          "make assignments-sync):\n  " + "\n  ".join(problems))
    # The script is the notebook's text form: every solution and hidden-test region is there as well.
    assert len(REGION.findall(_script(name).read_text(encoding="utf8"))) == sum(
        len(REGION.findall(cell.source)) for cell in notebook.cells) > 0


def test_a_drifted_script_is_caught():
    """The comparison is not vacuous: each kind of drift between a pair is reported."""
    notebook = nbformat.read(_notebook(NAMES[0]), as_version=4)
    assert _disagreements(notebook, jupytext.reads(jupytext.writes(notebook, fmt="py:percent"), fmt="py:percent")) \
        == []
    graded = next(i for i, c in enumerate(notebook.cells) if c.metadata.get("nbgrader", {}).get("grade"))
    code = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")
    edits = {
        "the sources differ": lambda nb: setattr(nb.cells[0], "source", nb.cells[0].source + "\nextra line"),
        "the nbgrader metadata differ": lambda nb: nb.cells[graded].metadata.nbgrader.update(points=99.0),
        "tags": lambda nb: nb.cells[code].metadata.setdefault("tags", []).append("remove-input"),
        "cells in the notebook": lambda nb: nb.cells.pop(),
    }
    for expected, edit in edits.items():
        drifted = jupytext.reads(jupytext.writes(notebook, fmt="py:percent"), fmt="py:percent")
        edit(drifted)
        problems = _disagreements(notebook, drifted)
        assert any(expected in p for p in problems), (expected, problems)


def _holds_a_region(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf8")
    except (UnicodeDecodeError, OSError):
        return False
    if "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text:
        return False
    if path.suffix != ".ipynb":
        return bool(REGION.search(text))
    try:
        cells = json.loads(text).get("cells", [])
    except (json.JSONDecodeError, AttributeError):
        return False
    return any(REGION.search("".join(c.get("source", ""))) for c in cells if isinstance(c, dict))


def test_the_assignments_have_no_other_source():
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS]
        for file in files:
            path = Path(folder) / file
            if (path.suffix in TEXT_SUFFIXES or path.suffix == ".ipynb") and _holds_a_region(path):
                found.add(path.relative_to(ROOT).as_posix())
    expected = {p.relative_to(ROOT).as_posix() for name in NAMES for p in (_notebook(name), _script(name))}
    assert found == expected, f"solution or hidden-test regions outside the paired sources: {sorted(found - expected)}"
    # Nothing else in the authoring folder (a generator, an unpaired script) and no paired script lives in an
    # assignment folder, which nbgrader's own workflow would hand out to students whole.
    authoring = {p.relative_to(ROOT).as_posix() for p in AUTHORING.rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts}
    assert authoring == {_script(name).relative_to(ROOT).as_posix() for name in NAMES}
    for name in NAMES:
        extra = [p.name for p in (SOURCE / name).iterdir() if p.name != f"{name}.ipynb" and not p.name.startswith(".")]
        assert not extra, f"netmoments/course/source/{name}/ holds {extra} besides the notebook"


def test_the_region_finder_sees_a_second_source(tmp_path):
    """A script or a notebook copy with a solution region counts as a source; a mention of the marker does not."""
    script = tmp_path / "copy.py"
    script.write_text("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n")
    notebook = tmp_path / "copy.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "check = 1\n### BEGIN HIDDEN TESTS\nassert check\n### END HIDDEN TESTS")]), notebook)
    mention = tmp_path / "mention.py"
    mention.write_text('MARKERS = ("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS")\n')
    assert _holds_a_region(script) and _holds_a_region(notebook) and not _holds_a_region(mention)
