"""Submissions that try to game the grader instead of answering, and what they get: nothing.

Each attack below got full marks (or, for the probes, read and wrote what it liked) when nbgrader ran the
submission and the hidden tests in one kernel. The grader now runs the student's code in its own sandboxed
process and the hidden tests in the judge (:mod:`netmoments.course.judge`), so an attack can only change
what the student's functions return. The wire format the judge reads those answers in is tested here too.
"""
from __future__ import annotations

import json
import re
import socket
import struct

import numpy as np
import pytest
import torch

from netmoments.course import wire

A1 = "a1_relu_of_a_gaussian"

# A student's relu_mean_var cell replaced by each attack; relu_mean_z_score is left as the reference wrote it.
RETURNS_NONE = "def relu_mean_var(mean, var):\n    pass\n"

REWRITES_THE_TESTS = '''
import torch
import netmoments.course.checks as _checks


class Check:  # shadows the Check the test cells construct
    def __init__(self, *args, **kwargs):
        pass

    def call(self, *args, **kwargs):
        return None

    def close(self, *args, **kwargs):
        return True

    def true(self, *args, **kwargs):
        return True

    def done(self):
        print("all checks passed.")


_checks.Check.done = lambda self: None
_checks.Check.close = lambda self, *args, **kwargs: True
_checks.Check.true = lambda self, *args, **kwargs: True
torch.isclose = lambda a, b, **kwargs: torch.ones(torch.broadcast_shapes(torch.as_tensor(a).shape,
                                                                         torch.as_tensor(b).shape), dtype=torch.bool)


def relu_mean_var(mean, var):
    mu, var = torch.broadcast_tensors(mean, var)
    return torch.zeros_like(mu), torch.zeros_like(mu)
'''

LYING_TENSOR = '''
import torch


class Anything(torch.Tensor):
    """A tensor that says it is close to every value."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.isclose:
            return torch.ones(torch.broadcast_shapes(args[0].shape, args[1].shape), dtype=torch.bool)
        return super().__torch_function__(func, types, args, kwargs or {})


def relu_mean_var(mean, var):
    mu, var = torch.broadcast_tensors(mean, var)
    return torch.zeros_like(mu).as_subclass(Anything), torch.zeros_like(mu).as_subclass(Anything)
'''

UNSTOPPABLE = '''
import time


def relu_mean_var(mean, var):
    while True:  # swallows the time limit's exception, so only killing the process stops it
        try:
            time.sleep(1000)
        except BaseException:
            pass
'''

PROBE = '''
import json
import os
import socket

READ = {read!r}
WRITE = {write!r}
PORT = {port!r}


def _probe():
    seen = {{}}
    for label, path in READ.items():
        try:
            with open(path, "rb") as fh:
                seen["read " + label] = len(fh.read(64)) > 0
        except OSError:
            seen["read " + label] = False
    for label, path in WRITE.items():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT))  # writes no bytes
            seen["write " + label] = True
        except OSError:
            seen["write " + label] = False
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
        seen["connect to the grader's machine"] = True
    except OSError:
        seen["connect to the grader's machine"] = False
    return seen


def relu_mean_var(mean, var):
    raise RuntimeError("PROBE " + json.dumps(_probe()) + " END")
'''


