"""``python -m netmoments.course release OUTDIR [--force]`` | ``grade NOTEBOOK [--json]`` |
``grade-all DIR --csv FILE [--roster FILE] [--wide-csv FILE] [--feedback DIR] [--due TIME]``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import grading


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netmoments.course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("release", help="write every assignment's student notebook to OUTDIR/<assignment>/")
    p.add_argument("outdir", type=Path)
    p.add_argument("--only", nargs="*", choices=grading.ASSIGNMENTS, help="release only these assignments")
    p.add_argument("--force", action="store_true",
                   help="replace OUTDIR/<assignment>/ when it exists (deletes whatever is in it, student work too)")
    p = sub.add_parser("grade", help="grade one submitted notebook with the hidden tests")
    p.add_argument("notebook", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a text report")
    p.add_argument("--timeout", type=float, default=grading.DEFAULT_CELL_TIMEOUT,
                   help="seconds one cell may run (default %(default)s)")
    p.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto",
                   help="run the student's code in a bubblewrap sandbox: auto (when it works here, the default), "
                        "bwrap (required), none")
    p = sub.add_parser("grade-all", help="grade DIR/<student>/<assignment>.ipynb for every student")
    p.add_argument("submissions", type=Path)
    p.add_argument("--csv", type=Path, required=True, help="where to write the scores (one row per question)")
    p.add_argument("--roster", type=Path,
                   help="student ids, one a line: a listed student without a submission gets 0 with the reason")
    p.add_argument("--assignments", nargs="*", choices=grading.ASSIGNMENTS,
                   help="assignments every student must have (default: every assignment anyone submitted)")
    p.add_argument("--wide-csv", type=Path, help="also write one row per student, one column per assignment")
    p.add_argument("--feedback", type=Path, help="also write one feedback HTML per student into this folder")
    p.add_argument("--due", help="due date, e.g. '2026-12-05 17:00 UTC': submissions whose timestamp.txt is "
                                 "later are flagged late (also: --due ASSIGNMENT=TIME, repeatable)",
                   action="append", default=[])
    p.add_argument("--timeout", type=float, default=grading.DEFAULT_CELL_TIMEOUT)
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded in parallel")
    p.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto",
                   help="run the student's code in a bubblewrap sandbox (see grade --help)")
    args = parser.parse_args(argv)

    if args.command == "release":
        try:
            paths = grading.release(args.outdir, tuple(args.only or grading.ASSIGNMENTS), force=args.force)
        except FileExistsError as exc:
            return _error(str(exc))
        for path in paths:
            print(path)
        return 0
    if args.command in ("grade", "grade-all") and args.sandbox == "bwrap":
        from .judge import resolve_sandbox

        try:
            resolve_sandbox("bwrap")
        except RuntimeError as exc:  # asked for the sandbox and it does not start: say so, grade nothing
            return _error(str(exc))
    if args.command == "grade":
        if not args.notebook.is_file():
            return _error(f"{args.notebook}: no such notebook", 1)
        report = grading.grade_notebook(args.notebook, cell_timeout=args.timeout, sandbox=args.sandbox)
        print(json.dumps(report.to_json(), indent=1) if args.json else report.to_text())
        if not report.questions or report.error.startswith("could not read"):  # nothing of it could be graded
            return _error(report.error or f"could not grade {args.notebook}", 1)
        return 0
    try:
        due = _due_dates(args.due)
        roster = grading.read_roster(args.roster) if args.roster else None
        submissions = grading.find_submissions(args.submissions)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    if not submissions and roster is None:
        return _error(f"no submissions found under {args.submissions} (expected DIR/<student>/<assignment>.ipynb)", 1)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if roster is not None:
        extra = sorted(set(submissions) - set(roster))
        if extra:
            print(f"warning: not on the roster, graded anyway: {', '.join(extra)}", file=sys.stderr)
    reports = grading.grade_submissions(submissions, cell_timeout=args.timeout, jobs=args.jobs, sandbox=args.sandbox)
    if any(r.sandbox == "none" for per in reports.values() for r in per.values()):
        print("warning: graded without the sandbox (bubblewrap is missing or does not start here): the notebooks' "
              "code could read and write this machine's files", file=sys.stderr)
    expected = args.assignments or sorted({n for per in submissions.values() for n in per}) or list(grading.ASSIGNMENTS)
    reports = grading.complete(reports, roster, expected)
    submitted = _submission_times(submissions, due)
    for path in (args.csv, args.wide_csv):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    grading.write_csv(reports, args.csv, submitted)
    if args.wide_csv:
        grading.write_wide_csv(reports, args.wide_csv, submitted)
    if args.feedback:
        grading.write_feedback_html(reports, args.feedback)
    for student in sorted(reports):
        for name, report in sorted(reports[student].items()):
            late = " LATE" if submitted.get((student, name), ("", ""))[1] == "yes" else ""
            print(f"{student:20s} {name:24s} {report.score:g} / {report.max_score:g}{late}")
    print(f"wrote {args.csv}" + "".join(f", {p}" for p in (args.wide_csv, args.feedback) if p))
    return 0


def _due_dates(values: list[str]) -> dict:
    """``{assignment or None: datetime}`` from ``--due TIME`` / ``--due ASSIGNMENT=TIME``."""
    due: dict = {}
    for value in values:
        name, sep, when = value.partition("=")
        if sep and name.strip() in grading.ASSIGNMENTS:
            due[name.strip()] = grading.parse_time(when)
        elif sep and name.strip() and " " not in name.strip():
            raise ValueError(f"--due {value!r}: {name!r} is not an assignment ({', '.join(grading.ASSIGNMENTS)})")
        else:
            due[None] = grading.parse_time(value)
    return due


def _submission_times(submissions: dict, due: dict) -> dict:
    """``{(student, assignment): (recorded time or "", "yes"/"no"/"")}`` from nbgrader's ``timestamp.txt``."""
    out = {}
    for student, per in submissions.items():
        for name, path in per.items():
            try:
                when = grading.read_timestamp(path)
            except (OSError, ValueError) as exc:
                print(f"warning: {student}/{name}: unreadable timestamp.txt ({exc})", file=sys.stderr)
                when = None
            limit = due.get(name, due.get(None))
            late = "" if limit is None or when is None else ("yes" if when > limit else "no")
            if limit is not None and when is None:
                late = "unknown (no timestamp.txt)"
            out[student, name] = (when.isoformat() if when else "", late)
    return out


if __name__ == "__main__":
    sys.exit(main())
