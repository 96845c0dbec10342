"""Release and grade the course assignments with nbgrader.

The source notebooks (solutions + visible and hidden tests, nbgrader cell metadata) live in
``netmoments/course/source/<assignment>/<assignment>.ipynb``. Every operation builds a throw-away nbgrader
*course directory* (``source/``, ``gradebook.db``, ``release/``, ``submitted/``, ``autograded/``) and drives the
``nbgrader`` command line in a subprocess, so a submission that crashes, hangs or kills its kernel can only
cost itself points: the caller always gets a report.

nbgrader is imported only by its own subprocess and by :func:`_read_gradebook`; importing this module needs
nothing beyond the standard library.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent / "source"
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

    def to_json(self) -> dict:
        """``{"score", "max_score", "questions": [{"name", "score", "max_score", "feedback"}]}`` (+ context)."""
        out = {"assignment": self.assignment, "score": self.score, "max_score": self.max_score,
               "questions": [asdict(q) for q in self.questions]}
        if self.error:
            out["error"] = self.error
        return out

    def to_text(self) -> str:
        lines = [f"{self.assignment}: {_num(self.score)} / {_num(self.max_score)} points"]
        if self.error:
            lines.append(f"  NOTE: {self.error}")
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


def identify(notebook: Path) -> str:
    """Which assignment a submitted notebook is: by file name, else by the notebook's metadata."""
    stem = notebook.stem
    for name in ASSIGNMENTS:
        if stem == name or stem.startswith(name):
            return name
    nb = json.loads(notebook.read_text())
    name = nb.get("metadata", {}).get("netmoments", {}).get("assignment")
    if name in ASSIGNMENTS:
        return name
    raise ValueError(f"cannot tell which assignment {notebook} is: name it <assignment>.ipynb, one of {ASSIGNMENTS}")