def _submission(path, relu_cell: str, keep_examples: bool = True):
    """The a1 reference notebook with its relu_mean_var cell replaced by ``relu_cell``, written to ``path``
    (without the ungraded cells that call the student's code unless ``keep_examples``)."""
    nbformat = pytest.importorskip("nbformat")
    from netmoments.course import grading

    nb = nbformat.read(grading.source_notebook(A1), as_version=4)
    if not keep_examples:
        nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")
                    or "raises-exception" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "relu_mean_var":
            cell.source = relu_cell
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """Reports for every attack, graded together in the sandbox (two notebooks at a time)."""
    pytest.importorskip("nbformat")
    from netmoments.course import grading, judge

    if not judge.bwrap_works():
        pytest.skip("bubblewrap is not installed or does not start here (CI installs it: apt-get install bubblewrap)")
    root = tmp_path_factory.mktemp("attacks")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sentinel = root / "instructor" / "grades.csv"
    sentinel.parent.mkdir()
    sentinel.write_text("student,score\n")
    subs = {name: _submission(root / name / f"{A1}.ipynb", cell) for name, cell in [
        ("returns_none", RETURNS_NONE), ("rewrites_the_tests", REWRITES_THE_TESTS), ("lying_tensor", LYING_TENSOR),
        ("unstoppable_example", UNSTOPPABLE)]}
    # The same code with the "try it" cell deleted: now it is a graded cell that calls it.
    subs["unstoppable"] = _submission(root / "unstoppable" / f"{A1}.ipynb", UNSTOPPABLE, keep_examples=False)
    package_file = grading.SOURCE_DIR.parent / "written_by_a_student.txt"
    probe = PROBE.format(
        read={"the source notebook (solutions, hidden tests)": str(grading.source_notebook(A1)),
              "another student's submission": str(subs["returns_none"]),
              "the instructor's files": str(sentinel)},
        write={"the source notebook": str(grading.source_notebook(A1)),
               "the package": str(package_file),
               "the instructor's files": str(sentinel),
               "another student's submission": str(subs["returns_none"])},
        port=listener.getsockname()[1])
    subs["probe"] = _submission(root / "probe" / f"{A1}.ipynb", probe)
    before = {p: p.read_bytes() for p in (grading.source_notebook(A1), sentinel, subs["returns_none"])}
    try:
        reports = grading.grade_submissions({name: {A1: path} for name, path in subs.items()}, cell_timeout=15,
                                            jobs=2, sandbox="bwrap")
    finally:
        listener.close()
        created = package_file.exists()
        package_file.unlink(missing_ok=True)
    after = {p: p.read_bytes() for p in before}
    return {name: per[A1] for name, per in reports.items()}, before, after, created


@pytest.mark.parametrize("attack", ["returns_none", "rewrites_the_tests", "lying_tensor"])
def test_an_attack_scores_nothing_on_the_questions_it_attacks(attacked, attack):
    reports = attacked[0]
    report = reports[attack]
    assert report.sandbox == "bwrap"
    relu = [q for q in report.questions if q.name.startswith("test_relu_") and q.name != "test_relu_z_score"]
    assert len(relu) == 4 and all(q.score == 0 < q.max_score for q in relu), report.to_text()
    # relu_mean_z_score is the reference's and is graded with the reference relu_mean_var in place of the
    # attacked one (one mistake costs one question): its points, and only those.
    z = {q.name: q for q in report.questions}["test_relu_z_score"]
    assert z.score == z.max_score > 0 and report.score == z.score, report.to_text()


def test_a_function_that_returns_nothing_is_told_so(attacked):
    feedback = {q.name: q.feedback for q in attacked[0]["returns_none"].questions}
    assert "returned None" in feedback["test_relu_regular"], feedback


def test_the_lying_tensor_arrives_as_plain_numbers(attacked):
    feedback = {q.name: q.feedback for q in attacked[0]["lying_tensor"].questions}
    # The judge compares the zeros the attack really returned with the true mean 1/sqrt(2 pi) = 0.398942.
    assert re.search(r"expected 0\.398942, got 0\b", feedback["test_relu_regular"]), feedback


def test_code_that_ignores_the_time_limit_is_killed(attacked):
    report = attacked[0]["unstoppable"]
    first, *rest = report.questions
    assert first.score == 0 and "Time limit" in first.feedback, report.to_text()
    assert all(q.score == 0 and "stopped" in q.feedback for q in rest), report.to_text()
    # Killed in an ungraded cell, before any test ran: every question says where.
    report = attacked[0]["unstoppable_example"]
    assert report.score == 0 and "ran longer than 15 s" in report.error, report.to_text()
    assert all("ran longer than 15 s" in q.feedback for q in report.questions), report.to_text()


