"""One run per output: an exclusive lock on the files a run writes, and the checks made before writing them.

The lock is ``fcntl.flock`` on a hidden ``.NAME.lock`` beside each file (holding the pid, removed on release); the
kernel drops the lock of a process that dies, even by SIGKILL, so a killed run never leaves its output locked.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from .runner_files import OutputInUse, RunnerError

__all__ = ["output_lock", "output_in_use", "check_writable"]

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
    call :func:`netmoments.experiments.runner.run_tasks`, which locks the output again.
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
