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
  never answers, an HTTP server: :func:`_probe_scheduler`). A local cluster gets at most :func:`max_workers`
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
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

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


class OutputInUse(RunnerError):
    """Another run holds the output's lock (:func:`output_lock`)."""


class RunnerWarning(UserWarning):
    """A runner output file was read, but it is damaged (:func:`scan_file`)."""


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


def _parse_value(text: str):
    """CSV cell -> int, float or str (the CSV writer writes ints and floats with ``repr``)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


_GZIP_MAGIC = b"\x1f\x8b\x08"
_CHUNK = 1 << 20


def _gzip_member(view: memoryview, start: int) -> tuple[bytes, int | None]:
    """(text, end) of the gzip member that starts at byte ``start``; ``end`` is ``None`` when the file ends inside
    it (a write that did not finish). Raises ``zlib.error`` for a member that is not valid gzip (CRC included).
    Reads in chunks, so a file of many members is read in linear time."""
    member = zlib.decompressobj(wbits=31)
    parts, pos = [], start
    while not member.eof:
        if pos >= len(view):
            return b"".join(parts), None
        chunk = view[pos : pos + _CHUNK]
        parts.append(member.decompress(chunk))
        pos += len(chunk)
    return b"".join(parts), pos - len(member.unused_data)


@dataclass
class FileScan:
    """What :func:`scan_file` read in a runner output file.

    Attributes:
        header: the CSV header (``None`` for JSON lines, or an empty file).
        rows: the rows of every complete task, in file order (CSV cells parsed to int / float / str); a task
            found twice counts once (its first copy).
        size: bytes on disk.
        torn_tail: what a write that was killed leaves at the end of the file (a torn last line or gzip member,
            a last task with fewer rows than it announced), or ``None``. Harmless: ``resume`` drops it and runs
            those tasks again.
        damage: damage that no killed write leaves (a line or gzip member that cannot be read, a task cut short
            or repeated before the end of the file), said with the byte where the file broke, or ``None``. The
            complete tasks after it are still in ``rows``; ``resume`` refuses such a file and leaves it as it is.
        broken_at: the byte offset of the first damage (``None`` if none).
    """

    header: list[str] | None
    rows: list[dict]
    size: int
    torn_tail: str | None = None
    damage: str | None = None
    broken_at: int | None = None

    @property
    def tasks(self) -> list[str]:
        """The ids of the complete tasks, in file order."""
        return list(dict.fromkeys(r["task"] for r in self.rows))


def _pieces(raw: bytes, gzipped: bool, problems: list) -> tuple[list[tuple[int, bytes]], str | None]:
    """Split a file into ``[(byte offset, text)]`` pieces that can be read (the whole file, or one per gzip member)
    and a torn tail; a gzip member that cannot be decompressed goes into ``problems`` as ``(offset, what)``, and
    reading goes on at the next member that can."""
    if not gzipped:
        cut = raw.rfind(b"\n") + 1  # a torn last line (no newline) is dropped
        torn = f"a torn last line ({len(raw) - cut} bytes at byte {cut})" if cut < len(raw) else None
        return [(0, raw[:cut])], torn
    view, pieces, pos = memoryview(raw), [], 0
    while pos < len(raw):
        try:
            text, end = _gzip_member(view, pos)
        except zlib.error as err:
            if not raw[pos:].strip(b"\0"):  # zeros to the end: a file extended by a write whose data never landed
                return pieces, f"{len(raw) - pos} zero bytes at the end (from byte {pos})"
            resync = pos + 1
            while True:  # the next member that can be read in full
                resync = raw.find(_GZIP_MAGIC, resync)
                if resync < 0:
                    break
                try:
                    if _gzip_member(view, resync)[1] is not None:
                        break
                except zlib.error:
                    pass
                resync += 1
            if resync < 0:
                problems.append((pos, f"the gzip member at byte {pos} cannot be read ({err}) and nothing after it "
                                      f"can ({len(raw) - pos} bytes)"))
                return pieces, None
            problems.append((pos, f"the gzip member at byte {pos} cannot be read ({err}); reading goes on at the "
                                  f"next readable member, at byte {resync} ({resync - pos} bytes skipped)"))
            pos = resync
            continue
        if end is None:
            return pieces, f"a torn last gzip member ({len(raw) - pos} bytes at byte {pos})"
        if text and not text.endswith(b"\n"):
            problems.append((pos, f"the gzip member at byte {pos} does not end with a whole line"))
        pieces.append((pos, text))
        pos = end
    return pieces, None


def _lines(pieces: list[tuple[int, bytes]], gzipped: bool):
    """``(byte offset, line)`` of every line of the pieces; in a gzipped file, the offset of the line's member."""
    for start, text in pieces:
        pos = 0
        while pos < len(text):
            end = text.find(b"\n", pos) + 1 or len(text)
            yield (start if gzipped else start + pos), text[pos:end]
            pos = end


