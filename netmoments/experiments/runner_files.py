"""The files a run writes: its output of whole tasks (CSV or JSON lines, optionally gzipped) and its metadata.

A run appends each task's rows in one ``write`` (one gzip member when gzipped), every row carrying the two
bookkeeping columns ``task`` and ``task_rows``; :func:`scan_file` reads such a file back and tells its complete
tasks from a torn tail (what a killed write leaves, harmless) and from damage (anything else, refused by resume).
Whole files are replaced atomically (:func:`atomic_write`: a temporary file, fsync, rename). The rules these files
keep are in :mod:`netmoments.experiments.runner`'s docstring.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TASK_COLUMNS",
    "FORMATS",
    "RunnerError",
    "OutputInUse",
    "RunnerWarning",
    "FileScan",
    "format_of",
    "is_gzipped",
    "scan_file",
    "read_rows",
    "completed_tasks",
    "refuse_damage",
    "encode_rows",
    "header_bytes",
    "rewrite_rows",
    "atomic_write",
    "write_json",
    "TaskAppender",
]

#: The columns every result row carries to name its task.
TASK_COLUMNS = ("task", "task_rows")
#: The result file formats the runner writes, by file suffix.
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


class RunnerError(RuntimeError):
    """A run could not start or complete (bad output file, unreachable scheduler, a failing task)."""


class OutputInUse(RunnerError):
    """Another run holds the output's lock (:func:`netmoments.experiments.runner_locks.output_lock`)."""


class RunnerWarning(UserWarning):
    """A runner output file was read, but it is damaged (:func:`scan_file`)."""


def format_of(path: Path) -> str:
    """``"csv"`` or ``"jsonl"``, from ``path``'s suffix (before a ``.gz``); :class:`RunnerError` for any other."""
    suffix = path.suffixes[-2].lower() if is_gzipped(path) and len(path.suffixes) >= 2 else path.suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise RunnerError(f"out must end in .csv or .jsonl (optionally followed by .gz), got {str(path)!r}")
    return fmt


def is_gzipped(path: Path) -> bool:
    """Whether ``path`` is written gzipped (it ends in ``.gz``)."""
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
    fmt, gzipped = format_of(path), is_gzipped(path)
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


def refuse_damage(path: Path, scan: FileScan, action: str) -> None:
    """Raise :class:`RunnerError` if ``scan`` found damage in ``path``: ``action`` (e.g. ``"resuming"``) would
    rewrite the file without what cannot be read."""
    if scan.damage:
        raise RunnerError(
            f"{path} is damaged: {scan.damage}. It was left as it is: {action} would rewrite it without what "
            f"cannot be read. --report (read_rows) still reads every complete task; copy them to a new file to go on"
        )


def encode_rows(rows: list[dict], fields: list[str], fmt: str) -> bytes:
    """``rows`` as the lines of a ``fmt`` file (``fields`` in that order; no CSV header), uncompressed."""
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


def header_bytes(fields: list[str], fmt: str) -> bytes:
    """The header line of a ``fmt`` file with columns ``fields`` (JSON lines have none: ``b""``)."""
    if fmt != "csv":
        return b""
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue().encode()


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` (gzipped if ``path`` ends in ``.gz``) whole or not at all: a temporary file
    beside it, fsync, rename."""
    if is_gzipped(path) and data:
        data = gzip.compress(data, mtime=0)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def rewrite_rows(path: Path, fields: list[str] | None, rows: list[dict]) -> None:
    """Replace the output ``path`` by its header and ``rows`` (columns ``fields``), atomically; with no fields,
    by an empty file."""
    fmt = format_of(path)
    header = header_bytes(fields, fmt) if fields else b""
    atomic_write(path, header + (encode_rows(rows, fields, fmt) if rows else b""))


def write_json(path, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (a temporary file, fsync, rename): a reader or a
    killed run never sees half a metadata file."""
    atomic_write(Path(path), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


class TaskAppender:
    """Appends whole tasks to the output file (one ``write`` + ``fsync`` per task)."""

    def __init__(self, path: Path, fmt: str, fields: list[str] | None):
        self.path, self.fmt, self.fields = path, fmt, fields

    def append(self, key_id: str, rows: list[dict]) -> None:
        stamped = [{**row, "task": key_id, "task_rows": len(rows)} for row in rows]
        if self.fields is None:  # first task of a new file: its rows fix the columns
            self.fields = list(TASK_COLUMNS) + [k for k in stamped[0] if k not in TASK_COLUMNS]
            atomic_write(self.path, header_bytes(self.fields, self.fmt))
        for row in stamped:
            if set(row) != set(self.fields):
                extra, missing = set(row) - set(self.fields), set(self.fields) - set(row)
                raise RunnerError(
                    f"task {key_id} returned a row whose columns differ from the file's "
                    f"(extra {sorted(extra)}, missing {sorted(missing)})"
                )
        data = encode_rows(stamped, self.fields, self.fmt)
        if is_gzipped(self.path):
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
