"""What a reader sees in the committed notebooks: no stale progress talk, no paths of the machine that ran them.

The book's notebooks are committed with their outputs, and the long experiments' chapters turn data files into
sentences. Two kinds of text have slipped into them before and are caught here, without executing anything:

- **Progress talk of a finished run.** Phrases such as "18 sittings so far", "the intervals tighten as the run
  completes" or "follow the run as it grows" were true while an experiment was still running and are wrong once it
  is done. Every notebook under ``book/`` is checked: its Markdown cells and the text of its stored outputs
  (streams, plain text, generated Markdown and HTML, errors).
- **Absolute paths of a machine.** A warning or a traceback prints the file it comes from
  (``/work/main/netmoments/widgets.py:891: UserWarning``); committed, it shows the reader a directory of the
  machine that executed the notebook. The same outputs, tracebacks included, and the text values of saved widgets
  must not hold one.

A third check concerns a chapter downloaded on its own and opened outside the repository: its first code cell
imports netmoments through ``IMPORT_GUARD``, which, when the import fails, stops the notebook with one message
saying how to install the package, and no traceback.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"

# Said of an experiment that is still running; wrong in a book whose runs are complete. Matched case-insensitively.
STALE_PHRASES = ("so far", "as the run completes", "as it grows", "sittings so far", "run continues",
                 "once the run is complete")
STALE = re.compile("|".join(re.escape(p) for p in STALE_PHRASES), re.IGNORECASE)

# A directory of some machine: a Unix home, work, scratch or system directory, a macOS home, a Windows drive. The
# look-behind keeps web addresses out ("https://example.org/home/" has a letter before "/home/").
ABSOLUTE_PATH = re.compile(
    r"(?<![\w.~-])/(?:work|home|tmp|root|Users|scratch|mnt|opt|srv|var|usr|private|farm)/"
    r"|(?<![\w])[A-Za-z]:\\(?:Users|Windows|Program Files)\\"
    r"|site-packages")

# Output data that are not text (images are base64, where any short string can occur by chance).
NOT_TEXT = re.compile(r"^(image/|application/vnd\.jupyter\.widget-view)")
# Saved widget models whose "value" is text shown on the page.
TEXT_WIDGETS = {"HTMLModel", "HTMLMathModel", "LabelModel", "TextModel", "TextareaModel"}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# The lines each chapter's first code cell opens with. IPython (and so Jupyter) prints what an exception's
# _render_traceback_ returns instead of the traceback: a reader without the package sees one message.
IMPORT_GUARD = """\
try:
    import netmoments as nm
except ImportError as err:  # IPython prints _render_traceback_, no traceback
    class Missing(ImportError): _render_traceback_ = lambda e: [str(e)]
    fix = "`pip install -e .` in a clone of the netmoments repository"
    raise Missing(f"{err}. Run {fix}, then restart the kernel.") from None
