"""Grade one submitted notebook with the student's code and the hidden tests in two different processes.

nbgrader runs a submission and its hidden tests in one kernel, so the student's code can rewrite the tests'
helpers (``Check``, ``torch.isclose``, the reference functions), print fake output, or write to the course
directory, and the score it reports is whatever the kernel says. Here the student's code never shares a process
with the tests:

* the **worker** (:mod:`netmoments.course._worker`) runs every code cell of the submission except the graded test
  cells, inside a bubblewrap sandbox (read-only system and package, no network, a private ``/tmp``, its own PID
  namespace; the course's source notebooks, the submissions and the grader's files are not visible);
* the **judge** (this module) runs the *source* notebook's set-up cells and graded test cells itself. The test
  cells see each of the student's functions as a proxy: a call pickles the arguments to the worker and reads the
  result back as plain data (:mod:`netmoments.course.wire`, never a pickle). A cell scores its points when it
  runs to the end, i.e. when every check in it passed; the points come from the source notebook.

So what the student controls is what their functions return for the tests' inputs, nothing else.

Two more rules, both applied in the worker while a graded cell calls the student's functions:

* **one mistake costs one question**: the functions of earlier questions that the cell does not test itself are
  replaced by the source's reference versions (:func:`_plan`), so a later function that calls a wrong earlier
  one is graded on its own work;
* **forbidden calls** (:data:`FORBIDDEN`, e.g. ``netmoments.relu_moments`` in A1) are recorded and fail the call.
  The recording runs in the student's process, so it is a deterrent, not a guarantee.

Command line (used by :func:`netmoments.course.grading.grade_submissions`, one process per notebook)::

    python -m netmoments.course.judge ASSIGNMENT NOTEBOOK OUT_JSON [--cell-timeout S] [--sandbox auto|bwrap|none]
"""
from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import pickle
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from . import assignments

MEMORY_LIMIT = 8 << 30  # bytes of address space for the student's process (the five reference solutions run under it)
STARTUP_TIMEOUT = 300.0  # seconds the worker may take to import its libraries (a loaded machine is slow)
GRACE = 5.0  # seconds the judge waits past a time limit for the worker's own alarm before it kills the worker
SANDBOXES = ("auto", "bwrap", "none")
# What the worker may see of /etc: enough for the dynamic loader and Python, nothing of the machine's secrets.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "nsswitch.conf")
# Variables that change numerics or thread counts pass into the sandbox; nothing else of the grader's environment.
# Package functions a question's own functions must not call (the question re-derives them), per assignment. The
# worker records such a call (a deterrent, not a guarantee: the student's code can undo the recording).
FORBIDDEN = {
    "a1_relu_of_a_gaussian": {"relu_mean_var": ("relu_moments",), "relu_mean_z_score": ("relu_moments",)},
}
_ENV_KEEP = ("LANG", "LC_ALL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "MKL_CBWR",
             "TORCH_NUM_THREADS")


class CellTimeout(BaseException):
    """The student's code ran past the graded cell's time limit (BaseException: ``Check.call`` must not catch it)."""


class ForbiddenCall(Exception):
    """The student's function called a package function the assignment forbids (reported as a failed case)."""


class WorkerGone(BaseException):
    """The student's process died, was killed, or broke the protocol."""


