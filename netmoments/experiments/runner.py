"""Resumable experiment runs over a list of tasks: in-process, on a local Dask cluster, or on an existing one.

An experiment is a list of hashable *task keys* (e.g. ``(image, sigma, "table2")``) and a function that turns
one key into a list of result rows (dicts). :func:`run_tasks` runs the tasks that are not yet in the output
file and appends each task's rows to it as soon as the task finishes, so a killed run loses at most the tasks
in flight. The rules that make a run trustworthy:

- **Order-independent rows.** A task must seed everything from its key (see :func:`seed_from_key`), and every
  task runs with the same number of torch threads (``threads``, default 1) in-process and on a worker, so its
  rows are bit-identical however many workers run and in whatever order they finish. When the last task is
  done the file is rewritten in task-list order, so a one-worker and an N-worker run give the same file.
- **Atomic per task.** All rows of a task are written with one ``write`` on an append-only descriptor and
  ``fsync``\\ ed. Every row carries two bookkeeping columns, ``task`` (the key as canonical JSON) and
  ``task_rows`` (how many rows the task has); a reader (:func:`read_rows`) and ``resume`` drop a torn last
  line and any task with fewer rows than it announced, so no partial row or partial task is ever used.
- **Resume.** With ``resume=True`` the tasks already complete in ``out`` are skipped; without it an existing
  ``out`` is an error (never silently overwritten or appended to). An experiment writes its settings to a metadata
  file before its first task and refuses to resume with other settings, or without that file
  (:func:`resume_metadata`).
- **One run per output.** A run holds an exclusive lock on its output (and an experiment on its metadata too:
  :func:`output_lock`, ``fcntl.flock`` on a hidden ``.NAME.lock`` beside the file); a second run on the same file
  fails at once, ``... is in use by another run (pid N)``. The kernel drops the lock of a killed process.
- **Damage is not a torn tail.** A killed write can only leave a torn *tail* (a last line, gzip member or task cut
  short), which resume drops. Anything else (an unreadable line or gzip member, a task cut short or repeated before
  the end) is damage: :func:`scan_file` says at which byte, reads the complete tasks on both sides of it (one corrupt
  gzip member hides nothing after it), and resume refuses the file, leaving it as it is. When its last task is done
  a run checks that every task is in the file before it calls itself complete.
- **Dask.** ``workers=N`` starts a local cluster of ``N`` single-threaded worker processes (with nannies: a
  worker that dies is restarted and its task run again, and so is a task that the scheduler forgot, e.g. after
  losing the client for a while; tasks that kill ``retries + 1`` workers or are lost ``retries + 1`` times fail
  the run);
  ``scheduler="tcp://host:port"`` joins an existing cluster (e.g. one started by dask-jobqueue on Slurm) and
  fails within about ``connect_timeout`` seconds of wall clock if no Dask scheduler answers there (a listener that
  never answers, an HTTP server: :mod:`.runner_dask`). A local cluster gets at most :func:`max_workers`
  workers (about 820 MB each, against the machine's or the cgroup's memory).
- **Memory reuse.** A task allocates and frees the same large buffers over and over (10^4 draws through a conv
  net are hundreds of MB per batch). glibc serves blocks over 32 MB with fresh mappings, and Dask's own default
  (``MALLOC_TRIM_THRESHOLD_=65536``) hands freed heap straight back to the kernel, so each batch faulted its
  pages in anew: on the 2-core machine a third of a tightness task's CPU time was kernel time. The local
  cluster's workers therefore start with :data:`MALLOC_ENVIRON` (one arena, no mappings, no trimming: pages are
  faulted in once and reused), and the command-line tools apply the same settings to their own process
  (:func:`keep_freed_memory`). Workers of a cluster you start yourself need those variables in their environment
  (see the how-to page). The rows do not change; a worker's memory stays at its peak.

The output is CSV or JSON lines, chosen by ``out``'s suffix (``.csv`` / ``.jsonl``), optionally gzipped
(``.csv.gz`` / ``.jsonl.gz``: each task is appended as its own gzip member, so the file stays a valid gzip stream
and a torn last member is dropped like a torn last line). The CLI options of every
experiment come from :func:`add_runner_arguments` and :func:`runner_kwargs`.

This module holds the task loop and resume; the rest lives beside it, and every name below is importable from
here: :mod:`.runner_files` (reading and writing the output and metadata files), :mod:`.runner_locks` (one run
per output), :mod:`.runner_dask` (clusters, memory) and :mod:`.runner_cli` (the shared command-line options).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

# Every name the experiments, notebooks and tests import from here, wherever it now lives (some are not in
# __all__: atomic_write, write_json, positive_int, ...).
from .runner_cli import add_runner_arguments, command_line, positive_float, positive_int, runner_kwargs, seed_value
from .runner_dask import (
    MALLOC_ENVIRON, MAX_CONNECT_TIMEOUT, WORKER_MEMORY_BYTES, check_timeout, keep_freed_memory, max_workers,
    run_on_dask, split_address, too_many_workers,
)
from .runner_files import (
    FORMATS, TASK_COLUMNS, FileScan, OutputInUse, RunnerError, RunnerWarning, TaskAppender, atomic_write,
    completed_tasks, format_of, read_rows, refuse_damage, rewrite_rows, scan_file, write_json,
)
from .runner_locks import check_writable, output_in_use, output_lock

__all__ = [
    "TASK_COLUMNS",
    "RunnerError",
    "OutputInUse",
    "RunnerWarning",
    "RunSummary",
    "FileScan",
    "task_id",
    "seed_from_key",
    "scan_file",
    "read_rows",
    "completed_tasks",
    "drop_tasks",
    "output_lock",
    "output_in_use",
    "check_writable",
    "resume_metadata",
    "stop_on_sigterm",
    "max_workers",
    "run_tasks",
    "add_runner_arguments",
    "runner_kwargs",
    "command_line",
    "MALLOC_ENVIRON",
    "keep_freed_memory",
]


# ------------------------------------------------------------------------------------------------ keys


def _plain(key):
    """``key`` as plain JSON values (lists for tuples, Python numbers for numpy / torch scalars); ``ValueError``
    for a number that is not finite, ``TypeError`` for anything else."""
    if isinstance(key, tuple | list):
        return [_plain(k) for k in key]
    if isinstance(key, bool) or key is None or isinstance(key, int | str):
        return key
    if isinstance(key, float):
        if not math.isfinite(key):
            raise ValueError(f"task keys must hold finite numbers, got {key!r}")
        return key
    if hasattr(key, "item") and callable(key.item):  # numpy / torch scalars
        return _plain(key.item())
    raise TypeError(f"task keys must be built from int, float, str, bool, None and tuples; got {type(key).__name__}")


def task_id(key: Hashable) -> str:
    """The canonical text of a task key (compact JSON; tuples become lists): the ``task`` column of its rows."""
    return json.dumps(_plain(key), separators=(",", ":"))


def seed_from_key(seed: int, *parts) -> int:
    """A 63-bit seed from a base ``seed`` and key parts (SHA-256 of their canonical JSON).

    Independent of process, worker, order and Python's hash randomisation; nearby keys give unrelated seeds.
    """
    digest = hashlib.sha256(task_id((int(seed), *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ------------------------------------------------------------------------------------------------ resume


def drop_tasks(path, task_ids) -> int:
    """Rewrite the runner output ``path`` without the rows of the tasks in ``task_ids`` (ids as :func:`task_id`
    gives them), atomically; a torn tail is dropped too. Returns how many rows were removed. A damaged file
    (:func:`scan_file`) is refused (:class:`RunnerError`) and left as it is, and so is a file another run holds
    (:class:`OutputInUse`).

    For a run whose task list changed under a kept id (e.g. a last, partial chunk that grows when more digits are
    added): dropping the stale task makes ``resume`` run it again.
    """
    path = Path(path)
    format_of(path)  # refuse a file that is no runner output before taking its lock
    with output_lock(path):  # not while a run appends to it
        scan = scan_file(path)
        refuse_damage(path, scan, "dropping tasks")
        header, rows = scan.header, scan.rows
        drop = {str(t) for t in task_ids}
        kept = [r for r in rows if r["task"] not in drop]
        fields = header or (list(rows[0]) if rows else None)
        if fields:
            rewrite_rows(path, fields, kept)
    return len(rows) - len(kept)


def resume_metadata(out, metadata, resume: bool) -> dict | None:
    """The metadata (``{"settings": ..., "sittings": [...], ...}``) of the run that ``resume`` continues in
    ``out``, or ``None`` for a fresh run. An experiment writes its metadata before its first task, so a run that
    was killed at any moment can be checked when it is resumed.

    Refuses (:class:`RunnerError`), changing nothing: ``out`` and ``metadata`` being one file; without ``resume``,
    either file existing (a fresh run never overwrites; except the metadata of a run that finished no task and left
    no results); with ``resume``, an ``out`` whose metadata is missing or
    unreadable (its settings cannot be checked, and a resume with other settings would mix two experiments under
    one label). The caller compares the settings.
    """
    out, metadata = Path(out), Path(metadata)
    if out.resolve() == metadata.resolve():
        raise RunnerError(f"the metadata file would be the output itself ({out}): choose another --metadata")
    if not resume:
        if out.exists():
            raise RunnerError(f"{out} exists; pass --resume to continue that run, or choose another --out")
        if metadata.exists() and not _never_ran(metadata):
            raise RunnerError(f"{metadata} exists (the metadata of another run?); pass --resume to continue that "
                              "run, or choose another --out or --metadata")
        return None
    if not metadata.exists():
        if out.exists():
            raise RunnerError(
                f"{out} cannot be resumed: its metadata file {metadata} is missing, so the settings it was written "
                "with cannot be checked (a resume with other settings would mix two experiments in one file). Name the "
                "right file with --metadata, or start a new --out"
            )
        return None
    try:
        old = json.loads(metadata.read_text())
    except (OSError, ValueError) as err:
        raise RunnerError(f"cannot read the metadata {metadata} ({err}); it was left as it is") from None
    if not (isinstance(old, dict) and isinstance(old.get("settings"), dict) and isinstance(old.get("sittings"), list)):
        raise RunnerError(f"{metadata} holds no run settings: it is not the metadata of an experiment run")
    return old


def _never_ran(metadata: Path) -> bool:
    """Whether ``metadata`` is the metadata of a run that stopped before it finished a task (e.g. its scheduler
    could not be reached): with no results beside it, a fresh run may replace it."""
    try:
        old = json.loads(metadata.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and isinstance(old.get("settings"), dict) and old.get("tasks_done") == 0


@contextlib.contextmanager
def stop_on_sigterm():
    """Make SIGTERM (what a batch system or ``kill`` sends) stop a run like Ctrl-C while the block runs; yields the
    event to pass to :func:`run_tasks` as ``stop``.

    The handler raises ``KeyboardInterrupt`` (which stops set-up at once) and sets the event, which ends the run
    after its next task even if the exception lands in a library callback that swallows it (Dask's garbage
    collection callback did, and the run went on). The previous handler is restored afterwards. Outside the main
    thread (where handlers cannot be set) it only yields an event.
    """
    import signal

    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------ running


@dataclass
class RunSummary:
    """What one call of :func:`run_tasks` did.

    Attributes:
        n_tasks: tasks in the list.
        n_skipped: tasks already complete in ``out`` (``resume``).
        n_run: tasks run and written by this call.
        task_seconds: wall seconds of each task run by this call (measured where it ran), in completion order.
        task_cpu_seconds: CPU seconds of the same tasks (independent of other load on the machine).
        task_kernel_seconds: the part of those CPU seconds spent in the kernel (page faults, mostly: see
            "Memory reuse" in the module docstring).
        task_costs: ``{task id: (wall seconds, CPU seconds, kernel seconds)}`` for the tasks run by this call.
        wall_s: wall seconds of the whole call (cluster start-up included).
        workers: number of worker processes (0 = in-process), or the scheduler address.
        out: the output file.
        complete: every task is now in ``out`` (and the file has been put in task-list order).
    """

    n_tasks: int
    n_skipped: int
    n_run: int = 0
    task_seconds: list[float] = field(default_factory=list)
    task_cpu_seconds: list[float] = field(default_factory=list)
    task_kernel_seconds: list[float] = field(default_factory=list)
    task_costs: dict = field(default_factory=dict)
    wall_s: float = 0.0
    workers: int | str = 0
    out: str = ""
    complete: bool = False

    def as_dict(self) -> dict:
        secs = sorted(self.task_seconds)
        return {
            "n_tasks": self.n_tasks,
            "n_skipped": self.n_skipped,
            "n_run": self.n_run,
            "wall_s": round(self.wall_s, 3),
            "workers": self.workers,
            "task_seconds_mean": round(sum(secs) / len(secs), 3) if secs else None,
            "task_seconds_median": round(secs[len(secs) // 2], 3) if secs else None,
            "task_seconds_total": round(sum(secs), 3),
            "task_cpu_seconds_mean": round(sum(self.task_cpu_seconds) / len(secs), 3) if secs else None,
            "task_cpu_seconds_total": round(sum(self.task_cpu_seconds), 3),
            "task_kernel_seconds_total": round(sum(self.task_kernel_seconds), 3),
            "complete": self.complete,
        }


def _call_task(fn, key, context, threads: int):
    """Run one task with ``threads`` torch threads; returns ``(rows, (wall, CPU, kernel seconds))``.

    Runs in-process or on a worker. The CPU seconds (this process's, all its threads, user and kernel) are the
    cost that does not depend on how busy the machine was; the kernel seconds are their part spent in the kernel.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start, start_cpu = time.perf_counter(), time.process_time()
        start_kernel = os.times().system
        rows = fn(key) if context is None else fn(key, context)
        seconds = (time.perf_counter() - start, time.process_time() - start_cpu, os.times().system - start_kernel)
    finally:
        torch.set_num_threads(previous)
    rows = list(rows)
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise RunnerError(f"task {task_id(key)} must return a non-empty list of dicts, got {rows!r:.200}")
    return rows, seconds


def run_tasks(
    tasks: Sequence[Hashable],
    fn: Callable[..., Iterable[dict]],
    out,
    *,
    context: Any = None,
    resume: bool = False,
    workers: int = 0,
    scheduler: str | None = None,
    threads: int = 1,
    retries: int = 2,
    connect_timeout: float = 5.0,
    progress: bool = True,
    desc: str = "tasks",
    checkpoint: Callable[[RunSummary], None] | None = None,
    checkpoint_s: float = 60.0,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Run ``fn`` on every task not yet in ``out`` and append each task's rows to ``out`` as it finishes.

    Args:
        tasks: hashable, JSON-able keys (ints, floats, strings, tuples of them), unique; their order is the
            order of submission and of the final file.
        fn: ``fn(key) -> list[dict]`` (or ``fn(key, context)`` when ``context`` is given). Every row of every
            task must have the same keys (not ``task`` / ``task_rows``). It must be picklable (a module-level
            function or a ``functools.partial`` of one) to run on workers, and should seed all its randomness
            from the key (:func:`seed_from_key`).
        context: one read-only object every task receives (a model, a dataset); sent to each worker once.
        out: ``.csv`` or ``.jsonl`` path (``.gz`` after either: gzipped); locked for the run (:func:`output_lock`).
        resume: skip the tasks complete in an existing ``out`` (a torn tail is dropped first; a damaged file is
            refused, see :func:`scan_file`); without it an existing ``out`` is an error.
        workers: ``0`` = run in this process; ``N >= 1`` = a local Dask cluster of ``N`` processes (at most
            :func:`max_workers`).
        scheduler: address of a running Dask scheduler (``tcp://host:port``); excludes ``workers``.
        threads: torch threads per task (the same everywhere, so rows do not depend on where a task ran).
        retries: how many times a task whose worker died is run again before the run fails.
        connect_timeout: seconds to wait for ``scheduler`` (finite, positive: a wall-clock deadline).
        progress: a tqdm bar over the tasks.
        checkpoint: called with the running :class:`RunSummary` at most every ``checkpoint_s`` seconds, at the
            end and when the run is interrupted (e.g. to rewrite a metadata file).
        stop: an event, e.g. set by a signal handler, checked before each in-process task and after each task is
            recorded; once it is set the run ends as on Ctrl-C (``KeyboardInterrupt``, the sitting recorded).
            A handler that raises ``KeyboardInterrupt`` itself can have it swallowed by whatever library callback
            the main thread happens to be in; the event cannot be lost.

    Returns:
        :class:`RunSummary`. Raises :class:`RunnerError` when a task fails (rows of finished tasks are kept,
        so the run can be resumed), the cluster cannot be reached, ``out`` is damaged or cannot be written, and
        :class:`OutputInUse` when another run holds ``out``.
    """
    start_wall = time.perf_counter()
    out = Path(out)
    format_of(out)  # a name that is no runner output is refused before anything else
    tasks = list(tasks)
    ids = [task_id(t) for t in tasks]
    _check_run_options(ids, workers, scheduler, threads, retries, connect_timeout)
    with output_lock(out):
        return _run_locked(tasks, ids, fn, out, start_wall, context=context, resume=resume, workers=workers,
                           scheduler=scheduler, threads=threads, retries=retries, connect_timeout=connect_timeout,
                           progress=progress, desc=desc, checkpoint=checkpoint, checkpoint_s=checkpoint_s, stop=stop)


def _check_run_options(ids, workers, scheduler, threads, retries, connect_timeout) -> None:
    """``ValueError`` for :func:`run_tasks` arguments that make no sense, before the output is touched."""
    if len(set(ids)) != len(ids):
        raise ValueError("tasks must be unique")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    if scheduler is not None and workers:
        raise ValueError("give either workers or scheduler, not both")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if workers and scheduler is None and too_many_workers(workers):
        raise ValueError(too_many_workers(workers))
    if scheduler is not None:
        split_address(scheduler)
        check_timeout(connect_timeout)


def _run_locked(tasks, ids, fn, out: Path, start_wall: float, *, context, resume, workers, scheduler, threads,
                retries, connect_timeout, progress, desc, checkpoint, checkpoint_s, stop) -> RunSummary:
    """:func:`run_tasks` once the output is locked: run what is pending, then put a complete file in order."""
    fields, done = _open_output(out, ids, resume)
    pending = [(i, t) for i, (t, k) in enumerate(zip(tasks, ids)) if k not in done]
    summary = RunSummary(
        n_tasks=len(tasks), n_skipped=len(tasks) - len(pending), workers=scheduler or workers, out=str(out)
    )
    recorder = _Recorder(summary, ids, TaskAppender(out, format_of(out), fields), start_wall, progress=progress,
                         desc=desc, checkpoint=checkpoint, checkpoint_s=checkpoint_s, stop=stop)
    try:
        if not pending:
            pass
        elif scheduler is None and workers == 0:
            _run_in_process(pending, ids, fn, context, threads, recorder)
        else:
            run_on_dask(pending, ids, _call_task, fn, context, workers=workers, scheduler=scheduler, threads=threads,
                        retries=retries, connect_timeout=connect_timeout, record=recorder.record)
    except BaseException:
        # Interrupted (Ctrl-C, a failing task): the rows written so far are complete tasks; record the sitting.
        recorder.save()
        raise
    finally:
        recorder.close()
    if summary.n_skipped + summary.n_run == len(tasks):
        _put_in_task_order(out, ids, recorder.appender.fields)
        summary.complete = True
    recorder.save()
    return summary


def _open_output(out: Path, ids: list[str], resume: bool) -> tuple[list[str] | None, set[str]]:
    """The columns and the complete task ids of an existing ``out`` (``(None, set())`` for a new one), once it is
    known to be writable, undamaged and of this task list; a torn tail is dropped from the file first."""
    if not out.exists():
        check_writable(out)
        return None, set()
    if not resume:
        raise RunnerError(f"{out} exists; pass resume=True (--resume) to continue it, or choose another --out")
    check_writable(out)
    scan = scan_file(out)
    refuse_damage(out, scan, "resuming")
    rows = scan.rows
    fields = scan.header if scan.header is not None else (list(rows[0]) if rows else None)
    if scan.torn_tail:  # rewrite without the torn line / incomplete task, before appending anything
        rewrite_rows(out, fields, rows)
    done = {r["task"] for r in rows}
    unknown = done - set(ids)
    if unknown:
        raise RunnerError(
            f"{out} holds {len(unknown)} task(s) that are not in this run's task list (e.g. {sorted(unknown)[0]}): "
            "it was written by a run with other settings"
        )
    return fields, done


class _Recorder:
    """Writes each finished task to the output and keeps the run's account of it: the :class:`RunSummary`, the
    progress bar, the checkpoints and the stop event."""

    def __init__(self, summary: RunSummary, ids, appender: TaskAppender, start_wall: float, *, progress, desc,
                 checkpoint, checkpoint_s, stop):  # fmt: skip
        self.summary, self.ids, self.appender, self.start_wall = summary, ids, appender, start_wall
        self.checkpoint, self.checkpoint_s, self.stop = checkpoint, checkpoint_s, stop
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=summary.n_tasks, initial=summary.n_skipped, desc=desc, unit="task")
        self.last_checkpoint = time.perf_counter()

    def record(self, i: int, rows: list[dict], seconds: tuple[float, float, float]) -> None:
        """Append task ``i``'s rows and count its cost; checkpoint when one is due; then stop if asked."""
        self.appender.append(self.ids[i], rows)
        summary = self.summary
        summary.n_run += 1
        summary.task_seconds.append(seconds[0])
        summary.task_cpu_seconds.append(seconds[1])
        summary.task_kernel_seconds.append(seconds[2])
        summary.task_costs[self.ids[i]] = seconds
        if self.bar is not None:
            self.bar.update(1)
        if self.checkpoint is not None and time.perf_counter() - self.last_checkpoint >= self.checkpoint_s:
            self.save()
            self.last_checkpoint = time.perf_counter()
        self.stop_if_asked()

    def stop_if_asked(self) -> None:
        """End the run as Ctrl-C would (``KeyboardInterrupt``) once the stop event is set."""
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt("stop requested")

    def save(self) -> None:
        """Bring the summary's wall time up to date and hand the summary to the checkpoint, if any."""
        self.summary.wall_s = time.perf_counter() - self.start_wall
        if self.checkpoint is not None:
            self.checkpoint(self.summary)

    def close(self) -> None:
        """Close the progress bar and bring the wall time up to date."""
        if self.bar is not None:
            self.bar.close()
        self.summary.wall_s = time.perf_counter() - self.start_wall


def _run_in_process(pending, ids, fn, context, threads: int, recorder: _Recorder) -> None:
    """Run the ``pending`` ``[(index, key)]`` one after the other in this process, recording each."""
    for i, key in pending:
        recorder.stop_if_asked()
        try:
            rows, seconds = _call_task(fn, key, context, threads)
        except RunnerError:
            raise
        except Exception as err:
            raise RunnerError(f"task {ids[i]} failed: {type(err).__name__}: {err}") from err
        recorder.record(i, rows, seconds)


def _put_in_task_order(out: Path, ids: list[str], fields: list[str] | None) -> None:
    """Check that ``out`` now holds every task of ``ids``, then rewrite it in task-list order, so the file does not
    depend on the order the tasks finished in."""
    # The count of tasks run says nothing about what is in the file: something else may have written to it.
    scan = scan_file(out) if out.exists() else FileScan(header=None, rows=[], size=0)
    missing = [k for k in ids if k not in set(scan.tasks)]
    if scan.damage or missing:
        raise RunnerError(
            f"{out} should now hold all {len(ids)} tasks, but "
            + (f"it is damaged: {scan.damage}" if scan.damage
               else f"{len(missing)} are missing (e.g. {missing[0]})")
            + "; it was left as it is (did something else write to it?)"
        )
    rows = scan.rows
    order = {k: n for n, k in enumerate(ids)}
    rows.sort(key=lambda r: order[r["task"]])  # stable: a task's rows keep their order
    fields = fields or (list(rows[0]) if rows else None)
    if rows:
        rewrite_rows(out, fields, rows)
