"""The course command line's class logistics: release never deletes student work unasked, ``grade`` fails loudly
on a notebook it cannot read, and ``grade-all`` handles rosters, duplicate notebooks, one-line CSV rows, the
wide (LMS) layout, per-student feedback HTML and late submissions (nbgrader's ``timestamp.txt``)."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from netmoments.course import grading
from netmoments.course.__main__ import _submission_times

A1, A2 = grading.ASSIGNMENTS[:2]


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "netmoments.course", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_release_into_an_existing_folder_is_refused_without_force(tmp_path):
    pytest.importorskip("nbgrader")
    work = tmp_path / A1 / "my_work.txt"
    work.parent.mkdir()
    work.write_text("a student's answers")
    done = _cli("release", str(tmp_path), "--only", A1)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "--force" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and work.read_text() == "a student's answers"
    with pytest.raises(FileExistsError):
        grading.release(tmp_path, (A1,))
    done = _cli("release", str(tmp_path), "--only", A1, "--force")
    assert done.returncode == 0, done.stderr
    assert not work.exists() and (tmp_path / A1 / f"{A1}.ipynb").is_file()


@pytest.mark.parametrize("kind", ["missing", "unreadable", "not_a_notebook"])
def test_grade_on_a_notebook_it_cannot_read_exits_with_an_error_line(tmp_path, kind):
    path = tmp_path / f"{A1}.ipynb"
    if kind == "unreadable":
        path.write_text("{\"cells\": [")
    elif kind == "not_a_notebook":
        path.write_text("{}")
    done = _cli("grade", str(path), timeout=300)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and str(path) in done.stderr and "Traceback" not in done.stderr, \
        done.stderr


def test_two_notebooks_for_one_assignment_are_an_error_naming_both(tmp_path):
    student = tmp_path / "subs" / "alice"
    student.mkdir(parents=True)
    for name in (f"{A1}.ipynb", f"{A1}_draft.ipynb"):
        (student / name).write_text("{}")
    with pytest.raises(ValueError, match=r"alice/a1_relu_of_a_gaussian: .*a1_relu_of_a_gaussian\.ipynb and .*_draft"):
        grading.find_submissions(tmp_path / "subs")
    done = _cli("grade-all", str(tmp_path / "subs"), "--csv", str(tmp_path / "g.csv"))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "_draft.ipynb" in done.stderr, done.stderr
    assert not (tmp_path / "g.csv").exists()


def test_roster_reading(tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text("student,name\n# comment\nalice,Alice A.\n\nbob\nalice\n")
    assert grading.read_roster(roster) == ["alice", "bob"]
    roster.write_text("\n# nobody\n")
    with pytest.raises(ValueError, match="lists no student"):
        grading.read_roster(roster)


def _report(score, feedback="line one\nline two", error=""):
    return grading.Report(A1, score, 9.0, [grading.QuestionResult("q1", score, 9.0, feedback)], error)


def test_missing_students_and_assignments_are_zero_rows_with_a_reason_and_rows_are_one_line(tmp_path):
    reports = {"alice": {A1: _report(9.0, error="the grader said\nsomething on two lines")}}
    full = grading.complete(reports, ["alice", "bob"], [A1, A2])
    assert set(full) == {"alice", "bob"} and set(full["bob"]) == {A1, A2}
    assert full["bob"][A1].score == 0 and "no folder" in full["bob"][A1].error
    assert full["alice"][A2].score == 0 and f"no {A2} notebook" in full["alice"][A2].error
    assert full["alice"][A1] is reports["alice"][A1]
    path = tmp_path / "grades.csv"
    grading.write_csv(full, path, {("alice", A1): ("2026-12-05T10:00:00+00:00", "no")})
    lines = path.read_text().splitlines()
    rows = list(csv.DictReader(path.open()))
    assert len(lines) == len(rows) + 1  # no row spans two lines
    alice = [r for r in rows if r["student"] == "alice" and r["assignment"] == A1]
    assert alice[0]["feedback"] == "line one | line two"
    assert alice[-1]["feedback"] == "the grader said | something on two lines" and alice[-1]["late"] == "no"
    wide = tmp_path / "wide.csv"
    grading.write_wide_csv(full, wide, {("alice", A1): ("x", "no")})
    table = list(csv.reader(wide.open()))
    assert table[0] == ["student", A1, f"{A1} late", A2, f"{A2} late", "total", "max_total"]
    assert table[1][:2] == ["alice", "9.0"] and table[2][0] == "bob" and table[2][1] == "0.0"


def test_feedback_html_has_the_messages_and_no_test_code(tmp_path):
    reports = {"al/ice": {A1: _report(0.0, feedback="expected 1 < 2, got <script>")}}
    (path,) = grading.write_feedback_html(reports, tmp_path / "html")
    text = path.read_text()
    assert path.parent == tmp_path / "html" and path.name == "al_ice.html"
    assert "expected 1 &lt; 2, got &lt;script&gt;" in text and "<script>" not in text and "0 / 9 points" in text


def test_late_submissions_are_flagged_against_the_due_date(tmp_path):
    subs = {}
    for student, stamp in (("early", "2026-12-01 09:00:00.000000 UTC"), ("late", "2026-12-03 12:30:00 UTC"),
                           ("unstamped", None)):
        nb = tmp_path / student / A1 / f"{A1}.ipynb"
        nb.parent.mkdir(parents=True)
        nb.write_text("{}")
        if stamp:
            (nb.parent / "timestamp.txt").write_text(stamp + "\n")
        subs[student] = {A1: nb}
    due = {None: grading.parse_time("2026-12-02 17:00 UTC")}
    times = _submission_times(subs, due)
    assert times["early", A1] == ("2026-12-01T09:00:00+00:00", "no")
    assert times["late", A1] == ("2026-12-03T12:30:00+00:00", "yes")
    assert times["unstamped", A1][1].startswith("unknown")
    assert _submission_times(subs, {})["late", A1][1] == ""  # no due date: nothing flagged
    with pytest.raises(ValueError, match="cannot read the time"):
        grading.parse_time("next tuesday")


def test_grade_all_with_a_roster_end_to_end(tmp_path):
    """One real (blank) submission through the CLI: roster, wide CSV, feedback HTML, due date, no traceback."""
    pytest.importorskip("nbgrader")
    released = tmp_path / "released"
    assert _cli("release", str(released), "--only", A1).returncode == 0
    nb = tmp_path / "subs" / "alice" / A1 / f"{A1}.ipynb"
    nb.parent.mkdir(parents=True)
    nb.write_text((released / A1 / f"{A1}.ipynb").read_text())
    (nb.parent / "timestamp.txt").write_text("2026-12-03 12:00:00 UTC")
    (tmp_path / "roster.txt").write_text("alice\nbob\n")
    out = tmp_path / "out"
    done = _cli("grade-all", str(tmp_path / "subs"), "--csv", str(out / "long.csv"), "--roster",
                str(tmp_path / "roster.txt"), "--wide-csv", str(out / "wide.csv"), "--feedback", str(out / "html"),
                "--due", "2026-12-02 17:00 UTC", "--timeout", "30")
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "LATE" in done.stdout
    rows = {(r["student"], r["question"]): r for r in csv.DictReader((out / "long.csv").open())}
    assert rows["alice", "total"]["late"] == "yes" and float(rows["alice", "total"]["score"]) == 0
    assert "no folder" in rows["bob", "total"]["feedback"]
    wide = list(csv.DictReader((out / "wide.csv").open()))
    assert [r["student"] for r in wide] == ["alice", "bob"] and wide[0][f"{A1} late"] == "yes"
    html = (out / "html" / "alice.html").read_text()
    assert "not implemented yet" in html
    assert "HIDDEN" not in html and "_nm.relu_moments" not in html and "_want_var" not in html


def test_a_private_copy_of_the_sources_is_used_for_grading(tmp_path):
    """NETMOMENTS_COURSE_SOURCE points release and grading at the instructor's own sources (private hidden
    cases): here a copy whose extra hidden case no answer can pass, so the reference loses that question."""
    nbformat = pytest.importorskip("nbformat")
    private = tmp_path / "private"
    (private / A1).mkdir(parents=True)
    nb = nbformat.read(grading.source_notebook(A1), as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "test_relu_tails":
            cell.source = cell.source.replace(
                "### END HIDDEN TESTS",
                'check.true("a private case", False, "PRIVATE CASE FAILED")\n### END HIDDEN TESTS')
    nbformat.write(nb, private / A1 / f"{A1}.ipynb")
    env = dict(__import__("os").environ, NETMOMENTS_COURSE_SOURCE=str(private))
    done = subprocess.run([sys.executable, "-m", "netmoments.course", "grade", str(grading.source_notebook(A1)),
                           "--timeout", "60"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert "PRIVATE CASE FAILED" in done.stdout and "[FAIL] test_relu_tails" in done.stdout, done.stdout
    assert "[ok  ] test_relu_regular" in done.stdout, done.stdout