def test_the_sandbox_hides_and_protects_everything_but_the_students_own_code(attacked):
    reports, before, after, created = attacked
    feedback = {q.name: q.feedback for q in reports["probe"].questions}["test_relu_regular"]
    found = re.search(r"PROBE (\{.*?\}) END", feedback)
    assert found, feedback
    seen = json.loads(found.group(1))
    assert len(seen) == 8, seen  # every probe ran
    assert not any(seen.values()), {k: v for k, v in seen.items() if v}
    assert after == before and not created


def test_the_sandbox_is_refused_loudly_when_asked_for_and_missing(monkeypatch):
    from netmoments.course import judge

    monkeypatch.setattr(judge, "bwrap_works", lambda: False)
    with pytest.raises(RuntimeError, match="bubblewrap"):
        judge.resolve_sandbox("bwrap")
    assert judge.resolve_sandbox("auto") == "none"
    with pytest.raises(ValueError, match="sandbox must be one of"):
        judge.resolve_sandbox("docker")


# -- the wire: what the judge accepts from the student's process ----------------------------------------------
def test_answers_round_trip_exactly():
    value = (torch.tensor([1.0, float("nan"), -float("inf")], dtype=torch.float64),
             [torch.arange(6, dtype=torch.int32).reshape(2, 3), torch.zeros(0, 4), torch.tensor(True)],
             {"x": np.array([[1.5, 2.5]], dtype=np.float32), "n": 2 ** 70, "s": "text", "none": None},
             0.1, complex(1, -2), torch.tensor([1.0, 2.0], dtype=torch.bfloat16), torch.Size([3, 1]))
    out = wire.decode(wire.encode(value))
    assert isinstance(out, tuple) and len(out) == len(value)
    assert out[0].dtype == torch.float64 and torch.equal(out[0].isnan(), value[0].isnan())
    assert out[0][0].item() == 1.0 and out[0][2].item() == -float("inf")
    assert torch.equal(out[1][0], value[1][0]) and out[1][0].dtype == torch.int32
    assert out[1][1].shape == (0, 4) and out[1][2].item() is True
    assert isinstance(out[2]["x"], np.ndarray) and out[2]["x"].dtype == np.float32
    assert out[2]["x"].tolist() == [[1.5, 2.5]] and out[2]["n"] == 2 ** 70 and out[2]["none"] is None
    assert out[3] == 0.1 and out[4] == complex(1, -2) and out[5].dtype == torch.bfloat16
    assert out[5].tolist() == [1.0, 2.0] and out[6] == (3, 1)


def test_subclasses_arrive_as_plain_tensors():
    class Sub(torch.Tensor):
        pass

    out = wire.decode(wire.encode(torch.ones(2).as_subclass(Sub)))
    assert type(out) is torch.Tensor and out.tolist() == [1.0, 1.0]


def test_views_arrive_as_the_values_they_show():
    z = torch.tensor([1 + 2j, 3 - 1j])
    out = wire.decode(wire.encode((z.conj(), -z.conj(), torch.arange(6.0).reshape(2, 3).t(), torch.arange(4.0).flip(0))))
    assert out[0].tolist() == [1 - 2j, 3 + 1j] and out[1].tolist() == [-1 + 2j, -3 - 1j]
    assert out[2].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]] and out[3].tolist() == [3.0, 2.0, 1.0, 0.0]


@pytest.mark.parametrize("value", [lambda x: x, object(), torch.nn.Linear(1, 1), {1: 2},
                                   np.array(["a"], dtype=object), torch.eye(2).to_sparse()])
def test_objects_the_format_cannot_carry_are_refused_when_sent(value):
    with pytest.raises(wire.Unsupported):
        wire.encode(value)


