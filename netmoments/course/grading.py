"""Release the course assignments with nbgrader, and grade submissions so that they cannot game the grade.

The source notebooks (solutions + visible and hidden tests, nbgrader cell metadata) live in
``netmoments/course/source/<assignment>/<assignment>.ipynb``. :func:`release` builds a throw-away nbgrader
course directory and drives ``nbgrader generate_assignment`` in a subprocess to write the student versions.

Grading does not use ``nbgrader autograde``: that runs a submission and the hidden tests in one kernel, where
the student's code can rewrite the tests or the course directory. :func:`grade_submissions` gives every notebook
its own judge process (:mod:`netmoments.course.judge`) that runs the source's hidden tests against the student's
functions, which run in another, sandboxed process. A submission that crashes, hangs, kills its process or
tampers can only cost itself points: the caller always gets a report.

Importing this module needs nothing beyond the standard library.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# The assignments, their sources and the report types live in .assignments (the judge reads them too, without
# importing this module); every name stays importable from here.
from .assignments import (ASSIGNMENTS, DEFAULT_CELL_TIMEOUT, PACKAGE_SOURCE_DIR, SOURCE_DIR,  # noqa: F401
                          QuestionResult, Report, _num, grade_cells, source_notebook)


#: What nbgrader puts in place of each solution in the student's version.
CODE_STUB = "# YOUR CODE HERE\nraise NotDone()"


# -- submissions ------------------------------------------------------------------------------------------
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
        # The student's blank: a stub that fails with one line, not a traceback (checks.NotDone; a
        # NotImplementedError, so every detector of unfilled blanks knows it). The book tags the cells that call it.
        f"c.ClearSolutions.code_stub = {{'python': {CODE_STUB!r}}}\n"
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


def release(outdir: Path, assignments=ASSIGNMENTS, force: bool = False) -> list[Path]:
    """Write each assignment's student notebook to ``outdir/<assignment>/<assignment>.ipynb``.

    ``outdir/<assignment>`` is replaced as a whole, so it may hold a student's work: unless ``force``, an existing
    one is refused (``FileExistsError``) before anything is written.
    """
    outdir = Path(outdir)
    existing = [str(outdir / name) for name in assignments if (outdir / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s) and would be replaced (with any student "
                              "work in it): release into a new folder, or pass --force")
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
def _judge_one(name: str, notebook: Path, cell_timeout: float, total_timeout: float | None, sandbox: str,
               scratch: Path) -> Report:
    """Grade one notebook in its own judge process (:mod:`netmoments.course.judge`); always returns a report."""
    limit = total_timeout or (60 + 20 * cell_timeout)
    out = scratch / "report.json"
    cmd = [sys.executable, "-m", "netmoments.course.judge", name, str(notebook), str(out),
           f"--cell-timeout={cell_timeout:g}", f"--sandbox={sandbox}"]
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    # The judge imports netmoments from where this module was imported, whatever the caller's working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[2]),
                                                     env.get("PYTHONPATH", "")] if p)
    # Its own session, so that a time-out can stop the judge and every process below it at once.
    proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return _failed(name, f"grading was stopped after {limit:g} s (the notebook hangs or is far too slow)")
    if proc.returncode != 0 or not out.exists():
        tail = log.decode(errors="replace")[-1500:]
        return _failed(name, f"the grader failed (exit code {proc.returncode}), not your notebook: {tail}")
    data = json.loads(out.read_text())
    return Report(data["assignment"], data["score"], data["max_score"],
                  [QuestionResult(**q) for q in data["questions"]], data.get("error", ""), data.get("sandbox", ""))


def _failed(name: str, error: str) -> Report:
    questions = [QuestionResult(g, 0.0, p, error) for g, p in grade_cells(name)]
    return Report(name, 0.0, sum(q.max_score for q in questions), questions, error)


def grade_submissions(
    submissions: dict[str, dict[str, Path]],
    cell_timeout: float = DEFAULT_CELL_TIMEOUT,
    total_timeout: float | None = None,
    jobs: int = 1,
    sandbox: str = "auto",
) -> dict[str, dict[str, Report]]:
    """Grade ``{student: {assignment: notebook_path}}``; returns ``{student: {assignment: Report}}``.

    Every notebook is graded by its own judge process (:mod:`netmoments.course.judge`): the student's code runs in
    a separate, sandboxed process and the hidden tests, taken from the source notebook, only see what the
    student's functions return. ``jobs`` notebooks are graded at a time. ``cell_timeout`` bounds each student cell
    and the student code each graded cell calls; ``total_timeout`` bounds each notebook (default: 60 s plus 20
    cell timeouts). ``sandbox`` is ``"auto"`` (bubblewrap when it works here), ``"bwrap"`` or ``"none"``; a
    report graded without the sandbox says so.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .judge import resolve_sandbox

    if not cell_timeout > 0:
        raise ValueError(f"cell_timeout must be a positive number of seconds, got {cell_timeout!r}")
    if int(jobs) < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs!r}")
    sandbox = resolve_sandbox(sandbox)  # once, not once per notebook
    tasks = [(student, name, Path(path)) for student, per in submissions.items() for name, path in per.items()]
    for _, name, _ in tasks:
        if name not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {name!r}")
    reports: dict[str, dict[str, Report]] = {s: {} for s in submissions}
    with tempfile.TemporaryDirectory(prefix="netmoments-grade-") as tmp, \
            ThreadPoolExecutor(max_workers=int(jobs)) as pool:
        futures = {}
        for i, (student, name, path) in enumerate(tasks):
            scratch = Path(tmp) / str(i)
            scratch.mkdir()
            futures[student, name] = pool.submit(_judge_one, name, path.resolve(), cell_timeout, total_timeout,
                                                 sandbox, scratch)
        for (student, name), future in futures.items():
            reports[student][name] = future.result()
    return reports


