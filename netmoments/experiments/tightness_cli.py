"""``python -m netmoments.experiments tightness``: run (or resume) the tightness protocol, or ``--report`` the
tables of an existing run (with ``--tables`` / ``--csv`` exports, each with its provenance sidecar). The protocol
is in :mod:`netmoments.experiments.tightness`, which registers the subcommand and hands :func:`main` its
``run_tightness`` and ``build_context``; this module only reads the options, checks them and the files before
minutes of set-up, and says what went wrong in one ``error: ...`` line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .runner import (
    RunnerError, add_runner_arguments, atomic_write, check_writable, command_line, output_in_use, output_lock,
    positive_float, positive_int, resume_metadata, runner_kwargs, scan_file, seed_value, stop_on_sigterm, task_id,
)
from .tightness_analysis import report_markdown, write_per_image_csv
from .tightness_inputs import scaled_cluster_counts
from .tightness_settings import (
    COV_KINDS, POINT_KINDS, ROW_LISTS, TightnessConfig, check_settings, default_metadata_path, run_settings, task_list,
)

__all__ = ["add_parser", "main"]


def add_parser(subparsers, handler) -> argparse.ArgumentParser:
    """Add the ``tightness`` subcommand to an argparse ``subparsers`` object, run by ``handler(args)``."""
    parser = subparsers.add_parser(
        "tightness",
        help="NM20's tightness experiment (Tables 2 and 3, formula / linearization split) on the trained LeNet",
        description=(
            "Per test digit, sigma and covariance family: Monte Carlo through the real LeNet and through each "
            "two-stage linearization on the same draws, and the closed-form moments. Appends one JSON line per "
            "task x linearization point to --out as each task finishes (resumable with --resume), and keeps a "
            "metadata JSON beside it. --report prints the tables of an existing --out without running."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--images", type=positive_int, default=1000, help="number of test digits (the first N)")
    parser.add_argument("--sigma", type=positive_float, nargs="+", default=[0.01, 0.05, 0.2],
                        help="noise levels: average per-pixel std (sparse: std on each noisy pixel)")  # fmt: skip
    parser.add_argument("--cov", nargs="+", choices=COV_KINDS, default=list(COV_KINDS), help="covariance families")
    parser.add_argument("--point", nargs="+", choices=POINT_KINDS, default=list(POINT_KINDS),
                        help="linearization points under dense noise (others: input only)")  # fmt: skip
    parser.add_argument("--clusters", type=positive_int, nargs="+", default=None,
                        help="Table 3's k (default: NM20's k scaled to the pool of training digits)")  # fmt: skip
    parser.add_argument("--mc-samples", type=positive_int, default=10_000, help="draws per task")
    parser.add_argument("--tie-samples", type=positive_int, default=8, help="draws for the tie-aware linearization")
    parser.add_argument("--seed", type=seed_value, default=0, help="base seed of every task (0 to 2^32 - 1)")
    parser.add_argument("--mnist", default=None, help="directory of the full MNIST idx files (default: shipped)")
    parser.add_argument("--out", default="tightness.jsonl",
                        help="JSON lines output, .jsonl or gzipped .jsonl.gz (one line per task x point)")
    parser.add_argument("--metadata", default=None, help="metadata JSON path (default: beside --out, .json)")
    parser.add_argument("--report", action="store_true", help="only print the tables of an existing --out")
    parser.add_argument("--tables", default=None, metavar="MD", help="with --report: also write the tables there")
    parser.add_argument("--csv", default=None, metavar="CSV",
                        help="with --report: write the per-digit metrics there (one row per digit and setting)")
    add_runner_arguments(parser)
    parser.set_defaults(func=handler)
    return parser


def _write_export_provenance(args, export, rows_path: Path, meta_path: Path, n_rows: int) -> None:
    """A sidecar beside an export (:func:`netmoments.provenance.write_sidecar`): the export command's own record
    (command, commit, versions, machine, date) and the rows it was computed from, whose own provenance is the run's
    metadata JSON."""
    from ..provenance import run_metadata, write_sidecar

    record = run_metadata(command_line(args),
                          source={"rows": rows_path.as_posix(), "n_rows": n_rows, "metadata": meta_path.as_posix()})
    write_sidecar(export, record)


def main(args: argparse.Namespace, run, build) -> int:
    """Run the ``tightness`` subcommand from parsed arguments with ``run`` (``run_tightness``) and ``build``
    (``build_context``) of :mod:`netmoments.experiments.tightness`; returns the exit status (2: an error, said in
    one ``error: ...`` line; 130: interrupted)."""
    out = Path(args.out)
    meta_path = Path(args.metadata) if args.metadata else default_metadata_path(out)
    try:
        if args.report:
            return _report(args, out, meta_path)
        if args.tables or args.csv:
            print("error: --tables and --csv go with --report (they export an existing --out)", file=sys.stderr)
            return 2
        if (out.with_suffix("") if out.suffix == ".gz" else out).suffix != ".jsonl":
            print(f"error: --out must end in .jsonl or .jsonl.gz, got {out}", file=sys.stderr)
            return 2
        # A batch system (or `kill`) stops a run with SIGTERM: treat it like Ctrl-C, so the sitting is recorded.
        with stop_on_sigterm() as stop:
            return _run_cli(args, out, meta_path, run, build, stop)
    except (RunnerError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _warn(text: str) -> None:
    """Say ``text`` on stderr as a warning."""
    print(f"warning: {text}", file=sys.stderr)


def _report(args, out: Path, meta_path: Path) -> int:
    """``--report``: the tables of an existing ``--out`` (and ``--tables`` / ``--csv`` exports), with a warning
    for whatever makes them partial: a run still writing, a torn tail, damage, missing tasks, no metadata."""
    if not out.exists():
        print(f"error: --report needs an existing --out; {out} does not exist", file=sys.stderr)
        return 2
    clash = _export_clash(args, out, meta_path)
    if clash:
        print(f"error: {clash}", file=sys.stderr)
        return 2
    holder = output_in_use(out)
    if holder:
        _warn(f"{out} is being written by a run in progress (pid {holder}): the report covers the tasks done so far")
    scan = scan_file(out)
    rows = scan.rows
    if scan.damage:
        _warn(f"{out} is damaged: {scan.damage}. The tables cover the complete tasks that could be read; the file "
              "was left as it is")  # fmt: skip
    if scan.torn_tail:
        _warn(f"{out} ends in {scan.torn_tail}, left out (a run stopped mid-write; --resume runs that task again)")
    meta = _read_run_metadata(meta_path)
    missing = {"image", "sigma", "cov", "point", "k", *ROW_LISTS} - set(rows[0]) if rows else set()
    if missing:
        raise RunnerError(f"{out} holds no tightness rows (no {', '.join(sorted(missing)[:3])} ...)")
    if meta is not None:
        _warn_missing_tasks(scan.tasks, meta, out, meta_path)
    if not rows:
        _warn(f"{out} holds no complete task: the tables are empty")
    text = report_markdown(rows, meta)
    print(text)
    _write_exports(args, text, rows, out, meta_path)
    print(f"{len(scan.tasks)} complete task(s) read from {out}", file=sys.stderr)
    return 0


def _export_clash(args, out: Path, meta_path: Path) -> str | None:
    """Why an export would overwrite what it is made from (the results, the metadata) or another export (a
    sidecar included), or ``None``."""
    from ..provenance import sidecar_path

    keep = {out.resolve(): "the results (--out)", meta_path.resolve(): "the metadata"}
    for option, export in (("--tables", args.tables), ("--csv", args.csv)):
        if not export:
            continue
        for target in (Path(export), sidecar_path(export)):
            if target.resolve() in keep:
                return (f"{option} {export} would overwrite {keep[target.resolve()]} ({target}); choose another "
                        "file")  # fmt: skip
            keep[target.resolve()] = f"what {option} writes"
    return None


def _read_run_metadata(meta_path: Path) -> dict | None:
    """The metadata of the run being reported, or ``None`` (with a warning) where there is none;
    :class:`RunnerError` for a file that is not the metadata of a tightness run."""
    if not meta_path.exists():
        _warn(f"no metadata at {meta_path}: the report has no provenance, and cannot tell whether the run is complete")
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as err:
        raise RunnerError(f"cannot read the metadata {meta_path} ({err})") from None
    needed = ("n_images", "sigmas", "covs", "config", "fingerprint")
    if not (isinstance(meta, dict) and isinstance(meta.get("settings"), dict)
            and all(k in meta["settings"] for k in needed) and isinstance(meta.get("sittings"), list)):
        raise RunnerError(f"{meta_path} is not the metadata of a tightness run (no {', '.join(needed)} settings)")
    return meta


def _warn_missing_tasks(tasks: list[str], meta: dict, out: Path, meta_path: Path) -> None:
    """Warn when the complete ``tasks`` of ``out`` are not those its metadata's settings make: some are missing
    (the run is incomplete), or some belong to other settings (the metadata may be another run's)."""
    s = meta["settings"]
    try:
        expected = {task_id(t) for t in task_list(int(s["n_images"]), s["sigmas"], s["covs"])}
    except (KeyError, TypeError, ValueError):
        return
    foreign = set(tasks) - expected
    if foreign:
        _warn(f"{len(foreign)} task(s) in {out} are not in the settings of {meta_path} (e.g. "
              f"{sorted(foreign)[0]}): the metadata may belong to another run")
    present = len(set(tasks) & expected)
    if present < len(expected):
        _warn(f"{out} holds {present} of the {len(expected)} tasks of its run (counted in the rows): the "
              "run is incomplete, and the tables cover those tasks only; continue it with --resume")


def _write_exports(args, text: str, rows: list[dict], out: Path, meta_path: Path) -> None:
    """Write the ``--tables`` markdown and the ``--csv`` per-digit records, each with its provenance sidecar."""
    if args.tables:
        atomic_write(Path(args.tables), text.encode())
        _write_export_provenance(args, args.tables, out, meta_path, len(rows))
        print(f"tables written to {args.tables}", file=sys.stderr)
    if args.csv:
        n = write_per_image_csv(rows, args.csv)
        _write_export_provenance(args, args.csv, out, meta_path, len(rows))
        print(f"{n} per-digit records written to {args.csv}", file=sys.stderr)


def _run_cli(args, out: Path, meta_path: Path, run, build, stop=None) -> int:
    """Run (or resume) the protocol the options ask for into ``out`` with ``run`` and ``build`` (see :func:`main`),
    once both files are locked and the options checked against a resumed run's settings."""
    try:
        # Lock first: a second run on these files stops here, at once, and a folder that cannot be written is found
        # before minutes of set-up. The cheap checks of a resume come next, for the same reason.
        with output_lock(out, meta_path):
            old = resume_metadata(out, meta_path, args.resume)
            check_writable(out)
            check_writable(meta_path)
            from ..data import load_mnist

            images, labels = load_mnist("test", path=args.mnist)
            pool, pool_labels = load_mnist("train", path=args.mnist)
            config = _config(args, len(images), len(pool))
            if old is not None:
                check_settings(old, run_settings(args.images, args.sigma, args.cov, config), out, meta_path)
            options = runner_kwargs(args)
            if options["scheduler"] is not None:  # fail fast, before minutes of k-means
                from .runner_dask import dask_client

                with dask_client(0, options["scheduler"], options["connect_timeout"]):
                    pass
            ctx = build(config, images=images, labels=labels, pool=pool, pool_labels=pool_labels,
                        n_images=args.images)  # fmt: skip
            meta = run(out, n_images=args.images, sigmas=args.sigma, covs=args.cov, config=config, context=ctx,
                       command=command_line(args), metadata_path=meta_path, stop=stop, **options)  # fmt: skip
    except (RunnerError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: the finished tasks are in {out} and the sitting in {meta_path}; continue with --resume",
              file=sys.stderr)  # fmt: skip
        return 130
    print(f"{meta['tasks_done']} of {meta['n_tasks']} tasks in {out}; metadata in {meta_path}")
    return 0


def _config(args, n_test: int, n_pool: int) -> TightnessConfig:
    """The configuration the options ask for, given ``n_test`` test digits and a pool of ``n_pool`` training
    digits; ``ValueError`` for options they cannot meet."""
    if args.images > n_test:
        raise ValueError(f"--images {args.images} exceeds the {n_test} test digits")
    clusters = tuple(args.clusters) if args.clusters else tuple(scaled_cluster_counts(n_pool))
    if "input" not in args.point:
        raise ValueError("--point must include 'input'")
    return TightnessConfig(seed=args.seed, mc_samples=args.mc_samples, tie_samples=args.tie_samples,
                           points=tuple(args.point), clusters=clusters)  # fmt: skip
