"""Refresh the student notebooks shown in the book (Part IV) from the nbgrader sources.

    .venv/bin/python course/update_book.py          # after editing netmoments/course/source/*

Releases every assignment with the course tool (solutions and hidden tests removed), copies the student
notebooks to book/course/<assignment>.ipynb and executes them in place: the cells that call a blank raise
NotDone (a NotImplementedError stored as one line, not a traceback), which their `raises-exception` tag allows,
so the strict book build and nbval accept them.
"""
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from netmoments.course import grading  # noqa: E402

BOOK_DIR = ROOT / "book" / "course"


def main(names):
    BOOK_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for path in grading.release(Path(tmp), names):
            dest = BOOK_DIR / path.name
            shutil.copy2(path, dest)
            nb = nbformat.read(dest, as_version=4)
            NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(BOOK_DIR)}}).execute()
            nbformat.write(nb, dest)
            print(dest)


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or grading.ASSIGNMENTS)