# -- the sandbox ---------------------------------------------------------------------------------------------------
def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def _readable_dirs() -> list[str]:
    """Directories the worker needs read-only: the interpreter, its standard library and site-packages, netmoments."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).resolve().parent), str(_package_dir())}
    paths.update(site.getsitepackages())
    paths.update(v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib"))
    existing = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)} | {
        p for p in paths if p and os.path.isdir(p)})
    return [p for p in existing if p not in ("/", "/usr", "/etc")]


def bwrap_command(workdir: str = "/tmp") -> list[str]:
    """The ``bwrap`` prefix that runs a command in the worker's sandbox (see the module docstring)."""
    exe = shutil.which("bwrap")
    if exe is None:
        raise FileNotFoundError("bwrap (bubblewrap) is not installed: apt-get install bubblewrap")
    cmd = [exe, "--die-with-parent", "--new-session", "--unshare-all", "--clearenv",
           "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if os.geteuid() == 0:  # root keeps its capabilities in the sandbox unless they are dropped
        cmd += ["--cap-drop", "ALL"]
    for name in ("bin", "lib", "lib32", "lib64", "sbin", "libx32"):
        top = Path("/") / name
        if top.is_symlink():
            cmd += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            cmd += ["--ro-bind", str(top), str(top)]
    for name in _ETC:
        cmd += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for path in _readable_dirs():
        cmd += ["--ro-bind", path, path]
    # The source notebooks hold the solutions and the hidden tests: an empty directory in their place. A private
    # copy (NETMOMENTS_COURSE_SOURCE) is hidden the same way when it lies inside a folder the sandbox shows;
    # elsewhere the sandbox does not show it at all.
    cmd += ["--tmpfs", str(assignments.PACKAGE_SOURCE_DIR)]
    private = assignments.SOURCE_DIR
    if private != assignments.PACKAGE_SOURCE_DIR and private.is_dir() and any(
            private.is_relative_to(Path(p)) for p in _readable_dirs()):
        cmd += ["--tmpfs", str(private)]
    cmd += ["--chdir", workdir]
    return cmd


@functools.lru_cache(maxsize=None)
def bwrap_works() -> bool:
    """Whether the sandbox starts on this machine (bubblewrap installed, user namespaces allowed)."""
    try:
        done = subprocess.run([*bwrap_command(), sys.executable, "-c", "import netmoments.course.wire"],
                              capture_output=True, timeout=120,
                              env={"PYTHONPATH": str(_package_dir().parent)})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def resolve_sandbox(sandbox: str) -> str:
    """``"bwrap"`` or ``"none"``: ``"auto"`` picks bwrap when it works; ``"bwrap"`` fails loudly when it does not."""
    if sandbox not in SANDBOXES:
        raise ValueError(f"sandbox must be one of {SANDBOXES}, got {sandbox!r}")
    if sandbox == "none":
        return "none"
    if bwrap_works():
        return "bwrap"
    if sandbox == "bwrap":
        raise RuntimeError("sandbox='bwrap' but bubblewrap does not start here (install it: apt-get install "
                           "bubblewrap; it needs unprivileged user namespaces or root)")
    return "none"


# -- the worker, seen from the judge -----------------------------------------------------------------------------
class Worker:
    """The student's process: ``run`` cells, list ``names``, ``call`` functions. Every answer is decoded as data."""

    def __init__(self, sandbox: str, scratch: Path):
        from . import wire

        self.wire = wire
        self.dead = ""  # why the worker is gone, once it is
        self.deadline: float | None = None  # the running graded cell's time limit (monotonic clock)
        self.swap: tuple[str, ...] = ()  # earlier questions' functions replaced by their references during calls
        self.forbidden: dict[str, tuple[str, ...]] = {}  # function -> netmoments functions it must not call
        req_r, self._req_w = os.pipe()
        self._ans_r, ans_w = os.pipe()
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": str(_package_dir().parent)}
        env.update({k: os.environ[k] for k in _ENV_KEEP if k in os.environ})
        if sandbox == "bwrap":
            prefix = bwrap_command()
            for key, value in env.items():
                prefix += ["--setenv", key, value]
            cwd = None
        else:
            prefix, cwd = [], str(scratch)
            env["HOME"] = str(scratch)
        # bwrap's --die-with-parent does this for the sandbox; a plain worker must die with the judge as well,
        # or a judge killed at its notebook's time limit would leave the student's code running.
        preexec = _die_with_parent if sandbox != "bwrap" and sys.platform.startswith("linux") else None
        self._stderr = open(scratch / "worker.stderr", "w+b")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "netmoments.course._worker", str(req_r), str(ans_w), str(MEMORY_LIMIT)],
            pass_fds=(req_r, ans_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            cwd=cwd, env=env, start_new_session=True, preexec_fn=preexec)
        os.close(req_r)
        os.close(ans_w)

    def _request(self, message: dict, timeout: float) -> dict:
        if self.dead:
            raise WorkerGone(self.dead)
        wire = self.wire
        deadline = time.monotonic() + timeout + GRACE
        try:
            wire.write_frame(self._req_w, pickle.dumps(message))
            answer = wire.decode(wire.read_frame(self._ans_r, deadline))
        except TimeoutError:
            self.kill(f"it ran longer than {timeout:g} s and was stopped")
            raise CellTimeout(self.dead) from None
        except (EOFError, BrokenPipeError, OSError, wire.WireError) as exc:
            self.kill(None if isinstance(exc, (EOFError, BrokenPipeError)) else f"it broke the protocol ({exc})")
            raise WorkerGone(self.dead) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            self.kill("it sent an answer that is not a status")
            raise WorkerGone(self.dead)
        return answer

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait for the worker's first frame, sent once it has imported its libraries and before any student code.

        Start-up is not the student's time: it is not charged to the first cell's limit. A worker that does not
        start is the grader's problem, so this raises ``RuntimeError`` (the judge then fails, blaming itself).
        """
        try:
            answer = self.wire.decode(self.wire.read_frame(self._ans_r, time.monotonic() + timeout))
        except (TimeoutError, EOFError, OSError, self.wire.WireError) as exc:
            self.kill(f"it did not start ({type(exc).__name__})")
            raise RuntimeError(f"the worker did not start: {exc}; its stderr: {self.stderr_tail()}") from None
        if answer != {"ok": True, "ready": True}:
            self.kill("it did not start")
            raise RuntimeError(f"the worker did not start: it sent {answer!r}")

    def kill(self, why: str | None) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        rc = self.proc.wait()
        if not self.dead:
            self.dead = why or f"the notebook's process (its kernel) died (exit code {rc})"

    def run(self, source: str, timeout: float) -> dict:
        return self._request({"op": "run", "source": source, "timeout": timeout}, timeout)

    def names(self, wanted: list[str]) -> list[str]:
        answer = self._request({"op": "names", "names": wanted}, 30.0)
        value = answer.get("value")
        if not isinstance(value, list):
            return []
        return [n for n in value if n in wanted]

    def reference(self, source: str, names: list[str]) -> None:
        """Define the reference versions of ``names`` in the worker (see :func:`_plan`)."""
        answer = self._request({"op": "reference", "source": source, "names": names}, 60.0)
        if not answer["ok"]:  # the student's code may have broken the worker's libraries: then it keeps its own
            raise WorkerGone(f"the reference functions could not be set up ({answer.get('ename')}: "
                             f"{answer.get('evalue', '')})"[:300])

    def call(self, name: str, args: tuple, kwargs: dict):
        timeout = 1.0 if self.deadline is None else max(0.1, self.deadline - time.monotonic())
        answer = self._request({"op": "call", "name": name, "args": args, "kwargs": kwargs, "timeout": timeout,
                                "swap": list(self.swap), "forbid": list(self.forbidden.get(name, ()))}, timeout)
        if answer["ok"]:
            called = answer.get("forbidden")
            if called:
                names = ", ".join(str(c) for c in called)[:200] if isinstance(called, list) else "it"
                raise ForbiddenCall(f"it calls {names}, which this assignment asks you to re-derive, not call")
            return answer.get("value")
        if answer.get("timeout") is True:
            raise CellTimeout(f"{name} ran longer than the cell's time limit")
        raise _student_error(str(answer.get("ename", "Exception")), str(answer.get("evalue", "")))

    def close(self) -> None:
        if self.proc.poll() is None and not self.dead:
            try:
                self.wire.write_frame(self._req_w, pickle.dumps({"op": "bye"}))
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill("closed")
        for fd in (self._req_w, self._ans_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()

    def stderr_tail(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()[-1500:].decode(errors="replace")


def _die_with_parent() -> None:
    """In the child, before exec: have the kernel SIGKILL this process when the judge dies (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@functools.lru_cache(maxsize=None)
def _error_class(ename: str) -> type:
    # The student's exception, rebuilt by name only, so that feedback reads "raised ValueError: ...".
    return type(ename[:80] or "Exception", (Exception,), {})


def _student_error(ename: str, evalue: str) -> Exception:
    if ename in ("NotImplementedError", "NotDone"):  # NotDone: the released blank (checks.NotDone)
        return NotImplementedError(evalue)
    return _error_class(ename)(evalue)


class StudentFunction:
    """A student's function as the test cells see it: calling it runs it in the worker."""

    def __init__(self, worker: Worker, name: str):
        self._worker, self.__name__ = worker, name

    def __call__(self, *args, **kwargs):
        return self._worker.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<student function {self.__name__}>"


# -- notebooks -----------------------------------------------------------------------------------------------------
def _meta(cell) -> dict:
    metadata = cell.get("metadata")
    meta = metadata.get("nbgrader") if isinstance(metadata, dict) else None
    return meta if isinstance(meta, dict) else {}


def _without_magics(source: str) -> str:
    # The judge runs the source's set-up cells as plain Python: magics (%matplotlib inline) only matter to a kernel.
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _student_names(source_nb) -> list[str]:
    """The functions the test cells may ask the worker for: those the solution cells define, and every name a
    test cell passes to ``check.call`` / ``check.function``."""
    names: list[str] = []
    for cell in source_nb.cells:
        meta = _meta(cell)
        if cell.cell_type != "code" or not (meta.get("solution") or meta.get("grade")):
            continue
        tree = ast.parse(_without_magics(cell.source))
        if meta.get("solution"):
            names += [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("call", "function") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names.append(node.args[0].value)
    return list(dict.fromkeys(names))


def _plan(source_nb) -> dict[str, tuple[list[str], str]]:
    """For each graded cell: the functions of *earlier* questions that its tests must see as the reference
    wrote them, and the code that defines those references.

    A later question's function usually calls an earlier one (``relu_mean_z_score`` calls ``relu_mean_var``).
    Graded with the student's own earlier function, one mistake would cost both questions; so while a graded
    cell runs, every function defined in a solution cell above it that the cell does not test itself is the
    reference's. The code is the set-up cells' imports and definitions (not their data loading) and those
    solution cells, run in a namespace of its own.
    """
    setup: list[str] = []
    solutions: list[tuple[list[str], str]] = []
    plan: dict[str, tuple[list[str], str]] = {}
    for cell in source_nb.cells:
        meta = _meta(cell)
        if cell.cell_type != "code":
            continue
        text = _without_magics(cell.source)
        if meta.get("solution"):
            tree = ast.parse(text)
            solutions.append(([n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], text))
        elif meta.get("grade"):
            tested = set(_student_names_in(text))
            earlier = [n for names, _ in solutions for n in names if n not in tested]
            code = "\n".join(setup + [t for names, t in solutions if any(n in earlier for n in names)])
            plan[meta["grade_id"]] = (earlier, code if earlier else "")
        elif "raises-exception" not in cell.metadata.get("tags", []):
            tree = ast.parse(text)
            setup += [ast.unparse(n) for n in tree.body
                      if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef))]
    return plan


