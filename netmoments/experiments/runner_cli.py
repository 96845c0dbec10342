"""The command-line side of the runner: the options every experiment shares (:func:`add_runner_arguments`), the
:func:`netmoments.experiments.runner.run_tasks` arguments they give (:func:`runner_kwargs`), the argument types
the subcommands check their numbers with, and the command line a run records (:func:`command_line`).
"""
from __future__ import annotations

import argparse
import math
import sys

from .runner_dask import MAX_CONNECT_TIMEOUT, check_timeout, split_address, too_many_workers

__all__ = [
    "positive_int",
    "positive_float",
    "seed_value",
    "command_line",
    "add_runner_arguments",
    "runner_kwargs",
]

def _non_negative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seed_value(text: str) -> int:
    """An argparse type: a seed, a whole number in ``0 .. 2^32 - 1``."""
    value = _whole_number(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in 0 .. 2^32 - 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _scheduler_address(text: str) -> str:
    try:
        scheme, _, _ = split_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an address like tcp://HOST:PORT, got {text!r}") from None
    if scheme not in ("tcp", "tls"):
        raise argparse.ArgumentTypeError(f"expected a tcp:// (or tls://) address, got {text!r}")
    return text


def _worker_count(text: str) -> int:
    value = _non_negative_int(text)
    problem = too_many_workers(value) if value else None
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _timeout(text: str) -> float:
    try:
        return check_timeout(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0 and <= {MAX_CONNECT_TIMEOUT:g}, got {text!r}") from None


def command_line(args: argparse.Namespace) -> str:
    """The command a subcommand ran, as its records keep it: ``python -m netmoments.experiments`` and the argv
    that ``netmoments.experiments.__main__.main`` stores in ``args.argv`` (``sys.argv[1:]`` without it)."""
    argv = getattr(args, "argv", None) or sys.argv[1:]
    return "python -m netmoments.experiments " + " ".join(argv)


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--out --resume --workers --scheduler --threads --no-progress`` options (``--out`` must exist already
    or be added by the caller)."""
    group = parser.add_argument_group("running (see netmoments.experiments.runner)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_worker_count, default=0,
                       help="local Dask worker processes (one torch thread each); 0 runs in this process")  # fmt: skip
    where.add_argument("--scheduler", type=_scheduler_address, default=None, metavar="ADDRESS",
                       help="join a running Dask cluster at tcp://HOST:PORT (e.g. dask-jobqueue on Slurm)")  # fmt: skip
    group.add_argument("--resume", action="store_true", help="skip the tasks already complete in --out")
    group.add_argument("--threads", type=positive_int, default=1, help="torch threads per task")
    group.add_argument("--retries", type=_non_negative_int, default=2, help="re-runs of a task whose worker died")
    group.add_argument("--connect-timeout", type=_timeout, default=5.0,
                       help="seconds to wait for --scheduler (a wall-clock deadline)")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def runner_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`netmoments.experiments.runner.run_tasks` keyword arguments from options added by
    :func:`add_runner_arguments`."""
    return {
        "resume": args.resume,
        "workers": args.workers,
        "scheduler": args.scheduler,
        "threads": args.threads,
        "retries": args.retries,
        "connect_timeout": args.connect_timeout,
        "progress": not args.no_progress,
    }
