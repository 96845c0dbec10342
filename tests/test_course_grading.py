"""End to end: the grader grades the course notebooks, and the command line never fails with a traceback.

The reference solutions (whole notebooks) must get full marks and one wrong answer per assignment from the
catalogue (``test_course_catalogue.py``) must lose the marks of its question with the right feedback, each
notebook graded by its own judge and sandboxed worker (two notebooks at a time). Broken submissions (a process
that dies, a cell that hangs, a deleted function, an untouched student version, a file that is not a notebook)
still get a report. Submissions that attack the grader are in ``test_course_gaming.py``.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbgrader")

from netmoments.course import grading  # noqa: E402
from test_course_catalogue import WRONG, _edited  # noqa: E402

A1 = grading.ASSIGNMENTS[0]

# One wrong answer per assignment goes through the whole tool chain, with the reference solutions.
END_TO_END = ["a1_nan_at_sigma_zero", "a2_flipped_rho", "a3_diagonal_covariance", "a4_first_relu",
              "a5_dense_attack"]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """nbgrader reports for the reference solutions (full notebooks) and the END_TO_END wrong answers."""
    root = tmp_path_factory.mktemp("submissions")
    submissions = {"reference": {name: grading.source_notebook(name) for name in grading.ASSIGNMENTS}}
    for wrong in END_TO_END:
        assignment, cell_id, edits, _, _ = WRONG[wrong]
        path = root / wrong / f"{assignment}.ipynb"
        path.parent.mkdir()
        nbformat.write(_edited(assignment, cell_id, edits), path)
        submissions[wrong] = {assignment: path}
    return grading.grade_submissions(submissions, cell_timeout=300, jobs=2)


def test_reference_solutions_get_full_marks(graded):
    for name in grading.ASSIGNMENTS:
        report = graded["reference"][name]
        assert report.max_score > 0 and not report.error, (name, report.error)
        assert report.score == report.max_score, report.to_text()
        assert [q.name for q in report.questions] == [g for g, _ in grading.grade_cells(name)]


@pytest.mark.parametrize("wrong", END_TO_END)
def test_nbgrader_takes_the_marks_off_with_the_message(graded, wrong):
    assignment, _, _, question, pattern = WRONG[wrong]
    report = graded[wrong][assignment]
    result = {q.name: q for q in report.questions}[question]
    assert result.score == 0 < result.max_score and report.score < report.max_score, report.to_text()
    assert re.search(pattern, result.feedback), f"{wrong}: /{pattern}/ not in feedback:\n{result.feedback}"


@pytest.mark.parametrize("wrong", END_TO_END)
def test_one_mistake_costs_only_its_own_question(graded, wrong):
    """Later questions are graded with the reference versions of earlier functions (a2_flipped_rho used to fail
    zero_mean_relative_error too, a4_first_relu tsl_max_abs_z)."""
    assignment, _, _, question, _ = WRONG[wrong]
    others = [q for q in graded[wrong][assignment].questions if q.name != question]
    assert others and all(q.score == q.max_score for q in others), graded[wrong][assignment].to_text()


def test_csv_has_a_row_per_student_and_question(graded, tmp_path):
    path = tmp_path / "grades.csv"
    grading.write_csv(graded, path)
    rows = list(csv.DictReader(path.open()))
    ref = [r for r in rows if r["student"] == "reference" and r["assignment"] == A1]
    assert [r["question"] for r in ref] == [g for g, _ in grading.grade_cells(A1)] + ["total"]
    assert float(ref[-1]["score"]) == float(ref[-1]["max_score"]) == sum(p for _, p in grading.grade_cells(A1))


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "netmoments.course", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_broken_submissions_still_get_a_report(tmp_path):
    """Crash (kernel dies), hang (time limit), deleted function, raw student version: a report, no traceback."""
    subs = tmp_path / "subs"
    cases = {
        "crash": [(None, "import os\nos._exit(1)\n")],
        "hang": [(None, "import time\ntime.sleep(3600)\n")],
        "deleted": [(None, "pass\n")],
    }
    for student, edits in cases.items():
        path = subs / student / f"{A1}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(_edited(A1, "relu_mean_var", edits), path)
    released = tmp_path / "released"
    done = _cli("release", str(released), "--only", A1)
    assert done.returncode == 0, done.stderr
    student_version = released / A1 / f"{A1}.ipynb"
    text = student_version.read_text()
    assert "raise NotDone()" in text and "BEGIN SOLUTION" not in text and "HIDDEN" not in text
    assert "torch.where(positive" not in text and "_nm.relu_moments" not in text  # no solution, no hidden test
    (subs / "blank").mkdir()
    (subs / "blank" / f"{A1}.ipynb").write_text(text)
    out_csv = tmp_path / "grades.csv"
    done = _cli("grade-all", str(subs), "--csv", str(out_csv), "--timeout", "10")
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    rows = {(r["student"], r["question"]): r for r in csv.DictReader(out_csv.open())}
    for student in ("crash", "blank"):
        assert float(rows[student, "total"]["score"]) == 0.0, (student, rows[student, "total"])
    # relu_mean_z_score (the reference's in these notebooks) is graded with the reference relu_mean_var in place
    # of the hanging or deleted one, so it keeps its points; everything that tests relu_mean_var scores 0.
    for student in ("hang", "deleted"):
        z = rows[student, "test_relu_z_score"]
        assert float(z["score"]) == float(z["max_score"]) > 0, (student, z)
        assert float(rows[student, "total"]["score"]) == float(z["score"]), (student, rows[student, "total"])
    assert "kernel" in rows["crash", "total"]["feedback"] or "could not be executed" in rows["crash", "total"]["feedback"]
    assert "ran longer than 10 s" in rows["hang", "total"]["feedback"]
    assert "is not defined" in rows["deleted", "test_relu_regular"]["feedback"]
    assert "not implemented yet" in rows["blank", "test_relu_regular"]["feedback"]


def test_grade_json_on_a_file_that_is_not_a_notebook(tmp_path):
    bogus = tmp_path / f"{A1}.ipynb"
    bogus.write_text("this is not JSON")
    done = _cli("grade", str(bogus), "--json", timeout=120)
    # Nothing could be graded: a non-zero exit and an error line, and still the JSON report on stdout.
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and str(bogus) in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert set(report) >= {"score", "max_score", "questions"} and report["score"] == 0.0 and report["error"]


def test_core_package_does_not_import_the_grader():
    code = "import sys, netmoments; assert 'netmoments.course' not in sys.modules and 'nbgrader' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    code = "import sys, netmoments.course.checks; assert 'nbgrader' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