def _student_names_in(text: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("call", "function") and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.append(node.args[0].value)
    return names


def _feedback(exc: BaseException, cell_timeout: float) -> str:
    if isinstance(exc, CellTimeout):
        return (f"Time limit: this cell (or code it calls) ran longer than {cell_timeout:g} s and was stopped. "
                "Look for an endless loop or an unnecessarily large computation.")
    if isinstance(exc, WorkerGone):
        return f"Your notebook's process stopped while this cell ran: {exc}"
    if isinstance(exc, AssertionError):
        return str(exc)
    if isinstance(exc, NameError):
        return f"NameError: {exc}. Did you delete or rename something the tests use, or skip a cell?"
    return f"{type(exc).__name__}: {exc}"


def grade(assignment: str, notebook: Path, cell_timeout: float = assignments.DEFAULT_CELL_TIMEOUT,
          sandbox: str = "auto") -> assignments.Report:
    """Grade ``notebook`` (a submission of ``assignment``) in this process and one worker; see the module docstring.

    Args:
        assignment: one of :data:`netmoments.course.assignments.ASSIGNMENTS`.
        notebook: path to the submitted ``.ipynb``.
        cell_timeout: seconds one student cell, or the student code one graded cell calls, may run.
        sandbox: ``"bwrap"``, ``"none"`` or ``"auto"`` (bwrap when it works here).
    """
    import nbformat

    if assignment not in assignments.ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {assignments.ASSIGNMENTS}, got {assignment!r}")
    if not cell_timeout > 0:
        raise ValueError(f"cell_timeout must be a positive number of seconds, got {cell_timeout!r}")
    used = resolve_sandbox(sandbox)
    expected = assignments.grade_cells(assignment)
    try:
        submission = nbformat.read(str(notebook), as_version=4)
    except Exception as exc:  # nbformat raises several types for a broken file
        return assignments.Report(assignment, 0.0, sum(p for _, p in expected),
                                  [assignments.QuestionResult(g, 0.0, p, "the notebook could not be read")
                                   for g, p in expected], f"could not read {notebook}: {exc}"[:500], used)
    source = nbformat.read(str(assignments.source_notebook(assignment)), as_version=4)

    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="netmoments-judge-") as scratch:
        worker = Worker(used, Path(scratch))
        worker.forbidden = dict(FORBIDDEN.get(assignment, {}))
        try:
            # The trusted set-up first: it loads the same libraries, models and data as the worker is loading.
            namespace: dict = {"__name__": "__main__"}
            _run_setup(source, namespace)
            worker.wait_ready()
            cells = submission.get("cells")
            for index, cell in enumerate(cells if isinstance(cells, list) else []):
                if not isinstance(cell, dict) or cell.get("cell_type") != "code" or _meta(cell).get("grade"):
                    continue  # the student's copies of the graded cells are never run: the source's are
                try:
                    answer = worker.run(str(cell.get("source", "")), cell_timeout)
                except CellTimeout:
                    notes.append(f"code cell {index} ran longer than {cell_timeout:g} s and was stopped")
                    break
                except WorkerGone:
                    notes.append(f"code cell {index}: {worker.dead}")
                    break
                if not answer["ok"]:
                    if answer.get("timeout") is True:
                        notes.append(f"code cell {index} ran longer than {cell_timeout:g} s and was stopped")
                    else:
                        notes.append(f"code cell {index} raised {answer.get('ename')}: {answer.get('evalue', '')}"[:300])
            if not worker.dead:
                try:
                    for name in worker.names(_student_names(source)):
                        namespace[name] = StudentFunction(worker, name)
                except (CellTimeout, WorkerGone):  # e.g. a thread the student left behind hogs the process
                    notes.append(f"after the last code cell: {worker.dead}")
            questions = _run_tests(source, namespace, worker, cell_timeout, notes)
        finally:
            worker.close()
    return assignments.Report(assignment, sum(q.score for q in questions), sum(q.max_score for q in questions),
                              questions, "; ".join(notes), used)


