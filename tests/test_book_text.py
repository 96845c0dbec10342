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
"""
from __future__ import annotations

import json
import re
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
