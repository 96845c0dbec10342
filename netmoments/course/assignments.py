"""What the grader (:mod:`netmoments.course.grading`) and the judge (:mod:`netmoments.course.judge`) both read:
the assignments and where their source notebooks are, the points of their graded cells, and the report a grade is.

Importing this module needs nothing beyond the standard library.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGE_SOURCE_DIR = Path(__file__).resolve().parent / "source"
# An instructor's private copy of the sources (own hidden cases): NETMOMENTS_COURSE_SOURCE=/path/to/source, a folder
# laid out like this package's source/ (<assignment>/<assignment>.ipynb). Release and grading both use it.
SOURCE_DIR = Path(os.environ["NETMOMENTS_COURSE_SOURCE"]).resolve() if os.environ.get("NETMOMENTS_COURSE_SOURCE") \
    else PACKAGE_SOURCE_DIR
#: The assignments' names in course order, each the name of its folder under ``source/``.
ASSIGNMENTS = (
    "a1_relu_of_a_gaussian",
    "a2_cross_moment",
    "a3_network_moments",
    "a4_linearize",
    "a5_gaussian_attack",
)
DEFAULT_CELL_TIMEOUT = 120  # seconds a single cell may run before the kernel is interrupted


@dataclass
class QuestionResult:
    name: str
    score: float
    max_score: float
    feedback: str


@dataclass
class Report:
    assignment: str
    score: float
    max_score: float
    questions: list[QuestionResult] = field(default_factory=list)
    error: str = ""  # set when the whole notebook could not be graded (not a notebook, grader killed, ...)
    sandbox: str = ""  # how the student's code ran: "bwrap" (sandboxed), "none" (a plain process), "" (not run)

    def to_json(self) -> dict:
        """``{"score", "max_score", "questions": [{"name", "score", "max_score", "feedback"}]}`` (+ context)."""
        out = {"assignment": self.assignment, "score": self.score, "max_score": self.max_score,
               "questions": [asdict(q) for q in self.questions]}
        if self.error:
            out["error"] = self.error
        if self.sandbox:
            out["sandbox"] = self.sandbox
        return out

    def to_text(self) -> str:
        lines = [f"{self.assignment}: {_num(self.score)} / {_num(self.max_score)} points"]
        if self.error:
            lines.append(f"  NOTE: {self.error}")
        if self.sandbox == "none":
            lines.append("  NOTE: graded without the sandbox (bubblewrap): the notebook's code could read and write "
                         "the grader's files")
        for q in self.questions:
            mark = "ok  " if q.score == q.max_score else "FAIL"
            lines.append(f"  [{mark}] {q.name}: {_num(q.score)} / {_num(q.max_score)}")
            if q.feedback:
                lines.extend("         " + line for line in q.feedback.splitlines())
        return "\n".join(lines)


def _num(x: float) -> str:
    return f"{x:g}"


# -- source notebooks -----------------------------------------------------------------------------------
def source_notebook(assignment: str) -> Path:
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    return SOURCE_DIR / assignment / f"{assignment}.ipynb"


def grade_cells(assignment: str) -> list[tuple[str, float]]:
    """``(grade_id, points)`` of every graded cell of ``assignment``, in notebook order."""
    nb = json.loads(source_notebook(assignment).read_text())
    cells = []
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade"):
            cells.append((meta["grade_id"], float(meta["points"])))
    return cells
