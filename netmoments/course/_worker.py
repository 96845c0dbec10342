"""The process that runs a student's notebook code for the grader (see :mod:`netmoments.course.judge`).

It runs inside the sandbox, with nothing of the grader's: ``python -m netmoments.course._worker IN_FD OUT_FD``.
It executes the cells the grader sends, in one IPython shell (so magics work as in a kernel), and calls the
student's functions with the arguments the grader sends, answering through :func:`netmoments.course.wire.encode`.
Everything here may be tampered with by the student's code; the grader trusts none of it (it only reads the
answers, as data).
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
import warnings


class _Timeout(BaseException):
    """Raised by the alarm inside student code that ran past its time (BaseException: ``except Exception`` in the
    student's code does not swallow it)."""


def _on_alarm(signum, frame):
    raise _Timeout()


def _describe(exc: BaseException) -> dict:
    return {"ok": False, "timeout": isinstance(exc, _Timeout), "ename": type(exc).__name__,
            "evalue": str(exc)[:2000]}


def main(in_fd: int, out_fd: int, memory_limit: int = 0) -> None:
    import resource

    if memory_limit > 0:
        # Before anything else: a memory bomb then fails in this process instead of waking the OOM killer, and
        # without CAP_SYS_RESOURCE (dropped in the sandbox) the student cannot raise the hard limit again.
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    os.environ.setdefault("MPLBACKEND", "Agg")

    from IPython.core.interactiveshell import InteractiveShell

    from . import wire

    shell = InteractiveShell.instance()
    # A plain shell has no event loop to hand to a GUI; %matplotlib inline only needs this step to do nothing.
    shell.enable_gui = lambda gui=None: None
    shell.user_ns["__name__"] = "__main__"

    # Start-up errors went to stderr (the judge shows them); the student's prints must not reach the grader's
    # pipes: from here on they go nowhere.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGALRM, _on_alarm)

    def answer(message: dict) -> None:
        try:
            payload = wire.encode(message)
        except Exception as exc:  # Unsupported, or a tensor that cannot become bytes (sparse, meta, ...)
            what = str(exc) if isinstance(exc, wire.Unsupported) else f"a value that cannot be sent ({exc})"[:300]
            payload = wire.encode({"ok": False, "timeout": False, "ename": "UnsupportedAnswer",
                                   "evalue": f"returned {what}, which the grader cannot read back: return tensors, "
                                             "numbers, or tuples/lists of them"})
        wire.write_frame(out_fd, payload)

    answer({"ok": True, "ready": True})  # the libraries are loaded; the student's time starts with the first cell
    while True:
        try:
            request = pickle.loads(wire.read_frame(in_fd))
        except EOFError:
            return
        op = request.get("op")
        if op == "bye":
            return
        timeout = float(request.get("timeout") or 0)
        if op == "run":
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                result = shell.run_cell(request["source"], store_history=False)
            except BaseException as exc:  # a _Timeout that struck outside the cell's own try
                signal.setitimer(signal.ITIMER_REAL, 0)
                answer(_describe(exc))
                continue
            signal.setitimer(signal.ITIMER_REAL, 0)
            error = result.error_before_exec or result.error_in_exec
            answer(_describe(error) if error is not None else {"ok": True})
        elif op == "names":
            answer({"ok": True, "value": [n for n in request["names"] if callable(shell.user_ns.get(n))]})
        elif op == "call":
            fn = shell.user_ns.get(request["name"])
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = fn(*request["args"], **request["kwargs"])
                signal.setitimer(signal.ITIMER_REAL, 0)
                answer({"ok": True, "value": value})
            except BaseException as exc:
                signal.setitimer(signal.ITIMER_REAL, 0)
                answer(_describe(exc))
        else:
            answer({"ok": False, "timeout": False, "ename": "ProtocolError", "evalue": f"unknown op {op!r}"})


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