def _bookkept(row) -> bool:
    if not isinstance(row, dict) or "task" not in row:
        return False
    count = row.get("task_rows")
    return isinstance(count, int) and not isinstance(count, bool) and count >= 1


def _where(offset: int, gzipped: bool) -> str:
    return f"in the gzip member at byte {offset}" if gzipped else f"at byte {offset}"


def _records(lines, fmt: str, problems: list, path: Path, gzipped: bool) -> tuple[list[str] | None, list]:
    """(CSV header, ``[(offset, row)]``); a line that is no row of this runner goes into ``problems``."""
    records = []
    if fmt == "jsonl":
        for offset, line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:  # UnicodeDecodeError included
                row = None
            if _bookkept(row):
                records.append((offset, row))
            else:
                problems.append((offset, f"a line {_where(offset, gzipped)} is not a row of this runner"))
        return None, records
    at = [0]

    def text_lines():
        for offset, line in lines:
            at[0] = offset
            yield line.decode("utf-8", errors="replace")

    reader = csv.reader(text_lines())
    try:
        header = next(reader, None)
        if header is not None and not set(TASK_COLUMNS) <= set(header):
            raise RunnerError(f"{path} has no {TASK_COLUMNS} columns: not written by this runner")
        for cells in reader:
            if not cells:
                continue
            row = dict(zip(header, map(_parse_value, cells))) if len(cells) == len(header) else None
            if row is not None and _bookkept(row):
                records.append((at[0], row))
            else:
                problems.append((at[0], f"a line {_where(at[0], gzipped)} is not a row of this runner"))
    except csv.Error as err:
        problems.append((at[0], f"the CSV cannot be read from the line {_where(at[0], gzipped)} on ({err})"))
    return header, records