"""


def notebooks() -> list[Path]:
    return sorted(p for p in BOOK.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and "_build" not in p.parts)


def _text(value) -> str:
    if isinstance(value, list):
        return "".join(value)
    return value if isinstance(value, str) else json.dumps(value)


def output_texts(cell: dict) -> list[str]:
    """The text of every stored output of a cell: streams, text MIME types, and errors with their tracebacks."""
    texts = []
    for output in cell.get("outputs", []):
        if "text" in output:
            texts.append(_text(output["text"]))
        for key, value in output.get("data", {}).items():
            if not NOT_TEXT.match(key):
                texts.append(_text(value))
        if output.get("output_type") == "error":
            texts.append(f"{output.get('ename', '')}: {output.get('evalue', '')}")
            texts.append(ANSI.sub("", "\n".join(output.get("traceback", []))))
    return texts


def widget_texts(nb: dict) -> list[str]:
    state = nb.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    return [model["state"]["value"] for model in state.get("state", {}).values()
            if model.get("model_name") in TEXT_WIDGETS and isinstance(model.get("state", {}).get("value"), str)]


def _hit(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    if match is None:
        return None
    start, end = max(0, match.start() - 60), match.end() + 60
    return " ".join(text[start:end].split())


def stale_phrases(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = []
    for index, cell in enumerate(nb["cells"]):
        texts = [("markdown", _text(cell["source"]))] if cell["cell_type"] == "markdown" else []
        texts += [("output", text) for text in output_texts(cell)]
        for where, text in texts:
            hit = _hit(STALE, text)
            if hit:
                found.append(f"{path.relative_to(ROOT)}: cell {index} ({where}): ...{hit}...")
    return found


def absolute_paths(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = []
    for index, cell in enumerate(nb["cells"]):
        for text in output_texts(cell):
            hit = _hit(ABSOLUTE_PATH, text)
            if hit:
                found.append(f"{path.relative_to(ROOT)}: cell {index} (output): ...{hit}...")
    for text in widget_texts(nb):
        hit = _hit(ABSOLUTE_PATH, text)
        if hit:
            found.append(f"{path.relative_to(ROOT)}: a saved widget: ...{hit}...")
    return found


NOTEBOOKS = notebooks()


def test_the_notebooks_are_found():
    names = {p.name for p in NOTEBOOKS}
    assert {"07_how_tight_is_it.ipynb", "09_gaussian_attacks.ipynb"} <= names
    assert any(p.parent.name == "course" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_progress_talk_of_a_finished_run(path):
    found = stale_phrases(path)
    assert not found, ("text written while an experiment was running; say what the complete run shows:\n"
                       + "\n".join(found))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_absolute_paths_in_stored_outputs(path):
    found = absolute_paths(path)
    assert not found, ("stored outputs show a directory of the machine that executed the notebook; keep warnings and "
                       "tracebacks from printing it:\n" + "\n".join(found))


# The detectors themselves.
@pytest.mark.parametrize("text", [
    "Over the 18 sittings so far the load average read 1.2",
    "are wide at a small number of digits and tighten as the run completes.",
    "follow the run as it grows",
    "the first 500 of the 1,000; the run continues",
    "What the run says so far:",
])
def test_the_stale_detector_catches(text):
    assert _hit(STALE, text)


@pytest.mark.parametrize("text", [
    "/work/main/netmoments/widgets.py:891: UserWarning: Converting a tensor",
    'File "/home/ana/netmoments/relu.py", line 3',
    "/tmp/ipykernel_123/456.py:2: RuntimeWarning",
    "/root/.venv/lib/python3.12/site-packages/torch/nn/modules/module.py",
    "File ~/venv/lib/python3.12/site-packages/torch/functional.py:12",
    r"C:\Users\ana\netmoments\book",
])
def test_the_path_detector_catches(text):
    assert _hit(ABSOLUTE_PATH, text)


@pytest.mark.parametrize("text", [
    "Cell In[3], line 1",
    "see https://jobqueue.dask.org/en/latest/ or https://example.org/home/page",
    "accuracy 0.982 (tasks 123/123), 4 km/h, ratio 3/4",
    "book/data/tightness_scale.jsonl.gz",
])
def test_the_path_detector_lets_through(text):
    assert _hit(ABSOLUTE_PATH, text) is None


# A chapter opened outside the repository: the import guard.
CHAPTERS = sorted([*BOOK.glob("[0-9]*.ipynb"), *BOOK.glob("A*.ipynb")])


def first_code_cell(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return next(_text(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def test_the_chapters_are_found():
    names = {p.name for p in CHAPTERS}
    assert {"01_gaussians_through_affine_layers.ipynb", "09_gaussian_attacks.ipynb",
            "A1_phi2_quadrature.ipynb"} <= names


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_each_chapter_imports_netmoments_through_the_guard(path):
    source = first_code_cell(path)
    assert IMPORT_GUARD in source, (f"{path.name}: the first code cell must open with the import guard "
                                    f"(tests/test_book_text.py, IMPORT_GUARD):\n{IMPORT_GUARD}")
    # Any import of the package must come after the guard, or a reader without it gets a traceback first.
    before = source[:source.index(IMPORT_GUARD)]
    assert "netmoments" not in before, f"{path.name}: netmoments is imported before the guard"


def _run_guard_without_the_package(code: str) -> dict:
    """Run ``code`` in a fresh IPython kernel where ``import netmoments`` fails; the cells' outputs."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook(cells=[
        # None in sys.modules makes any import of the package raise ImportError, wherever it is installed.
        nbformat.v4.new_code_cell("import sys\nsys.modules['netmoments'] = None"),
        nbformat.v4.new_code_cell(code),
        nbformat.v4.new_code_cell("print('the notebook went on')"),
    ])
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False)
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        client.execute()
    return nb


def test_the_guard_shows_one_message_and_stops_the_notebook():
    nb = _run_guard_without_the_package(first_code_cell(CHAPTERS[0]))
    errors = nb.cells[1].outputs
    assert [o["output_type"] for o in errors] == ["error"], errors
    shown = [ANSI.sub("", line) for line in errors[0]["traceback"]]
    assert len(shown) == 1, "expected one message line, the kernel rendered:\n" + "\n".join(shown)
    message = shown[0]
    assert "No module named" in message or "import of netmoments halted" in message, message
    assert "pip install -e ." in message and "clone" in message and "restart the kernel" in message, message
    for traceback_text in ("Traceback", "File ", "Cell In[", "---->", "raise Missing"):
        assert traceback_text not in message, f"traceback text {traceback_text!r} in {message!r}"
    assert nb.cells[2].outputs == [], "the notebook must stop at the guard"


def test_the_guard_is_silent_when_the_package_is_there():
    namespace: dict = {}
    exec(IMPORT_GUARD, namespace)  # noqa: S102 - the guard is this file's own constant
    assert namespace["nm"] is sys.modules["netmoments"]
    assert "Missing" not in namespace


def test_the_guard_names_the_failed_import_outside_ipython(monkeypatch):
    # Plain Python (a chapter exported to a script) has no _render_traceback_ hook: the message is the exception's.
    monkeypatch.setitem(sys.modules, "netmoments", None)
    with pytest.raises(ImportError) as raised:
        exec(IMPORT_GUARD, {})  # noqa: S102
    assert "pip install -e ." in str(raised.value)
    assert raised.value.__suppress_context__ and raised.value._render_traceback_() == [str(raised.value)]
