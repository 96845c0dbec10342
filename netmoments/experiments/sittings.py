"""A *sitting* is one call of an experiment run (a run killed and resumed has several). Its metadata records each
sitting: the command, the code's commit, the package versions, the machine, the dates, the machine's load and the
runner's options, then what :class:`netmoments.experiments.runner.RunSummary` says it did.
"""
from __future__ import annotations

import os
import platform
import time

__all__ = ["git_commit", "versions", "machine", "load_average", "now", "start_sitting", "end_sitting",
           "tuning_record", "tuning_main"]

#: The packages whose versions every sitting records.
PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "dask", "distributed", "netmoments")


def git_commit() -> str | None:
    """HEAD's commit, with ``+dirty`` when the package's code differs from it (not the result files a run
    appends to)."""
    from ..provenance import git_state

    commit, dirty = git_state(paths=("netmoments",))
    return None if commit is None else commit + ("+dirty" if dirty else "")


def versions(extra=()) -> dict:
    """Python's version and that of each package of :data:`PACKAGES`, then of ``extra`` (``None`` where one is
    not installed)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in (*PACKAGES, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> str:
    """One line for the run's metadata: OS, architecture, CPU model and logical CPU count."""
    from ..provenance import cpu_model

    return f"{platform.system()} {platform.machine()}, {cpu_model()[0]}, {os.cpu_count()} logical CPUs"


def load_average():
    """The 1, 5 and 15 minute load averages, rounded (``None`` where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def now() -> str:
    """The local date and time as the metadata writes it."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def start_sitting(command: str | None, runner_options: dict, extra_versions=()) -> dict:
    """The record of a sitting that starts now; ``runner_options`` are the
    :func:`netmoments.experiments.runner.run_tasks` options (without the progress bar and the stop event, which do
    not change the rows)."""
    return {
        "command": command, "git_commit": git_commit(), "versions": versions(extra_versions), "machine": machine(),
        "started": now(), "load_average_at_start": load_average(),
        "runner": {k: v for k, v in runner_options.items() if k not in ("progress", "stop")},
    }  # fmt: skip


def end_sitting(sitting: dict, summary) -> None:
    """Bring ``sitting`` up to date at a checkpoint: what the run did so far (a ``RunSummary``), when, and the load."""
    sitting.update(summary.as_dict())
    sitting["finished"] = now()
    sitting["load_average_at_end"] = load_average()


def tuning_record(command: str | None, start: float, extra_versions=()) -> dict:
    """What a tuning file records beside its scores: the command, commit, versions, machine, date and the wall
    seconds since ``start`` (a ``time.perf_counter()`` reading)."""
    return dict(command=command, git_commit=git_commit(), versions=versions(extra_versions), machine=machine(),
                date=time.strftime("%Y-%m-%d %H:%M %Z"), wall_s=round(time.perf_counter() - start, 1))


def tuning_main(argv, module: str, description: str, tune, default_images: int) -> int:
    """The command line of a tuning module ``python -m module``: ``--out JSON`` (refused if it exists),
    ``--images`` training digits (default ``default_images``) and ``--no-progress``; calls
    ``tune(out, images=, progress=, command=)`` with the command as typed."""
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--out", required=True, help="the JSON file to write (refused if it exists)")
    parser.add_argument("--images", type=int, default=default_images,
                        help=f"training digits (default: {default_images})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        raise SystemExit(f"{args.out} exists; remove it first to tune again")
    if args.images < 1:
        raise SystemExit(f"--images must be positive, got {args.images}")
    command = f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])
    tune(args.out, images=args.images, progress=not args.no_progress, command=command)
    return 0