def scan_file(path) -> FileScan:
    """Read a runner output file and tell its complete tasks from a torn tail and from damage.

    A run appends each task's rows in one write (one gzip member when gzipped), so the file is a sequence of
    whole tasks; a run that was killed can only leave a torn *tail*. Anything else (an unreadable line or gzip
    member, a task cut short or repeated before the end) is damage, reported with the byte where it is; the
    complete tasks after it are still read, so nothing after the damage is hidden.
    """
    path = Path(path)
    fmt, gzipped = _format_of(path), _gzipped(path)
    raw = path.read_bytes()
    problems: list[tuple[int, str]] = []
    pieces, torn = _pieces(raw, gzipped, problems)
    header, records = _records(_lines(pieces, gzipped), fmt, problems, path, gzipped)
    # Group consecutive rows by task (a task's rows are written together) and keep the complete groups.
    groups: list[tuple[int, str, list[dict]]] = []
    for offset, row in records:
        key = str(row["task"])
        if groups and groups[-1][1] == key and len(groups[-1][2]) < int(groups[-1][2][0]["task_rows"]):
            groups[-1][2].append(row)
        else:
            groups.append((offset, key, [row]))
    complete, seen, kept_at = [], set(), []
    last_problem = max((offset for offset, _ in problems), default=-1)
    for n, (offset, key, rows) in enumerate(groups):
        announced = int(rows[0]["task_rows"])
        if len(rows) != announced or any(int(r["task_rows"]) != announced for r in rows):
            if n == len(groups) - 1 and offset > last_problem:
                what = f"task {key} with {len(rows)} of its {announced} rows"
                torn = what if torn is None else f"{what}, then {torn}"
            else:
                problems.append((offset, f"task {key} {_where(offset, gzipped)} has {len(rows)} of the {announced} "
                                         "rows it announced"))
            continue
        if key in seen:
            problems.append((offset, f"task {key} appears again {_where(offset, gzipped)}"))
            continue
        seen.add(key)
        kept_at.append(offset)
        for r in rows:
            r["task"] = key
        complete.extend(rows)
    scan = FileScan(header=header, rows=complete, size=len(raw), torn_tail=torn)
    if problems:
        problems.sort(key=lambda p: p[0])
        scan.broken_at = problems[0][0]
        later = sum(1 for offset in kept_at if offset > scan.broken_at)
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        scan.damage = f"{problems[0][1]}{more}; {later} complete task(s) follow it"
    return scan


def read_rows(path, complete_only: bool = True) -> list[dict]:
    """The rows of a runner output file (CSV cells parsed to int / float / str), torn tasks dropped.

    A damaged file (see :func:`scan_file`) gives the complete tasks around the damage and a
    :class:`RunnerWarning` that says where it broke.
    """
    path = Path(path)
    scan = scan_file(path)
    if scan.damage:
        warnings.warn(f"{path} is damaged: {scan.damage}", RunnerWarning, stacklevel=2)
    return scan.rows


