"""Test-case helpers for the graded cells of the course notebooks.

A graded cell builds one :class:`Check`, adds cases, and ends with :meth:`Check.done`. Every case runs even
after an earlier one failed, so the student sees *all* failures at once; ``done`` then raises one
``AssertionError`` whose message lists, per failed case, what was tested, the expected and the obtained value,
and a hint. The grading tool (nbgrader) records that message as the cell's feedback.

Only torch and numpy are needed here, so the checks also run in a student's plain environment.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable

import torch

__all__ = ["Check", "NOT_DONE"]

# No backticks in messages: the book renders tracebacks with the ipythontb lexer, which rejects them.
NOT_DONE = "not implemented yet: replace raise NotImplementedError() under YOUR CODE HERE with your solution"


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def _fmt(value: Any) -> str:
    t = _as_tensor(value)
    if t is None:
        return repr(value)
    t = t.to(torch.float64) if t.is_floating_point() or t.dtype in (torch.int32, torch.int64) else t
    if t.numel() == 1:
        return f"{t.item():.6g}"
    flat = t.flatten()
    shown = ", ".join(f"{v:.6g}" for v in flat[:6].tolist())
    more = ", ..." if flat.numel() > 6 else ""
    return f"tensor of shape {tuple(t.shape)}: [{shown}{more}]"


class Check:
    """Collects the cases of one graded cell.

    Args:
        namespace: the notebook's ``globals()``; student functions are looked up there by name, so a deleted
            or renamed function is reported as such instead of a bare ``NameError``.
        title: what the cell grades, shown in the report.
    """

    def __init__(self, namespace: dict, title: str):
        self.namespace = namespace
        self.title = title
        self.failures: list[str] = []
        self.passed = 0
        self._not_done: set[str] = set()

    # -- looking up and calling student code -------------------------------------------------------------
    def function(self, name: str) -> Callable | None:
        """The student's function ``name``, or ``None`` (recorded as a failure) if it is missing."""
        value = self.namespace.get(name)
        if value is None or not callable(value):
            self.fail(name, f"{name} is not defined (did you delete or rename it, or not run its cell?)",
                      hint=f"keep the signature {name}(...) given in the notebook and run its cell")
            return None
        return value

    def call(self, name: str, *args, case: str = "", **kwargs) -> Any:
        """``name(*args, **kwargs)``, or ``None`` with the raised exception recorded as a failure."""
        fn = self.function(name)
        if fn is None:
            return None
        try:
            with warnings.catch_warnings():  # a warning on stderr would zero the cell under nbgrader
                warnings.simplefilter("ignore")
                value = fn(*args, **kwargs)
        except NotImplementedError:
            if name not in self._not_done:  # say it once, not once per case
                self._not_done.add(name)
                self.fail(case or name, f"{name} is {NOT_DONE}")
            else:
                self.failures.append(f"[{case}] skipped: {name} is not implemented yet")
        except Exception as exc:  # the student's code may raise anything; report it, keep grading
            self.fail(case or name, f"{name} raised {type(exc).__name__}: {exc}")
        else:
            # The test cells skip their comparisons when call() returns None, so a function that returns nothing
            # (a body of just pass) must be a failure here, or it would pass every check it skipped.
            if value is None:
                self.fail(case or name, f"{name} returned None instead of its result",
                          hint="end the function with a return statement")
            return value
        return None

    # -- assertions -------------------------------------------------------------------------------------
    def fail(self, case: str, message: str, hint: str = "") -> None:
        self.failures.append(f"[{case}] {message}" + (f"\n    Hint: {hint}" if hint else ""))

    def true(self, case: str, condition: bool, message: str, hint: str = "") -> bool:
        if condition:
            self.passed += 1
            return True
        self.fail(case, message, hint)
        return False

    def close(
        self,
        case: str,
        got: Any,
        expected: Any,
        *,
        rtol: float = 1e-9,
        atol: float = 1e-12,
        hint: str = "",
        diagnoses: Iterable[tuple[Any, str]] = (),
        check_dtype: bool = True,
    ) -> bool:
        """``got`` equals ``expected`` elementwise within ``atol + rtol * |expected|``, with the same shape.

        ``diagnoses`` lists ``(value_of_a_typical_mistake, explanation)``: when ``got`` matches one of those
        values instead, its explanation is added to the message (e.g. "you returned E[q^2], not Var[q]").
        """
        if got is None:  # already reported by call()
            return False
        want = _as_tensor(expected).to(torch.float64)
        have = _as_tensor(got)
        if have is None:
            return self.true(case, False, f"expected {_fmt(want)}, got a {type(got).__name__}: {got!r}", hint)
        if check_dtype and isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor) \
                and got.dtype != expected.dtype:
            return self.true(case, False, f"expected dtype {expected.dtype}, got {got.dtype}",
                             hint or "keep the input's dtype (float64); do not convert with .float() or Python floats")
        if tuple(have.shape) != tuple(want.shape):
            return self.true(case, False, f"expected shape {tuple(want.shape)}, got shape {tuple(have.shape)}",
                             hint or "use tensor operations that broadcast; avoid .item(), math.* and Python loops")
        have = have.to(torch.float64)
        finite_want = torch.isfinite(want)
        bad_nan = torch.isnan(have) & ~torch.isnan(want)
        ok = torch.isclose(have, want, rtol=rtol, atol=atol, equal_nan=True)
        if bool(ok.all()):
            self.passed += 1
            return True
        where = (~ok).nonzero()
        first = tuple(where[0].tolist()) if where.numel() and want.dim() else ()
        detail = f"expected {_fmt(want)}, got {_fmt(have)}"
        if want.dim():
            detail += f" ({int((~ok).sum())} of {ok.numel()} entries wrong; first at index {first}: " \
                      f"expected {want[first].item():.6g}, got {have[first].item():.6g})"
        if bool(bad_nan.any()):
            detail += " -- your answer is NaN where the true value is finite"
        elif bool((~torch.isfinite(have) & finite_want).any()):
            detail += " -- your answer is infinite where the true value is finite"
        for value, explanation in diagnoses:
            alt = _as_tensor(value)
            if alt is not None and tuple(alt.shape) == tuple(have.shape) and bool(
                torch.isclose(have, alt.to(torch.float64), rtol=max(rtol, 1e-7), atol=max(atol, 1e-10)).all()
            ):
                detail += f"\n    Diagnosis: {explanation}"
                break
        return self.true(case, False, detail, hint)

    def done(self) -> None:
        """Raise one ``AssertionError`` listing every failed case; print a one-line pass otherwise."""
        if not self.failures and not self.passed:
            # Nothing was checked (every case skipped): that is not a pass.
            self.failures.append("[no case] no check ran: the tests could not get a result from your code")
        if self.failures:
            n = len(self.failures)
            raise AssertionError(
                f"{self.title}: {n} check(s) failed, {self.passed} passed.\n" + "\n".join(self.failures)
            )
        print(f"{self.title}: all {self.passed} checks passed.")


def isclose_scalar(a: float, b: float, rel: float = 1e-9) -> bool:  # small helper for notebooks
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
