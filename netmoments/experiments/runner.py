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
  ``out`` is an error (never silently overwritten or appended to).
- **Dask.** ``workers=N`` starts a local cluster of ``N`` single-threaded worker processes (with nannies: a
  worker that dies is restarted and its task run again, and so is a task that the scheduler forgot, e.g. after
  losing the client for a while; tasks that kill ``retries + 1`` workers or are lost ``retries + 1`` times fail
  the run);
  ``scheduler="tcp://host:port"`` joins an existing cluster (e.g. one started by dask-jobqueue on Slurm) and
  fails within ``connect_timeout`` seconds if nothing answers there.
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
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import hashlib
import io
import json
import math
import os
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

__all__ = [
    "TASK_COLUMNS",
    "RunnerError",
    "RunSummary",
    "task_id",
    "seed_from_key",
    "read_rows",
    "completed_tasks",
    "run_tasks",
    "add_runner_arguments",
    "runner_kwargs",
    "command_line",
    "MALLOC_ENVIRON",
    "keep_freed_memory",
]

TASK_COLUMNS = ("task", "task_rows")
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


#: glibc malloc settings for a task process, as environment variables read at its start: one arena, no
#: ``mmap`` blocks, no trimming, so freed memory is reused instead of faulted in again (module docstring).
MALLOC_ENVIRON = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def keep_freed_memory() -> bool:
    """Make this process's glibc malloc keep freed memory for reuse (the settings of :data:`MALLOC_ENVIRON`
    that can still change after start: no ``mmap`` blocks, no trimming).

    Allocations made on threads that already have their own arena are not affected; that is why a worker
    process gets the environment variables before it starts. Returns ``False`` (and changes nothing) where the C
    library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
    # a trim threshold of -1 is the largest size_t: never trim
    return bool(mallopt(m_trim_threshold, -1)) and bool(mallopt(m_mmap_max, 0))


class RunnerError(RuntimeError):
    """A run could not start or complete (bad output file, unreachable scheduler, a failing task)."""


# ------------------------------------------------------------------------------------------------ keys


def _plain(key):
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


# ------------------------------------------------------------------------------------------------ files


def _format_of(path: Path) -> str:
    suffix = path.suffixes[-2].lower() if _gzipped(path) and len(path.suffixes) >= 2 else path.suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise RunnerError(f"out must end in .csv or .jsonl (optionally followed by .gz), got {str(path)!r}")
    return fmt


def _gzipped(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _sound_bytes(path: Path) -> tuple[bytes, int, int]:
    """(the file's text up to its last complete line, byte length of that sound prefix on disk, file length).

    For a gzipped file the sound prefix is its complete gzip members (a task is one member, written at once).
    """
    raw = path.read_bytes()
    if not _gzipped(path):
        sound = raw.rfind(b"\n") + 1  # a torn last line (no newline) is dropped
        return raw[:sound], sound, len(raw)
    parts, pos = [], 0
    while pos < len(raw):
        member = zlib.decompressobj(wbits=31)
        try:
            data = member.decompress(raw[pos:])
        except zlib.error:
            break
        if not member.eof:
            break  # truncated member: a write that did not finish
        parts.append(data)
        pos = len(raw) - len(member.unused_data)
    text = b"".join(parts)
    cut = text.rfind(b"\n") + 1
    return text[:cut], (pos if cut == len(text) else 0), len(raw)


def _parse_value(text: str):
    """CSV cell -> int, float or str (the CSV writer writes ints and floats with ``repr``)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _scan(path: Path, fmt: str) -> tuple[list[str] | None, list[dict], int, bool]:
    """(CSV header, complete rows, byte length of the sound prefix, whether anything had to be dropped).

    A row is kept only when its line ends in a newline and its task has all ``task_rows`` rows.
    """
    text, sound, size = _sound_bytes(path)
    text = text.decode()
    header = None
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = list(reader.fieldnames) if reader.fieldnames else None
        rows = [{k: _parse_value(v) for k, v in row.items()} for row in reader]
        if header is not None and not set(TASK_COLUMNS) <= set(header):
            raise RunnerError(f"{path} has no {TASK_COLUMNS} columns: not written by this runner")
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row["task"])] = counts.get(str(row["task"]), 0) + 1
    complete = [r for r in rows if counts[str(r["task"])] == int(r["task_rows"])]
    for r in complete:
        r["task"] = str(r["task"])
    return header, complete, sound, (sound != size or len(complete) != len(rows))