def _frame(header: dict, *blobs: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + b"".join(blobs)


@pytest.mark.parametrize("data, message", [
    (b"\x80\x04\x95", "header"),  # a pickle
    (b"", "truncated"),
    (_frame({"value": {"k": "atom", "v": 1}, "sizes": []}), "bad atom"),
    (_frame({"value": {"k": "tensor", "dtype": "object", "shape": [1], "blob": 0}, "sizes": [8]}, b"\0" * 8),
     "not allowed"),
    (_frame({"value": {"k": "tensor", "dtype": "float64", "shape": [2], "blob": 0}, "sizes": [8]}, b"\0" * 8),
     "needs 16 bytes"),
    (_frame({"value": {"k": "tensor", "dtype": "float64", "shape": [1], "blob": 0}, "sizes": [8]}, b"\0" * 4),
     "present"),
    (_frame({"value": {"k": "atom", "v": None}, "sizes": [8]}, b"\0" * 8), "no value uses"),
    (_frame({"value": {"k": "tuple", "items": [{"k": "tensor", "dtype": "float64", "shape": [1], "blob": 0}] * 2},
             "sizes": [8]}, b"\0" * 8), "bad blob index"),
    (_frame({"value": {"k": "pickle", "v": "cos\nsystem\n"}, "sizes": []}), "unknown node kind"),
    (_frame({"value": {"k": "float", "v": 3}, "sizes": []}), "bad float"),
    (struct.pack(">I", 200_000) + b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # nesting past the recursion limit
    (_frame({"value": json.loads("[" * 40 + "]" * 40), "sizes": []}), "bad node"),
    (_frame({"value": {"k": "list", "items": [{"k": "list", "items": []}]}, "sizes": []})[:-3], "truncated"),
])
def test_answers_that_break_the_format_are_rejected(data, message):
    with pytest.raises(wire.WireError, match=message):
        wire.decode(data)


def test_a_frame_larger_than_the_limit_is_rejected_before_it_is_read():
    import os

    r, w = os.pipe()
    try:
        os.write(w, struct.pack(">Q", 1 << 40))
        with pytest.raises(wire.WireError, match="larger than the limit"):
            wire.read_frame(r, max_size=1 << 20)
    finally:
        os.close(r)
        os.close(w)


# -- without the sandbox, and bad arguments --------------------------------------------------------------------
def test_without_the_sandbox_the_reference_still_gets_full_marks_and_the_report_says_so():
    pytest.importorskip("nbformat")
    from netmoments.course import grading

    report = grading.grade_notebook(grading.source_notebook(A1), sandbox="none")
    assert report.sandbox == "none" and report.score == report.max_score == 9, report.to_text()
    assert "graded without the sandbox" in report.to_text() and report.to_json()["sandbox"] == "none"


@pytest.mark.parametrize("kwargs, message", [
    ({"cell_timeout": 0}, "cell_timeout must be a positive"),
    ({"jobs": 0}, "jobs must be at least 1"),
    ({"sandbox": "docker"}, "sandbox must be one of"),
])
def test_grade_submissions_rejects_bad_arguments(kwargs, message):
    from netmoments.course import grading

    with pytest.raises(ValueError, match=message):
        grading.grade_submissions({"s": {A1: grading.source_notebook(A1)}}, **kwargs)


def test_grade_submissions_rejects_an_unknown_assignment():
    from netmoments.course import grading

    with pytest.raises(ValueError, match="assignment must be one of"):
        grading.grade_submissions({"s": {"a9_nothing": grading.source_notebook(A1)}}, sandbox="none")


def test_a_worker_that_cannot_start_is_the_graders_failure_not_the_students(monkeypatch, tmp_path):
    from netmoments.course import judge

    monkeypatch.setattr(judge, "MEMORY_LIMIT", 16 << 20)  # 16 MiB: too little to import torch
    worker = judge.Worker("none", tmp_path)
    try:
        with pytest.raises(RuntimeError, match="(?s)the worker did not start.*MemoryError"):
            worker.wait_ready(timeout=120)
    finally:
        worker.close()
    assert worker.proc.poll() is not None


def test_the_command_line_refuses_to_grade_without_the_sandbox_it_was_asked_for(monkeypatch, capsys, tmp_path):
    from netmoments.course import __main__ as cli
    from netmoments.course import grading, judge

    monkeypatch.setattr(judge, "bwrap_works", lambda: False)
    assert cli.main(["grade", str(grading.source_notebook(A1)), "--sandbox", "bwrap"]) == 2
    assert cli.main(["grade-all", str(tmp_path), "--csv", str(tmp_path / "g.csv"), "--sandbox", "bwrap"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: sandbox='bwrap' but bubblewrap does not start here") == 2, err
