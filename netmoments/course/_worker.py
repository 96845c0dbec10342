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


_MISSING = object()


def _watch(names, calls: list, user_ns: dict) -> list:
    """Replace each ``netmoments`` function in ``names`` (e.g. ``"relu_moments"``) by a wrapper that records the
    call in ``calls`` and then does the real work: wherever the package exposes it, and wherever the student's
    namespace holds it under any name. Returns what to put back. A deterrent, not a guarantee: student code runs
    in this process and can undo it (the instructors' page says so)."""
    patched = []
    for name in names:
        import netmoments

        original = getattr(netmoments, name, None)
        if original is None:
            continue

        def recorder(*args, __original=original, __name=name, **kwargs):
            calls.append(f"netmoments.{__name}")
            return __original(*args, **kwargs)

        places = [m.__dict__ for key, m in list(sys.modules.items())
                  if (key == "netmoments" or key.startswith("netmoments.")) and m is not None]
        places.append(user_ns)
        for place in places:
            for key, value in list(place.items()):
                if value is original:
                    place[key] = recorder
                    patched.append((place, key, original, recorder))
    return patched


def _unwatch(patched: list) -> None:
    for place, key, original, recorder in patched:
        if place.get(key) is recorder:
            place[key] = original


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

    references: dict = {}
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
        elif op == "reference":
            # The reference versions of earlier questions' functions, sent by the judge once those questions are
            # graded: a later question's test calls the student's function with them in place of the student's
            # own, so one mistake costs one question. (The student's code can see them from here on: they are
            # public in the course's repository anyway, and the questions they answer are already graded.)
            try:
                namespace: dict = {"__name__": "__reference__"}
                exec(compile(request["source"], "<reference>", "exec"), namespace)
                references.update({n: namespace[n] for n in request["names"] if n in namespace})
                answer({"ok": True})
            except BaseException as exc:
                answer(_describe(exc))
        elif op == "call":
            fn = shell.user_ns.get(request["name"])
            swapped = {n: shell.user_ns.get(n, _MISSING) for n in request.get("swap", ()) if n in references}
            calls: list = []
            patched = _watch(request.get("forbid", ()), calls, shell.user_ns)
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                shell.user_ns.update({n: references[n] for n in swapped})
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = fn(*request["args"], **request["kwargs"])
                signal.setitimer(signal.ITIMER_REAL, 0)
                reply = {"ok": True, "value": value}
                if calls:
                    reply["forbidden"] = sorted(set(calls))
                answer(reply)
            except BaseException as exc:
                signal.setitimer(signal.ITIMER_REAL, 0)
                answer(_describe(exc))
            finally:
                _unwatch(patched)
                for n, old in swapped.items():
                    if old is _MISSING:
                        shell.user_ns.pop(n, None)
                    else:
                        shell.user_ns[n] = old
        else:
            answer({"ok": False, "timeout": False, "ename": "ProtocolError", "evalue": f"unknown op {op!r}"})


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
