"""``python -m netmoments.course release OUTDIR`` | ``grade NOTEBOOK [--json]`` | ``grade-all DIR --csv FILE``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import grading


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netmoments.course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("release", help="write every assignment's student notebook to OUTDIR/<assignment>/")
    p.add_argument("outdir", type=Path)
    p.add_argument("--only", nargs="*", choices=grading.ASSIGNMENTS, help="release only these assignments")
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
    p.add_argument("--csv", type=Path, required=True, help="where to write the scores")
    p.add_argument("--timeout", type=float, default=grading.DEFAULT_CELL_TIMEOUT)
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded in parallel")
    p.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto",
                   help="run the student's code in a bubblewrap sandbox (see grade --help)")
    args = parser.parse_args(argv)

    if args.command == "release":
        for path in grading.release(args.outdir, tuple(args.only or grading.ASSIGNMENTS)):
            print(path)
        return 0
    if args.command in ("grade", "grade-all") and args.sandbox == "bwrap":
        from .judge import resolve_sandbox

        try:
            resolve_sandbox("bwrap")
        except RuntimeError as exc:  # asked for the sandbox and it does not start: say so, grade nothing
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "grade":
        report = grading.grade_notebook(args.notebook, cell_timeout=args.timeout, sandbox=args.sandbox)
        print(json.dumps(report.to_json(), indent=1) if args.json else report.to_text())
        return 0
    submissions = grading.find_submissions(args.submissions)
    if not submissions:
        print(f"no submissions found under {args.submissions} (expected DIR/<student>/<assignment>.ipynb)",
              file=sys.stderr)
        return 1
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    reports = grading.grade_submissions(submissions, cell_timeout=args.timeout, jobs=args.jobs, sandbox=args.sandbox)
    if any(r.sandbox == "none" for per in reports.values() for r in per.values()):
        print("warning: graded without the sandbox (bubblewrap is missing or does not start here): the notebooks' "
              "code could read and write this machine's files", file=sys.stderr)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    grading.write_csv(reports, args.csv)
    for student in sorted(reports):
        for name, report in sorted(reports[student].items()):
            print(f"{student:20s} {name:24s} {report.score:g} / {report.max_score:g}")
    print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