def completed_tasks(path) -> set[str]:
    """The ``task`` ids complete in ``path`` (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return set()
    return {r["task"] for r in read_rows(path)}


def _refuse_damage(path: Path, scan: FileScan, action: str) -> None:
    if scan.damage:
        raise RunnerError(
            f"{path} is damaged: {scan.damage}. It was left as it is: {action} would rewrite it without what "
            f"cannot be read. --report (read_rows) still reads every complete task; copy them to a new file to go on"
        )


def drop_tasks(path, task_ids) -> int:
    """Rewrite the runner output ``path`` without the rows of the tasks in ``task_ids`` (ids as :func:`task_id`
    gives them), atomically; a torn tail is dropped too. Returns how many rows were removed. A damaged file
    (:func:`scan_file`) is refused (:class:`RunnerError`) and left as it is, and so is a file another run holds
    (:class:`OutputInUse`).

    For a run whose task list changed under a kept id (e.g. a last, partial chunk that grows when more digits are
    added): dropping the stale task makes ``resume`` run it again.
    """
    path = Path(path)
    fmt = _format_of(path)
    with output_lock(path):  # not while a run appends to it
        scan = scan_file(path)
        _refuse_damage(path, scan, "dropping tasks")
        header, rows = scan.header, scan.rows
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


def write_json(path, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (a temporary file, fsync, rename): a reader or a
    killed run never sees half a metadata file."""
    _atomic_write(Path(path), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


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


# ------------------------------------------------------------------------------------------------ locks

_HELD: dict[str, list] = {}  # lock file -> [descriptor, depth]: the locks this process holds
_HELD_GUARD = threading.Lock()


def _lock_file(path) -> Path:
    path = Path(path).resolve()  # two spellings of one file (relative, absolute, a symlink) share a lock
    return path.with_name(f".{path.name}.lock")


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _acquire(lock: Path, shown) -> None:
    import fcntl

    with _HELD_GUARD:
        if str(lock) in _HELD:  # this process holds it already (a run inside a command that locked first)
            _HELD[str(lock)][1] += 1
            return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise OutputInUse(f"{shown} is in use by another run (pid {holder})") from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the holder removes the file as it lets go: make sure ours is still the one at that name
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            os.close(fd)
            raise
    except OutputInUse:
        raise
    except OSError as err:
        raise RunnerError(f"cannot write beside {shown} (to lock it: {err.strerror or err}); "
                          "is its folder writable?") from None
    with _HELD_GUARD:
        _HELD[str(lock)] = [fd, 1]


def _release(lock: Path) -> None:
    with _HELD_GUARD:
        entry = _HELD[str(lock)]
        entry[1] -= 1
        if entry[1]:
            return
        del _HELD[str(lock)]
    with contextlib.suppress(OSError):
        os.unlink(lock)  # still holding the lock: whoever opened this file meanwhile sees it is gone and retries
    os.close(entry[0])


@contextlib.contextmanager
def output_lock(*paths):
    """Hold an exclusive lock on each of ``paths`` (the files a run writes) for the duration of the block.

    The lock is ``fcntl.flock`` on a hidden file beside each path (``.NAME.lock``, holding the pid, removed on
    release; the kernel lets go of it when a process dies, even by SIGKILL). A path another process holds raises
    :class:`OutputInUse` at once (``... is in use by another run (pid N)``); a folder that cannot be written raises
    :class:`RunnerError`. Re-entrant within a process: a command can lock its files before its set-up and then
    call :func:`run_tasks`, which locks the output again.
    """
    locks = {}
    for p in paths:
        locks.setdefault(_lock_file(p), p)
    taken = []
    try:
        for lock in sorted(locks):  # one order for every process: of two runs that want the same files, one starts
            _acquire(lock, locks[lock])
            taken.append(lock)
        yield
    finally:
        for lock in reversed(taken):
            _release(lock)


def output_in_use(path) -> str | None:
    """The pid (as text) of another live process whose :func:`output_lock` file is beside ``path``, else ``None``.

    Only reads the lock file and asks whether that pid is alive: taking the lock, even for an instant, could make
    a run that starts at that instant fail. A pid reused after a killed run can give a false answer; it is meant
    for warnings.
    """
    lock = _lock_file(path)
    with _HELD_GUARD:
        if str(lock) in _HELD:
            return None
    try:
        text = lock.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) == os.getpid():
        return None
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return None
    except OSError:  # alive, but another user's
        pass
    return text


def check_writable(path) -> None:
    """Raise :class:`RunnerError` unless ``path`` can be written: its folder (created if missing) takes new files
    and, if ``path`` exists, it can be opened for appending (nothing is changed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, "is a folder")
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "folder not writable")
    except OSError as err:
        raise RunnerError(f"cannot write {path}: {err.strerror or err}") from None


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


#: Memory a local Dask worker of these experiments takes at its peak (a tightness task's draws through LeNet, the
#: context, the interpreter and torch), measured at about 820 MB: ``--workers`` is capped by the machine's memory.
WORKER_MEMORY_BYTES = 820 * 2**20
#: The longest ``connect_timeout`` accepted (one day): a wait longer than that is a mistake, not a plan.
MAX_CONNECT_TIMEOUT = 86_400.0


def _memory_bytes() -> int | None:
    """Physical memory, or the cgroup's limit where that is lower (a container, a Slurm job); ``None`` if unknown."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            sizes.append(int(text))
    sizes = [s for s in sizes if s > 0]
    return min(sizes) if sizes else None


