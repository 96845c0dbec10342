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

__all__ = ["Check", "CheckFailed", "NOT_DONE", "NotDone", "BLANK"]

# No backticks in messages: the book renders tracebacks with the ipythontb lexer, which rejects them.
#: The message for a function the student has still to write (its ``raise NotDone()`` stub still in place).
NOT_DONE = "not implemented yet: replace raise NotDone() under YOUR CODE HERE with your solution"
#: The default message of :class:`NotDone`, for a blank the student has still to fill in.
BLANK = "blank not filled in yet: write your code under YOUR CODE HERE and run the cell again"


class NotDone(NotImplementedError):
    """What an unfilled blank raises (the released notebooks' stub is ``raise NotDone()``).

    A :class:`NotImplementedError`, so everything that detects unfilled blanks (:meth:`Check.call`, the grader)
    treats it as one. In IPython (a notebook's kernel) it shows as one line naming the function whose blank it
    is, instead of a traceback: IPython prints what ``_render_traceback_`` returns in place of the traceback, and
    the notebook stores that list as the error output's traceback (the book renders exactly that). Every other
    exception, the student's own errors included, keeps its full traceback.
    """

    def __init__(self, message: str = BLANK):
        super().__init__(message)

    def _where(self) -> str:
        tb = self.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        name = tb.tb_frame.f_code.co_name if tb is not None else ""
        return "" if not name or name.startswith("<") else f"{name}: "

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mNotDone\x1b[0m: {self._where()}{self}"]


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def _fmt(value: Any, digits: int = 6) -> str:
    t = _as_tensor(value)
    if t is None:
        return repr(value)
    t = t.to(torch.float64) if t.is_floating_point() or t.dtype in (torch.int32, torch.int64) else t
    if t.numel() == 1:
        return f"{t.item():.{digits}g}"
    flat = t.flatten()
    shown = ", ".join(f"{v:.{digits}g}" for v in flat[:6].tolist())
    more = ", ..." if flat.numel() > 6 else ""
    return f"tensor of shape {tuple(t.shape)}: [{shown}{more}]"


def _fmt_pair(want: torch.Tensor, have: torch.Tensor) -> tuple[str, str]:
    """Both tensors, with more digits when six would show the same numbers for different values."""
    for digits in (6, 9, 12, 17):
        a, b = _fmt(want, digits), _fmt(have, digits)
        if a != b:
            break
    return a, b


def _pair(want: float, have: float) -> tuple[str, str]:
    """``want`` and ``have`` with enough significant digits to tell them apart (never "expected 0.5, got 0.5")."""
    for digits in (6, 9, 12, 17):
        a, b = f"{want:.{digits}g}", f"{have:.{digits}g}"
        if a != b or want == have:
            return a, b
    return a, b


def _difference(want: float, have: float) -> str:
    diff = have - want
    if not math.isfinite(diff) or diff == 0:
        return ""
    rel = f", relative {abs(diff / want):.2g}" if want != 0 and math.isfinite(want) else ""
    return f" (off by {diff:+.3g}{rel})"


def _near_integer(x: float, lo: float = 2.0) -> int | None:
    if not math.isfinite(x) or x < lo - 1e-9 or x > 1e9:
        return None
    n = round(x)
    # x comes from a ratio of two float64 results: its round-off grows like n^2 * 1e-16; a chance match of a
    # wrong answer must stay unlikely, so the tolerance is a thousand times that, no more.
    return n if n >= lo and abs(x - n) <= max(1e-9, n * n * 1e-13) else None


def _factor_diagnosis(have: torch.Tensor, want: torch.Tensor) -> str:
    """When ``have`` is ``want`` times one constant that a classic slip produces (n/(n-1), its square root, n,
    sqrt(n), or their inverses), say so. Only exact, uniform factors count: anything else is not this mistake."""
    mask = torch.isfinite(have) & torch.isfinite(want) & (want.abs() > 1e-300)
    if not bool(mask.any()):
        return ""
    ratio = (have[mask] / want[mask]).to(torch.float64)
    r = float(ratio.flatten()[0])
    if r <= 0 or not bool(torch.allclose(ratio, torch.full_like(ratio, r), rtol=1e-9, atol=0)) or abs(r - 1) < 1e-12:
        return ""
    # Direction-neutral on purpose: a variance divided by n instead of n - 1 makes a variance smaller but a
    # z-score (variance in the denominator) larger, so the factor alone cannot say which way the slip went.
    slip = ("the mark of dividing by n where n - 1 was meant, or the reverse (torch.var and torch.std divide by "
            "n - 1 by default; unbiased=False or correction=0 divides by n): check which one this quantity needs")
    for value, power in ((r, 1), (r * r, 2)):
        root = "the square root of " if power == 2 else ""
        if value > 1:
            n = _near_integer(value / (value - 1))
            if n is not None and n >= 10:  # sample sizes; a factor 2 or 3/2 is some other slip
                return f"your answer is {root}n/(n-1) times the expected one, with n = {n}: {slip}"
        else:
            n = _near_integer(1 / (1 - value))
            if n is not None and n >= 10:
                return f"your answer is {root}(n-1)/n times the expected one, with n = {n}: {slip}"
    for value, power in ((r, 1), (r * r, 2)):
        root = "sqrt" if power == 2 else ""
        big = _near_integer(value) if value > 1 else _near_integer(1 / value)
        if big is not None:
            what = f"{root}({big})" if root else f"{big}"
            side = "times" if value > 1 else "divided by"
            why = (": a factor n or sqrt(n) too many or too few (n the number of samples or entries?)" if big >= 10
                   else ": look for a constant factor in your formula")
            return f"your answer is exactly the expected one {side} {what}{why}"
    return ""


class CheckFailed(AssertionError):
    """What :meth:`Check.done` raises. In a Jupyter kernel it shows as its message only (``AssertionError: ...``,
    the summary and the hints), without the traceback through this module that would bury the message."""


def _show_check_failure(shell, etype, value, tb, tb_offset=None):
    stb = [f"\x1b[0;31mAssertionError\x1b[0m: {value}"]
    shell._showtraceback(AssertionError, value, stb)
    return stb


def _quiet_in_ipython() -> None:
    """Have the running IPython (a notebook's kernel) show :class:`CheckFailed` without a traceback."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except Exception:  # no IPython: a plain interpreter shows the traceback, that is fine
        return
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return
    handled = tuple(getattr(shell, "custom_exceptions", ()) or ())
    if CheckFailed in handled:
        return
    if handled:  # someone else's handler: leave it alone
        return
    shell.set_custom_exc((CheckFailed,), _show_check_failure)


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
        have_dtype = have.dtype
        have = have.to(torch.float64)
        finite_want = torch.isfinite(want)
        bad_nan = torch.isnan(have) & ~torch.isnan(want)
        ok = torch.isclose(have, want, rtol=rtol, atol=atol, equal_nan=True)
        if bool(ok.all()):
            self.passed += 1
            return True
        where = (~ok).nonzero()
        first = tuple(where[0].tolist()) if where.numel() and want.dim() else ()
        if want.numel() == 1:
            w, h = float(want.reshape(())), float(have.reshape(()))
            a, b = _pair(w, h)
            shape = "" if not want.dim() else f" (shape {tuple(want.shape)})"
            detail = f"expected {a}, got {b}{shape}{_difference(w, h)}"
        else:
            a, b = _fmt_pair(want, have)
            detail = f"expected {a}, got {b}"
            w, h = float(want[first]), float(have[first])
            a, b = _pair(w, h)
            detail += f" ({int((~ok).sum())} of {ok.numel()} entries wrong; first at index {first}: " \
                      f"expected {a}, got {b}{_difference(w, h)})"
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
        else:
            generic = ""
            loose = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(have_dtype)
            if loose and bool(finite_want.all()) and bool(torch.isclose(have, want, rtol=loose,
                                                                          atol=max(atol, loose * 1e-2)).all()):
                generic = (f"your answer is {have_dtype}, so it carries only about "
                           f"{7 if have_dtype == torch.float32 else 3} significant digits: keep every step in "
                           "float64 (no .float(), no float32 model or tensors built without dtype)")
            elif (bool(finite_want.all()) and bool(torch.isclose(have, want, rtol=1e-5, atol=max(atol, 1e-7)).all())
                  and bool((have.to(torch.float32).to(torch.float64) == have).all())
                  and not bool((want.to(torch.float32).to(torch.float64) == want).all())):
                # float64 values that are all exactly float32 numbers, close to a result that is not: computed in
                # float32 and converted back at the end.
                generic = ("your answer is float64 but every entry is a float32 number, agreeing with the expected "
                           "one only to float32 precision (about 7 digits): you computed in float32 (.float(), a "
                           "float32 model, a tensor built without dtype) and converted at the end")
            else:
                generic = _factor_diagnosis(have, want)
            if generic:
                detail += f"\n    Diagnosis: {generic}"
        return self.true(case, False, detail, hint)

    def done(self) -> None:
        """Raise one ``AssertionError`` listing every failed case; print a one-line pass otherwise."""
        if not self.failures and not self.passed:
            # Nothing was checked (every case skipped): that is not a pass.
            self.failures.append("[no case] no check ran: the tests could not get a result from your code")
        if self.failures:
            n = len(self.failures)
            _quiet_in_ipython()
            raise CheckFailed(
                f"{self.title}: {n} check(s) failed, {self.passed} passed.\n" + "\n".join(self.failures)
            )
        print(f"{self.title}: all {self.passed} checks passed.")


def isclose_scalar(a: float, b: float, rel: float = 1e-9) -> bool:  # small helper for notebooks
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
