"""Where tasks run besides this process: a local Dask cluster, or an existing one reached at its address.

A local cluster gets at most :func:`max_workers` single-threaded worker processes (:data:`WORKER_MEMORY_BYTES`
each), started with :data:`MALLOC_ENVIRON` ("Memory reuse" in :mod:`netmoments.experiments.runner`'s docstring);
an existing scheduler is probed first (:func:`_probe_scheduler`), so a wrong address fails within about
``connect_timeout`` seconds instead of hanging. :func:`run_on_dask` runs the pending tasks there, running again a
task whose worker died or that the scheduler forgot, up to ``retries`` times. Dask is imported only when used.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from pathlib import Path

from .runner_files import RunnerError

__all__ = [
    "MALLOC_ENVIRON",
    "WORKER_MEMORY_BYTES",
    "MAX_CONNECT_TIMEOUT",
    "keep_freed_memory",
    "max_workers",
    "too_many_workers",
    "check_timeout",
    "split_address",
    "dask_client",
    "run_on_dask",
]

#: glibc malloc settings for a task process, as environment variables read at its start (one arena, no
#: ``mmap`` blocks, no trimming), so freed memory is reused instead of faulted in again ("Memory reuse" in
#: :mod:`netmoments.experiments.runner`).
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


def too_many_workers(workers: int) -> str | None:
    """Why ``workers`` local workers do not fit in this machine's memory, or ``None`` if they do."""
    cap = max_workers()
    if workers <= cap:
        return None
    memory = _memory_bytes() or 0
    return (f"{workers} workers need about {workers * WORKER_MEMORY_BYTES / 2**30:.1f} GiB "
            f"({WORKER_MEMORY_BYTES // 2**20} MB each) but this machine has {memory / 2**30:.1f} GiB: "
            f"use at most {cap}")


def check_timeout(connect_timeout) -> float:
    """``connect_timeout`` as a float, or ``ValueError`` unless it is a number of seconds in
    ``(0, MAX_CONNECT_TIMEOUT]``."""
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


def split_address(address: str) -> tuple[str, str, int]:
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

    _, host, port = split_address(address)
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
def dask_client(workers: int, scheduler: str | None, connect_timeout: float):
    """A Dask client for the duration of the block, closed afterwards: of the running scheduler at ``scheduler``
    (:class:`RunnerError` if none answers within ``connect_timeout`` seconds), or else of a new local cluster of
    ``workers`` processes, shut down afterwards."""
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - dask is in requirements.txt
        raise RunnerError("--workers / --scheduler need Dask: pip install 'dask[distributed]'") from err
    if scheduler is not None:
        client = _connect(distributed, scheduler, connect_timeout)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = _local_cluster(distributed, workers)
    try:
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _connect(distributed, scheduler: str, connect_timeout: float):
    """A client of the running scheduler at ``scheduler``, or :class:`RunnerError` within about
    ``connect_timeout`` seconds of wall clock."""
    connect_timeout = check_timeout(connect_timeout)
    if split_address(scheduler)[0] == "tcp":
        _probe_scheduler(scheduler, connect_timeout)
    try:
        # Dask's own timeout does not cover the whole handshake: a wall-clock deadline around it
        return _with_deadline(lambda: distributed.Client(scheduler, timeout=connect_timeout),
                              connect_timeout + 5.0, "connecting to the Dask scheduler")
    except Exception as err:  # noqa: BLE001 - whatever went wrong, the run cannot start
        raise RunnerError(
            f"cannot reach the Dask scheduler at {scheduler!r} within {connect_timeout:g} s "
            f"({type(err).__name__}: {err}); is it running, and is the address tcp://HOST:PORT?"
        ) from None


def _local_cluster(distributed, workers: int):
    """A new local cluster of ``workers`` single-threaded processes, whose workers start with
    :data:`MALLOC_ENVIRON` and one BLAS / OpenMP thread."""
    import logging

    import dask

    env = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    # Set before each worker process starts (glibc reads them then), overriding Dask's trim threshold. A nanny
    # reads them when it is created, from the environment first (where an earlier cluster may have left Dask's
    # defaults) and then from its config, so both hold ours while the cluster is made.
    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **env, **MALLOC_ENVIRON}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}), _environ(MALLOC_ENVIRON):
        return distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            env=env,
        )


def run_on_dask(pending, ids, call_task, fn, context, *, workers, scheduler, threads, retries, connect_timeout,
                record) -> None:
    """Run the ``pending`` ``[(index, key)]`` on Dask (:func:`dask_client`) and hand each finished task to
    ``record(index, rows, seconds)``, in completion order.

    Each task runs as ``call_task(fn, key, context, threads)`` on a worker (``context`` is sent to every worker
    once); ``ids`` are the task ids by index, for messages. A task whose worker died, or that the scheduler forgot,
    is run again up to ``retries`` times; after that, or when a task raises, :class:`RunnerError`.
    """
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    with dask_client(workers, scheduler, connect_timeout) as client:
        ctx = client.scatter(context, broadcast=True, hash=False) if context is not None else None
        attempts = {}

        def submit(i, key):
            attempts[i] = attempts.get(i, 0) + 1
            future = client.submit(
                call_task, fn, key, ctx, threads, pure=False, key=f"netmoments-task-{i}-{attempts[i]}"
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