def max_workers() -> int:
    """The most local Dask workers this machine's memory holds (:data:`WORKER_MEMORY_BYTES` each; at least 1)."""
    memory = _memory_bytes()
    return 2**31 if memory is None else max(1, memory // WORKER_MEMORY_BYTES)


def _too_many_workers(workers: int) -> str | None:
    cap = max_workers()
    if workers <= cap:
        return None
    memory = _memory_bytes() or 0
    return (f"{workers} workers need about {workers * WORKER_MEMORY_BYTES / 2**30:.1f} GiB "
            f"({WORKER_MEMORY_BYTES // 2**20} MB each) but this machine has {memory / 2**30:.1f} GiB: "
            f"use at most {cap}")


def _check_timeout(connect_timeout) -> float:
    if (isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float))
            or not math.isfinite(connect_timeout) or not 0 < connect_timeout <= MAX_CONNECT_TIMEOUT):
        raise ValueError(f"connect_timeout must be a number of seconds > 0 and <= {MAX_CONNECT_TIMEOUT:g}, "
                         f"got {connect_timeout!r}")
    return float(connect_timeout)


def _with_deadline(fn, seconds: float, what: str):
    """``fn()`` on a daemon thread, or ``TimeoutError`` if it has not returned after ``seconds`` (wall clock).

    For calls that can block forever (a Dask client waiting for a handshake that never comes). A result that
    arrives after the deadline is closed (if it has ``close``), so an abandoned client does not linger.
    """
    box: dict = {}
    abandoned = threading.Event()

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller
            box["error"] = err
        if abandoned.is_set() and hasattr(box.get("value"), "close"):
            with contextlib.suppress(Exception):
                box["value"].close()

    thread = threading.Thread(target=target, name=f"netmoments: {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        abandoned.set()
        raise TimeoutError(f"{what} did not finish within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _split_address(address: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``[scheme://]host:port`` (the scheme defaults to ``tcp``); ``ValueError`` else."""
    scheme, _, rest = str(address).rpartition("://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a scheduler address looks like tcp://HOST:PORT (port 1-65535), got {address!r}")
    return (scheme or "tcp").lower(), host.strip("[]"), int(port)


def _recv_exactly(sock, count: int, deadline: float) -> bytes:
    data = b""
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            part = sock.recv(count - len(data))
        except TimeoutError:
            break
        if not part:
            break
        data += part
    return data


def _probe_scheduler(address: str, timeout: float) -> None:
    """Fail (:class:`RunnerError`) unless what listens at the ``tcp://`` ``address`` greets like a Dask scheduler
    within ``timeout`` seconds of wall clock.

    A Dask scheduler sends its handshake first, unasked: an 8-byte little-endian length, then that many bytes. A
    listener that accepts and never answers (or an HTTP server, which waits for a request) would make the Dask
    client wait forever, and one that answers something else makes it allocate whatever length its first bytes
    spell (exbibytes, for ``HTTP/1.1``). A refused connection is retried until the deadline (a scheduler that is
    starting up).
    """
    import socket
    import struct

    _, host, port = _split_address(address)
    deadline = time.monotonic() + timeout
    hint = "is it running, and is the address tcp://HOST:PORT?"
    delay = 0.05
    while True:
        left = deadline - time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=max(left, 0.001))
            break
        except ConnectionRefusedError as err:
            if left <= delay:
                raise RunnerError(f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
                                  f"(ConnectionRefusedError: {err}); {hint}") from None
            time.sleep(delay)
            delay = min(2 * delay, 1.0)
        except (OSError, UnicodeError) as err:  # timeouts, unknown hosts, unreachable networks
            raise RunnerError(f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
                              f"({type(err).__name__}: {err}); {hint}") from None
    with sock:
        head = _recv_exactly(sock, 8, deadline)
        if not head:
            silent = time.monotonic() < deadline
            raise RunnerError(
                f"cannot reach the Dask scheduler at {address!r}: something there accepted the connection but "
                + ("closed it without a word" if silent else f"sent nothing within {timeout:g} s")
                + f" (a Dask scheduler greets at once); {hint}"
            )
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 0 < size <= 2**20:
            raise RunnerError(f"cannot use {address!r}: what answers there is not a Dask scheduler "
                              f"(it began with {head[:8]!r}); {hint}")
        if len(_recv_exactly(sock, size, deadline)) < size:
            raise RunnerError(f"cannot reach the Dask scheduler at {address!r}: its greeting did not arrive in full "
                              f"within {timeout:g} s; {hint}")


@contextlib.contextmanager
def _dask_client(workers: int, scheduler: str | None, connect_timeout: float):
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - dask is in requirements.txt
        raise RunnerError("--workers / --scheduler need Dask: pip install 'dask[distributed]'") from err
    import logging

    if scheduler is not None:
        connect_timeout = _check_timeout(connect_timeout)
        if _split_address(scheduler)[0] == "tcp":
            _probe_scheduler(scheduler, connect_timeout)
        try:
            # Dask's own timeout does not cover the whole handshake: a wall-clock deadline around it
            client = _with_deadline(lambda: distributed.Client(scheduler, timeout=connect_timeout),
                                    connect_timeout + 5.0, "connecting to the Dask scheduler")
        except Exception as err:  # noqa: BLE001 - whatever went wrong, the run cannot start
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
    if workers and scheduler is None and _too_many_workers(workers):
        raise ValueError(_too_many_workers(workers))
    if scheduler is not None:
        _split_address(scheduler)
        _check_timeout(connect_timeout)
    with output_lock(out):
        return _run_locked(tasks, ids, fn, out, fmt, start_wall, context=context, resume=resume, workers=workers,
                           scheduler=scheduler, threads=threads, retries=retries, connect_timeout=connect_timeout,
                           progress=progress, desc=desc, checkpoint=checkpoint, checkpoint_s=checkpoint_s, stop=stop)


def _run_locked(tasks, ids, fn, out: Path, fmt: str, start_wall: float, *, context, resume, workers, scheduler,
                threads, retries, connect_timeout, progress, desc, checkpoint, checkpoint_s, stop) -> RunSummary:
    """:func:`run_tasks` once the output is locked."""
    fields = None
    done: set[str] = set()
    if out.exists():
        if not resume:
            raise RunnerError(f"{out} exists; pass resume=True (--resume) to continue it, or choose another --out")
        check_writable(out)
        scan = scan_file(out)
        _refuse_damage(out, scan, "resuming")
        rows = scan.rows
        if scan.header is not None:
            fields = scan.header
        elif rows:
            fields = list(rows[0])
        if scan.torn_tail:  # rewrite without the torn line / incomplete task, before appending anything
            _atomic_write(out, (_header_bytes(fields, fmt) if fields else b"") + (_encode(rows, fields, fmt) if rows else b""))
        done = {r["task"] for r in rows}
        unknown = done - set(ids)
        if unknown:
            raise RunnerError(
                f"{out} holds {len(unknown)} task(s) that are not in this run's task list (e.g. {sorted(unknown)[0]}): "
                "it was written by a run with other settings"
            )
    else:
        check_writable(out)
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
        # Put the file in task-list order so it does not depend on the completion order; but first check that
        # every task is there, once (the count of tasks run says nothing about what is in the file).
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


def _seed(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in 0 .. 2^32 - 1, got {value}")
    return value


def _scheduler_address(text: str) -> str:
    try:
        scheme, _, _ = _split_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an address like tcp://HOST:PORT, got {text!r}") from None
    if scheme not in ("tcp", "tls"):
        raise argparse.ArgumentTypeError(f"expected a tcp:// (or tls://) address, got {text!r}")
    return text


def _worker_count(text: str) -> int:
    value = _non_negative_int(text)
    problem = _too_many_workers(value) if value else None
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _timeout(text: str) -> float:
    try:
        return _check_timeout(float(text))
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
    group.add_argument("--threads", type=_positive_int, default=1, help="torch threads per task")
    group.add_argument("--retries", type=_non_negative_int, default=2, help="re-runs of a task whose worker died")
    group.add_argument("--connect-timeout", type=_timeout, default=5.0,
                       help="seconds to wait for --scheduler (a wall-clock deadline)")
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