def read_rows(path, complete_only: bool = True) -> list[dict]:
    """The rows of a runner output file (CSV cells parsed to int / float / str), torn tasks dropped."""
    path = Path(path)
    fmt = _format_of(path)
    _, rows, _, _ = _scan(path, fmt)
    return rows


def completed_tasks(path) -> set[str]:
    """The ``task`` ids complete in ``path`` (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return set()
    return {r["task"] for r in read_rows(path)}


def drop_tasks(path, task_ids) -> int:
    """Rewrite the runner output ``path`` without the rows of the tasks in ``task_ids`` (ids as :func:`task_id`
    gives them), atomically; a torn tail is dropped too. Returns how many rows were removed.

    For a run whose task list changed under a kept id (e.g. a last, partial chunk that grows when more digits are
    added): dropping the stale task makes ``resume`` run it again.
    """
    path = Path(path)
    fmt = _format_of(path)
    header, rows, _, _ = _scan(path, fmt)
    drop = {str(t) for t in task_ids}
    kept = [r for r in rows if r["task"] not in drop]
    fields = header or (list(rows[0]) if rows else None)
    if fields:
        _atomic_write(path, _header_bytes(fields, fmt) + (_encode(kept, fields, fmt) if kept else b""))
    return len(rows) - len(kept)


def _encode(rows: list[dict], fields: list[str], fmt: str) -> bytes:
    out = io.StringIO(newline="")
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        for row in rows:
            writer.writerow([_csv_cell(row[f]) for f in fields])
    else:
        for row in rows:
            out.write(json.dumps({f: row[f] for f in fields}, separators=(",", ":")) + "\n")
    return out.getvalue().encode()


def _csv_cell(value):
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    if value is None:
        return ""
    return value


def _header_bytes(fields: list[str], fmt: str) -> bytes:
    if fmt != "csv":
        return b""
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue().encode()


def _atomic_write(path: Path, data: bytes) -> None:
    if _gzipped(path) and data:
        data = gzip.compress(data, mtime=0)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _Appender:
    """Appends whole tasks to the output file (one ``write`` + ``fsync`` per task)."""

    def __init__(self, path: Path, fmt: str, fields: list[str] | None):
        self.path, self.fmt, self.fields = path, fmt, fields

    def append(self, key_id: str, rows: list[dict]) -> None:
        stamped = [{**row, "task": key_id, "task_rows": len(rows)} for row in rows]
        if self.fields is None:  # first task of a new file: its rows fix the columns
            self.fields = list(TASK_COLUMNS) + [k for k in stamped[0] if k not in TASK_COLUMNS]
            _atomic_write(self.path, _header_bytes(self.fields, self.fmt))
        for row in stamped:
            if set(row) != set(self.fields):
                extra, missing = set(row) - set(self.fields), set(self.fields) - set(row)
                raise RunnerError(
                    f"task {key_id} returned a row whose columns differ from the file's "
                    f"(extra {sorted(extra)}, missing {sorted(missing)})"
                )
        data = _encode(stamped, self.fields, self.fmt)
        if _gzipped(self.path):
            data = gzip.compress(data, mtime=0)  # one member per task: readable even if a later write is torn
        data = memoryview(data)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            while data:
                written = os.write(fd, data)
                data = data[written:]
            os.fsync(fd)
        finally:
            os.close(fd)


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


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """Set environment variables for the duration of the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _dask_client(workers: int, scheduler: str | None, connect_timeout: float):
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - dask is in requirements.txt
        raise RunnerError("--workers / --scheduler need Dask: pip install 'dask[distributed]'") from err
    import logging

    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=connect_timeout)
        except (OSError, TimeoutError, ValueError) as err:
            raise RunnerError(
                f"cannot reach the Dask scheduler at {scheduler!r} within {connect_timeout:g} s "
                f"({type(err).__name__}: {err}); is it running, and is the address tcp://HOST:PORT?"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    env = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    # Set before each worker process starts (glibc reads them then), overriding Dask's trim threshold. A nanny
    # reads them when it is created, from the environment first (where an earlier cluster may have left Dask's
    # defaults) and then from its config, so both hold ours while the cluster is made.
    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **env, **MALLOC_ENVIRON}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}), _environ(MALLOC_ENVIRON):
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            env=env,
        )
    try:
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


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
        out: ``.csv`` or ``.jsonl`` path.
        context: one read-only object every task receives (a model, a dataset); sent to each worker once.
        resume: skip the tasks complete in an existing ``out`` (a torn tail is dropped first); without it an
            existing ``out`` is an error.
        workers: ``0`` = run in this process; ``N >= 1`` = a local Dask cluster of ``N`` processes.
        scheduler: address of a running Dask scheduler (``tcp://host:port``); excludes ``workers``.
        threads: torch threads per task (the same everywhere, so rows do not depend on where a task ran).
        retries: how many times a task whose worker died is run again before the run fails.
        connect_timeout: seconds to wait for ``scheduler``.
        progress: a tqdm bar over the tasks.
        checkpoint: called with the running :class:`RunSummary` at most every ``checkpoint_s`` seconds, at the
            end and when the run is interrupted (e.g. to rewrite a metadata file).
        stop: an event, e.g. set by a signal handler, checked before each in-process task and after each task is
            recorded; once it is set the run ends as on Ctrl-C (``KeyboardInterrupt``, the sitting recorded).
            A handler that raises ``KeyboardInterrupt`` itself can have it swallowed by whatever library callback
            the main thread happens to be in; the event cannot be lost.

    Returns:
        :class:`RunSummary`. Raises :class:`RunnerError` when a task fails (rows of finished tasks are kept,
        so the run can be resumed) or the cluster cannot be reached.
    """
    start_wall = time.perf_counter()
    out = Path(out)
    fmt = _format_of(out)
    tasks = list(tasks)
    ids = [task_id(t) for t in tasks]
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

    fields = None
    done: set[str] = set()
    if out.exists():
        if not resume:
            raise RunnerError(f"{out} exists; pass resume=True (--resume) to continue it, or choose another --out")
        header, rows, sound, damaged = _scan(out, fmt)
        if header is not None:
            fields = header
        elif rows:
            fields = list(rows[0])
        if damaged:  # rewrite without the torn line / incomplete tasks, before appending anything
            _atomic_write(out, (_header_bytes(fields, fmt) if fields else b"") + (_encode(rows, fields, fmt) if rows else b""))
        done = {r["task"] for r in rows}
        unknown = done - set(ids)
        if unknown:
            raise RunnerError(
                f"{out} holds {len(unknown)} task(s) that are not in this run's task list (e.g. {sorted(unknown)[0]}): "
                "it was written by a run with other settings"
            )
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    pending = [(i, t) for i, (t, k) in enumerate(zip(tasks, ids)) if k not in done]
    summary = RunSummary(
        n_tasks=len(tasks), n_skipped=len(tasks) - len(pending), workers=scheduler or workers, out=str(out)
    )
    appender = _Appender(out, fmt, fields)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), initial=summary.n_skipped, desc=desc, unit="task")
    last_checkpoint = time.perf_counter()

    def record(i: int, rows: list[dict], seconds: tuple[float, float]) -> None:
        nonlocal last_checkpoint
        appender.append(ids[i], rows)
        summary.n_run += 1
        summary.task_seconds.append(seconds[0])
        summary.task_cpu_seconds.append(seconds[1])
        summary.task_kernel_seconds.append(seconds[2])
        summary.task_costs[ids[i]] = seconds
        if bar is not None:
            bar.update(1)
        if checkpoint is not None and time.perf_counter() - last_checkpoint >= checkpoint_s:
            summary.wall_s = time.perf_counter() - start_wall
            checkpoint(summary)
            last_checkpoint = time.perf_counter()
        stop_if_asked()

    def stop_if_asked() -> None:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt("stop requested")

    try:
        if not pending:
            pass
        elif scheduler is None and workers == 0:
            for i, key in pending:
                stop_if_asked()
                try:
                    rows, seconds = _call_task(fn, key, context, threads)
                except RunnerError:
                    raise
                except Exception as err:
                    raise RunnerError(f"task {ids[i]} failed: {type(err).__name__}: {err}") from err
                record(i, rows, seconds)
        else:
            _run_on_dask(pending, ids, fn, context, workers, scheduler, threads, retries, connect_timeout, record)
    except BaseException:
        # Interrupted (Ctrl-C, a failing task): the rows written so far are complete tasks; record the sitting.
        summary.wall_s = time.perf_counter() - start_wall
        if checkpoint is not None:
            checkpoint(summary)
        raise
    finally:
        if bar is not None:
            bar.close()
        summary.wall_s = time.perf_counter() - start_wall
    if summary.n_skipped + summary.n_run == len(tasks):
        # Put the file in task-list order so it does not depend on the completion order.
        _, rows, _, _ = _scan(out, fmt)
        order = {k: n for n, k in enumerate(ids)}
        rows.sort(key=lambda r: order[r["task"]])  # stable: a task's rows keep their order
        fields = appender.fields or (list(rows[0]) if rows else None)
        if rows:
            _atomic_write(out, _header_bytes(fields, fmt) + _encode(rows, fields, fmt))
        summary.complete = True
    summary.wall_s = time.perf_counter() - start_wall
    if checkpoint is not None:
        checkpoint(summary)
    return summary


def _run_on_dask(pending, ids, fn, context, workers, scheduler, threads, retries, connect_timeout, record):
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    with _dask_client(workers, scheduler, connect_timeout) as client:
        ctx = client.scatter(context, broadcast=True, hash=False) if context is not None else None
        attempts = {}

        def submit(i, key):
            attempts[i] = attempts.get(i, 0) + 1
            future = client.submit(
                _call_task, fn, key, ctx, threads, pure=False, key=f"netmoments-task-{i}-{attempts[i]}"
            )
            index_of[future.key] = (i, key)
            return future

        index_of = {}
        queue = as_completed([submit(i, key) for i, key in pending])
        try:
            for future in queue:
                i, key = index_of.pop(future.key)
                try:
                    rows, seconds = future.result()
                except (KilledWorker, FutureCancelledError) as err:
                    # KilledWorker: the scheduler already re-ran it on other workers (allowed-failures). A
                    # cancellation we did not make: the scheduler forgot the task, and perhaps the scattered
                    # context, e.g. after losing this client for a while (a laptop that slept, a stopped process).
                    # Either way, a few fresh tries before giving up on the run.
                    if attempts[i] <= retries:
                        if ctx is not None and not _scattered_alive(ctx):
                            ctx = client.scatter(context, broadcast=True, hash=False)
                        queue.add(submit(i, key))
                        continue
                    what = "killed its worker" if isinstance(err, KilledWorker) else f"was cancelled ({err})"
                    raise RunnerError(f"task {ids[i]} {what} {attempts[i]} times; giving up") from None
                except RunnerError:
                    raise
                except Exception as err:
                    raise RunnerError(f"task {ids[i]} failed: {type(err).__name__}: {err}") from err
                record(i, rows, seconds)
        finally:
            for future in list(queue.futures) if hasattr(queue, "futures") else []:
                future.cancel()


def _scattered_alive(scattered) -> bool:
    """Whether every future that ``client.scatter`` returned (one, or a list or dict of them) still holds data."""
    if isinstance(scattered, dict):
        scattered = list(scattered.values())
    futures = scattered if isinstance(scattered, (list, tuple)) else [scattered]
    return all(f.status == "finished" for f in futures)


# ------------------------------------------------------------------------------------------------ CLI


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


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _scheduler_address(text: str) -> str:
    rest = text.split("://", 1)[1] if "://" in text else text
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected an address like tcp://HOST:PORT, got {text!r}")
    return text


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
    where.add_argument("--workers", type=_non_negative_int, default=0,
                       help="local Dask worker processes (one torch thread each); 0 runs in this process")  # fmt: skip
    where.add_argument("--scheduler", type=_scheduler_address, default=None, metavar="ADDRESS",
                       help="join a running Dask cluster at tcp://HOST:PORT (e.g. dask-jobqueue on Slurm)")  # fmt: skip
    group.add_argument("--resume", action="store_true", help="skip the tasks already complete in --out")
    group.add_argument("--threads", type=_positive_int, default=1, help="torch threads per task")
    group.add_argument("--retries", type=_non_negative_int, default=2, help="re-runs of a task whose worker died")
    group.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to wait for --scheduler")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def runner_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`run_tasks` keyword arguments from options added by :func:`add_runner_arguments`."""
    return {
        "resume": args.resume,
        "workers": args.workers,
        "scheduler": args.scheduler,
        "threads": args.threads,
        "retries": args.retries,
        "connect_timeout": args.connect_timeout,
        "progress": not args.no_progress,
    }