def grade_notebook(notebook: Path, cell_timeout: float = DEFAULT_CELL_TIMEOUT,
                   total_timeout: float | None = None, sandbox: str = "auto") -> Report:
    """Grade one submitted notebook (any file name that starts with the assignment's name)."""
    notebook = Path(notebook)
    try:
        assignment = identify(notebook)
        json.loads(notebook.read_text())
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        return Report(str(notebook), 0.0, 0.0, [], f"could not grade {notebook}: {exc}")
    return grade_submissions({"student": {assignment: notebook}}, cell_timeout, total_timeout,
                             sandbox=sandbox)["student"][assignment]


def find_submissions(directory: Path) -> dict[str, dict[str, Path]]:
    """``DIR/<student>/<assignment>.ipynb`` or ``DIR/<student>/<assignment>/<assignment>.ipynb`` (nbgrader's layout)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"submissions must be a directory, got {directory}")
    found: dict[str, dict[str, Path]] = {}
    clashes: list[str] = []
    for student_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        for nb in sorted(student_dir.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in nb.parts:
                continue
            try:
                name = identify(nb)
            except (ValueError, OSError):
                continue
            per = found.setdefault(student_dir.name, {})
            if name in per:  # a draft next to the real submission: which one to grade is the instructor's call
                clashes.append(f"{student_dir.name}/{name}: {per[name]} and {nb}")
                continue
            per[name] = nb
    if clashes:
        raise ValueError("more than one notebook for the same student and assignment (keep one, rename or move "
                         "the others): " + "; ".join(clashes))
    return found


def read_roster(path) -> list[str]:
    """Student ids, one a line (a CSV's first column; blank lines, ``#`` comments and a ``student`` header skipped)."""
    students: list[str] = []
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if not row or not row[0].strip() or row[0].strip().startswith("#"):
                continue
            sid = row[0].strip()
            if sid.lower() in ("student", "student_id", "id") and not students:
                continue
            if sid not in students:
                students.append(sid)
    if not students:
        raise ValueError(f"the roster {path} lists no student")
    return students


def missing_report(assignment: str, reason: str) -> Report:
    """The 0-point report of a submission that is not there."""
    return _failed(assignment, reason)


def complete(reports: dict[str, dict[str, Report]], roster: list[str] | None,
             assignments) -> dict[str, dict[str, Report]]:
    """Every student of ``roster`` (plus everyone graded) gets a report for every assignment of ``assignments``:
    a 0-point one that says why when the submission is missing."""
    out = {s: dict(per) for s, per in reports.items()}
    for student in list(roster or []) + [s for s in reports if s not in (roster or [])]:
        per = out.setdefault(student, {})
        for name in assignments:
            if name not in per:
                why = ("no submission: the student has no folder in the submissions directory"
                       if student not in reports else f"no submission: no {name} notebook in the student's folder")
                per[name] = missing_report(name, why)
    return out


def read_timestamp(notebook: Path):
    """The submission time nbgrader records (``timestamp.txt`` next to the notebook or in a folder above it, up
    to the student's folder), as an aware ``datetime``, or ``None``."""
    for folder in list(Path(notebook).parents)[:3]:
        stamp = folder / "timestamp.txt"
        if stamp.is_file():
            return parse_time(stamp.read_text().strip())
    return None


def parse_time(text: str):
    """``2026-12-05 10:00:00.123 UTC`` (nbgrader's format), ISO 8601, or a date; naive times are UTC."""
    from datetime import datetime, timezone

    text = text.strip()
    cleaned = text[:-4].strip() if text.upper().endswith(" UTC") else text
    try:
        value = datetime.fromisoformat(cleaned.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot read the time {text!r} (expected e.g. 2026-12-05 17:00:00 UTC)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _one_line(text: str) -> str:
    """Feedback on one line: line breaks become `` | `` (a spreadsheet or an LMS reads one row per line)."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def write_csv(reports: dict[str, dict[str, Report]], path, submitted: dict | None = None) -> None:
    """One row per (student, assignment, question), plus one ``total`` row per (student, assignment).

    Every row is one line: line breaks in the feedback become `` | ``. ``submitted`` maps ``(student,
    assignment)`` to ``(time, late)`` where the submission recorded a time (nbgrader's ``timestamp.txt``).
    """
    submitted = submitted or {}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["student", "assignment", "question", "score", "max_score", "feedback", "submitted", "late"])
        for student in sorted(reports):
            for name in sorted(reports[student]):
                report = reports[student][name]
                when, late = submitted.get((student, name), ("", ""))
                for q in report.questions:
                    writer.writerow([student, name, q.name, q.score, q.max_score, _one_line(q.feedback), "", ""])
                writer.writerow([student, name, "total", report.score, report.max_score, _one_line(report.error),
                                 when, late])


def write_wide_csv(reports: dict[str, dict[str, Report]], path, submitted: dict | None = None) -> None:
    """The LMS layout: one row per student, one score column per assignment (and ``<assignment> late``
    columns where a due date was given), then the total; no feedback (that is in the per-student HTML)."""
    submitted = submitted or {}
    names = sorted({n for per in reports.values() for n in per})
    with_late = any(late != "" for _, late in submitted.values())
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        header = ["student"]
        for n in names:
            header += [n] + ([f"{n} late"] if with_late else [])
        writer.writerow(header + ["total", "max_total"])
        for student in sorted(reports):
            per = reports[student]
            row: list = [student]
            for n in names:
                row.append(per[n].score if n in per else "")
                if with_late:
                    row.append(submitted.get((student, n), ("", ""))[1])
            writer.writerow(row + [sum(r.score for r in per.values()), sum(r.max_score for r in per.values())])


def write_feedback_html(reports: dict[str, dict[str, Report]], folder) -> list[Path]:
    """One ``<student>.html`` per student: per assignment, the score and each question's score and feedback (the
    checks' messages; never the hidden tests' code)."""
    import html

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for student in sorted(reports):
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Feedback: {html.escape(student)}</title>"
                 "</head><body>", f"<h1>Feedback for {html.escape(student)}</h1>"]
        for name, report in sorted(reports[student].items()):
            parts.append(f"<h2>{html.escape(name)}: {_num(report.score)} / {_num(report.max_score)} points</h2>")
            if report.error:
                parts.append(f"<p><strong>Note:</strong> {html.escape(report.error)}</p>")
            parts.append("<table border='1' cellpadding='4'><tr><th>question</th><th>score</th><th>feedback</th></tr>")
            for q in report.questions:
                parts.append(f"<tr><td>{html.escape(q.name)}</td><td>{_num(q.score)} / {_num(q.max_score)}</td>"
                             f"<td><pre>{html.escape(q.feedback)}</pre></td></tr>")
            parts.append("</table>")
        parts.append("</body></html>")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in student).lstrip(".") or "student"
        path = folder / f"{safe}.html"
        path.write_text("\n".join(parts), encoding="utf8")
        written.append(path)
    return written