# -- the nbgrader course directory ------------------------------------------------------------------------
def _nbgrader(root: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={root}", "--log-level=WARN"]
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    # nbgrader runs the `alembic` script by name: make this interpreter's scripts findable without activation.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def make_course_dir(root: Path, assignments=ASSIGNMENTS) -> Path:
    """Set up an nbgrader course directory at ``root`` and generate the student versions of ``assignments``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'netmoments'\n"
        # The student's blank: a stub that fails loudly (the book tags the cells that call it).
        "c.ClearSolutions.code_stub = {'python': '# YOUR CODE HERE\\nraise NotImplementedError()'}\n"
        "c.ClearSolutions.text_stub = 'YOUR ANSWER HERE'\n"
    )
    for name in assignments:
        dest = root / "source" / name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source_notebook(name), dest / f"{name}.ipynb")
        done = _nbgrader(root, "generate_assignment", name, "--force", "--create")
        if done.returncode != 0:
            raise RuntimeError(f"nbgrader generate_assignment {name} failed:\n{done.stdout}\n{done.stderr}")
    return root


def release(outdir: Path, assignments=ASSIGNMENTS) -> list[Path]:
    """Write each assignment's student notebook to ``outdir/<assignment>/<assignment>.ipynb``."""
    outdir = Path(outdir)
    written = []
    with tempfile.TemporaryDirectory(prefix="netmoments-course-") as tmp:
        root = make_course_dir(Path(tmp), assignments)
        for name in assignments:
            dest = outdir / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(root / "release" / name, dest)
            written.append(dest / f"{name}.ipynb")
    return written


# -- grading ----------------------------------------------------------------------------------------------
def _feedback(cell: dict, cell_timeout: float) -> str:
    """The feedback of one executed graded cell: its error message, or nothing."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            ename, evalue = out.get("ename", ""), out.get("evalue", "")
            if ename in ("KeyboardInterrupt", "CellTimeoutError"):
                parts.append(f"Time limit: this cell (or code it calls) ran longer than {cell_timeout:g} s and was "
                             "stopped. Look for an endless loop or an unnecessarily large computation.")
            elif ename == "AssertionError":
                parts.append(evalue)
            elif ename == "NameError":
                parts.append(f"{ename}: {evalue}. Did you delete or rename something the tests use, or skip a cell?")
            else:
                parts.append(f"{ename}: {evalue}")
        elif out.get("output_type") == "stream" and out.get("name") == "stderr":
            parts.append("This cell wrote to stderr (nbgrader gives no points then): " + out.get("text", "")[:500])
    return "\n".join(parts)


def _report_from_autograded(assignment: str, notebook: Path | None, cell_timeout: float, error: str = "") -> Report:
    """Scores from the executed notebook's graded cells, with the source's points (a missing cell scores 0)."""
    from nbgrader.utils import determine_grade  # the tool's own rule: error or stderr -> 0, else full marks
    import nbformat

    expected = grade_cells(assignment)
    executed = {}
    if notebook is not None and notebook.exists():
        nb = nbformat.read(notebook, as_version=4)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade"):
                executed[meta["grade_id"]] = cell
    notes = [error] if error else []
    if notebook is not None and notebook.exists():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or cell.metadata.get("nbgrader", {}).get("grade"):
                continue
            for out in cell.get("outputs", []):
                if out.get("output_type") != "error":
                    continue
                if out.get("ename") in ("KeyboardInterrupt", "CellTimeoutError"):
                    notes.append(f"code cell {index} ran longer than {cell_timeout:g} s and was stopped")
                else:
                    notes.append(f"code cell {index} raised {out.get('ename')}: {out.get('evalue', '')}"[:300])
    error = "; ".join(notes)
    questions = []
    for grade_id, points in expected:
        cell = executed.get(grade_id)
        if cell is None:
            questions.append(QuestionResult(grade_id, 0.0, points, notes[0] if notes else
                                            "this graded cell was not found in the submission"))
            continue
        cell.metadata.nbgrader["points"] = points  # trust the source, not the submission
        score, _ = determine_grade(cell)
        questions.append(QuestionResult(grade_id, float(score or 0.0), points, _feedback(cell, cell_timeout)))
    return Report(assignment, sum(q.score for q in questions), sum(q.max_score for q in questions), questions, error)


def _autograde_one(name: str, students: dict[str, Path], root: Path, cell_timeout: float,
                   total_timeout: float | None) -> dict[str, Report]:
    """Autograde every student's notebook of one assignment in the course directory ``root``."""
    make_course_dir(root, [name])
    for student, notebook in students.items():
        dest = root / "submitted" / student / name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(notebook, dest / f"{name}.ipynb")
    limit = total_timeout or (60 + 20 * cell_timeout * len(students))
    error = ""
    try:
        done = _nbgrader(root, "autograde", name, "--force", "--Autograde.create_student=True",
                         f"--Execute.timeout={int(cell_timeout)}", timeout=limit)
        if done.returncode != 0:
            error = "the grader reported a problem (did the kernel die?): " + (done.stderr or done.stdout)[-1500:]
    except subprocess.TimeoutExpired:
        error = f"grading was stopped after {limit:g} s (the notebook hangs or is far too slow)"
    reports = {}
    for student in students:
        graded = root / "autograded" / student / name / f"{name}.ipynb"
        found = graded.exists()
        reports[student] = _report_from_autograded(name, graded if found else None, cell_timeout,
                                                   "" if found else (error or "the notebook could not be executed"))
    return reports


def grade_submissions(
    submissions: dict[str, dict[str, Path]],
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    total_timeout: float | None = None,
    jobs: int = 1,
) -> dict[str, dict[str, Report]]:
    """Autograde ``{student: {assignment: notebook_path}}``; returns ``{student: {assignment: Report}}``.

    One nbgrader course directory and one ``nbgrader autograde`` run per assignment (every notebook in a fresh
    kernel, with the hidden tests restored from the gradebook); ``jobs`` assignments are graded at a time.
    ``total_timeout`` bounds each autograde run (default: 60 s plus 20 cell timeouts per notebook).
    """
    from concurrent.futures import ThreadPoolExecutor

    assignments = sorted({a for per in submissions.values() for a in per})
    reports: dict[str, dict[str, Report]] = {s: {} for s in submissions}
    with tempfile.TemporaryDirectory(prefix="netmoments-grade-") as tmp, \
            ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            name: pool.submit(_autograde_one, name, {s: per[name] for s, per in submissions.items() if name in per},
                              Path(tmp) / name, cell_timeout, total_timeout)
            for name in assignments
        }
        for name, future in futures.items():
            for student, report in future.result().items():
                reports[student][name] = report
    return reports


def grade_notebook(notebook: Path, cell_timeout: float = DEFAULT_CELL_TIMEOUT,
                   total_timeout: float | None = None) -> Report:
    """Grade one submitted notebook (any file name that starts with the assignment's name)."""
    notebook = Path(notebook)
    try:
        assignment = identify(notebook)
        json.loads(notebook.read_text())
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        return Report(str(notebook), 0.0, 0.0, [], f"could not grade {notebook}: {exc}")
    return grade_submissions({"student": {assignment: notebook}}, cell_timeout, total_timeout)["student"][assignment]


def find_submissions(directory: Path) -> dict[str, dict[str, Path]]:
    """``DIR/<student>/<assignment>.ipynb`` or ``DIR/<student>/<assignment>/<assignment>.ipynb`` (nbgrader's layout)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"submissions must be a directory, got {directory}")
    found: dict[str, dict[str, Path]] = {}
    for student_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        for nb in sorted(student_dir.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in nb.parts:
                continue
            try:
                found.setdefault(student_dir.name, {})[identify(nb)] = nb
            except ValueError:
                continue
    return found


def write_csv(reports: dict[str, dict[str, Report]], path) -> None:
    """One row per (student, assignment, question), plus one ``total`` row per (student, assignment).

    Feedback lines are joined with `` | `` so that every row is one line.
    """
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["student", "assignment", "question", "score", "max_score", "feedback"])
        for student in sorted(reports):
            for name in sorted(reports[student]):
                report = reports[student][name]
                for q in report.questions:
                    writer.writerow([student, name, q.name, q.score, q.max_score, " | ".join(q.feedback.splitlines())])
                writer.writerow([student, name, "total", report.score, report.max_score, report.error])