def _run_setup(source, namespace: dict) -> None:
    """Run the source's set-up cells (imports, models, data) in ``namespace``.

    The cells tagged ``raises-exception`` are skipped: they are examples and explorations that call the student's
    code, which the tests do not need. A failure here is the grader's bug, not the student's, so it propagates.
    """
    for index, cell in enumerate(source.cells):
        meta = _meta(cell)
        if (cell.cell_type != "code" or meta.get("solution") or meta.get("grade")
                or "raises-exception" in cell.metadata.get("tags", [])):
            continue
        exec(compile(_without_magics(cell.source), f"<source cell {index}>", "exec"), namespace)


def _run_tests(source, namespace: dict, worker: Worker, cell_timeout: float, notes: list[str]):
    """Run each graded cell of ``source`` in ``namespace``; one QuestionResult per graded cell, in order."""
    questions = []
    plan = _plan(source)
    sent: set[str] = set()
    for cell in source.cells:
        meta = _meta(cell)
        if cell.cell_type != "code" or not meta.get("grade"):
            continue
        text = _without_magics(cell.source)
        grade_id, points = meta["grade_id"], float(meta["points"])
        if worker.dead and not any(isinstance(v, StudentFunction) for v in namespace.values()):
            questions.append(assignments.QuestionResult(grade_id, 0.0, points, notes[-1] if notes else worker.dead))
            continue
        earlier, code = plan.get(grade_id, ([], ""))
        worker.swap = ()
        if earlier and not worker.dead:
            try:
                if not set(earlier) <= sent:
                    worker.reference(code, earlier)
                    sent.update(earlier)
                worker.swap = tuple(earlier)
            except (CellTimeout, WorkerGone) as exc:
                notes.append(f"before {grade_id}: {exc}")
        worker.deadline = time.monotonic() + cell_timeout
        try:
            exec(compile(text, f"<{grade_id}>", "exec"), namespace)
        except BaseException as exc:  # every way a test cell can fail costs its points, nothing more
            if type(exc) is KeyboardInterrupt:  # the grader's operator pressed Ctrl-C
                raise
            questions.append(assignments.QuestionResult(grade_id, 0.0, points, _feedback(exc, cell_timeout)))
        else:
            questions.append(assignments.QuestionResult(grade_id, points, points, ""))
        finally:
            worker.deadline = None
            worker.swap = ()
    return questions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netmoments.course.judge", description=__doc__.split("\n")[0])
    parser.add_argument("assignment", choices=assignments.ASSIGNMENTS)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("out", type=Path, help="where to write the report (JSON)")
    parser.add_argument("--cell-timeout", type=float, default=assignments.DEFAULT_CELL_TIMEOUT)
    parser.add_argument("--sandbox", choices=SANDBOXES, default="auto")
    args = parser.parse_args(argv)
    report = grade(args.assignment, args.notebook, args.cell_timeout, args.sandbox)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.to_json()))
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
