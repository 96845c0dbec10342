"""The visible-check helper's feedback: numbers that differ print differently, the classic slips (n vs n - 1,
float32) are named only when the numbers prove them, and a failing check in Jupyter shows the message alone."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from netmoments.course.checks import Check, CheckFailed

F64 = torch.float64


def _message(got, want, **kwargs) -> str:
    check = Check({}, "t")
    check.close("case", got, want, **kwargs)
    return check.failures[0] if check.failures else ""


def _samples(n=20_000):
    return torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=F64)


@pytest.mark.parametrize("want, got", [(0.5, 0.5 + 1e-9), (0.5, 0.5 + 1e-13), (1234.5678, 1234.5678001)])
def test_numbers_that_differ_never_print_the_same(want, got):
    message = _message(torch.tensor(got, dtype=F64), torch.tensor(want, dtype=F64), rtol=0, atol=0)
    shown = re.match(r"\[case\] expected (\S+), got (\S+)", message)
    assert shown and shown.group(1) != shown.group(2), message
    assert "off by" in message


def test_a_tensor_that_differs_in_the_seventh_digit_prints_more_digits():
    want = torch.tensor([0.1234567891234, 2.2], dtype=F64)
    message = _message(want + 1e-8, want)
    summary = re.match(r"\[case\] expected (.*?), got (.*?) \(", message)
    assert summary.group(1) != summary.group(2), message


@pytest.mark.parametrize("got, want, pattern", [
    (lambda x: x.var(unbiased=False), lambda x: x.var(), r"is \(n-1\)/n times .* n = 20000: the mark of dividing by n where n - 1 was meant, or the reverse"),
    (lambda x: x.std(unbiased=False), lambda x: x.std(), r"square root of \(n-1\)/n .* n = 20000"),
])
def test_dividing_by_n_instead_of_n_minus_1_is_named(got, want, pattern):
    x = _samples()
    message = _message(got(x), want(x))
    assert re.search(pattern, message), message


def test_dividing_by_n_minus_1_instead_of_n_is_named():
    x = _samples()
    assert re.search(r"is n/\(n-1\) times .* n = 20000: the mark of dividing by n where n - 1",
                     _message(x.var(), x.var(unbiased=False)))


def test_a_factor_of_n_or_sqrt_n_is_named():
    x = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    assert "times 4000" in _message(x * 4000, x)
    assert "divided by sqrt(4000)" in _message(x / 4000 ** 0.5, x)


def test_float32_answers_are_named_only_when_float32_explains_the_difference():
    want = torch.tensor([0.1234567891234, 2.2], dtype=F64)
    assert "your answer is torch.float32" in _message(want.float(), want, check_dtype=False)
    assert "every entry is a float32 number" in _message(want.float().double(), want)
    # Wrong by far more than float32's precision: not a float32 problem.
    assert "Diagnosis" not in _message((want * 1.01).float(), want, check_dtype=False)
    # Off by 1e-8 in float64: not float32 either.
    assert "Diagnosis" not in _message(want + 1e-8, want)


def test_no_diagnosis_for_an_answer_that_is_simply_wrong():
    want = torch.tensor([0.3, 1.7, 2.4, 0.05], dtype=F64)
    noise = torch.tensor([0.01, -0.2, 0.03, 0.4], dtype=F64)
    assert "Diagnosis" not in _message(want + noise, want)
    assert "Diagnosis" not in _message(torch.tensor(0.7, dtype=F64), torch.tensor(0.5 + 1e-3, dtype=F64))


def test_the_tests_own_diagnosis_comes_first():
    x = _samples()
    message = _message(x.var(unbiased=False), x.var(), diagnoses=[(x.var(unbiased=False), "the test's own words")])
    assert "the test's own words" in message and "n - 1" not in message


def test_done_raises_an_assertion_error_with_every_failure():
    check = Check({}, "title")
    check.close("a", torch.tensor(1.0, dtype=F64), torch.tensor(2.0, dtype=F64))
    with pytest.raises(CheckFailed) as info:
        check.done()
    assert isinstance(info.value, AssertionError) and str(info.value).startswith("title: 1 check(s) failed")


def _executed_cells(nb, path):
    """The cells of notebook ``nb`` (nbformat) after a real kernel ran it, saved at ``path``."""
    import nbformat

    nbformat.write(nb, path)
    done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                           str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(path.read_text())["cells"]


def test_in_jupyter_a_failing_check_shows_its_message_without_a_traceback(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbconvert")
    nb = nbformat.v4.new_notebook()
    tag = {"tags": ["raises-exception"]}
    nb.cells = [
        nbformat.v4.new_code_cell("import torch\nfrom netmoments.course.checks import Check\nc = Check(globals(), 'demo')\n"
                                  "c.close('x', torch.tensor(0.5), torch.tensor(0.25))\nc.done()", metadata=tag),
        nbformat.v4.new_code_cell("assert 1 == 2, 'the student'", metadata=tag),
    ]
    cells = _executed_cells(nb, tmp_path / "demo.ipynb")
    (error,) = cells[0]["outputs"]
    assert error["ename"] == "AssertionError" and error["evalue"].startswith("demo: 1 check(s) failed")
    text = "\n".join(error["traceback"])
    assert "checks.py" not in text and "Traceback" not in text and "expected 0.25, got 0.5" in text
    # The student's own assertions keep their full traceback.
    assert "Traceback" in "\n".join(cells[1]["outputs"][0]["traceback"])


def test_an_unfilled_blank_shows_one_line_in_a_kernel_and_every_other_error_its_traceback(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbconvert")
    from netmoments.course.checks import BLANK, NotDone

    assert issubclass(NotDone, NotImplementedError)  # what Check.call and the grader detect
    nb = nbformat.v4.new_notebook()
    tag = {"tags": ["raises-exception"]}
    nb.cells = [
        nbformat.v4.new_code_cell("from netmoments.course.checks import Check, NotDone\n\n"
                                  "def relu_mean_var(mean, var):\n    # YOUR CODE HERE\n    raise NotDone()\n\n"
                                  "def uses_it(mean):\n    return relu_mean_var(mean, 1.0)"),
        nbformat.v4.new_code_cell("uses_it(0.0)", metadata=tag),
        nbformat.v4.new_code_cell("raise NotDone()", metadata=tag),
        nbformat.v4.new_code_cell("def own(x):\n    raise NotImplementedError('mine')\nown(1)", metadata=tag),
        nbformat.v4.new_code_cell("c = Check(globals(), 'demo')\nc.call('relu_mean_var', 0.0, 1.0)\nc.done()",
                                  metadata=tag),
    ]
    cells = _executed_cells(nb, tmp_path / "blank.ipynb")
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(c["outputs"][0]["traceback"])) for c in cells[1:]]
    # The innermost blank is named, wherever the call started; at the top level there is no function to name.
    assert plain[0] == f"NotDone: relu_mean_var: {BLANK}", plain[0]
    assert plain[1] == f"NotDone: {BLANK}", plain[1]
    assert "Traceback" in plain[2] and "own(1)" in plain[2] and "mine" in plain[2]  # the student's own error
    assert cells[4]["outputs"][0]["ename"] == "AssertionError" and "relu_mean_var is not implemented yet" in plain[3]
