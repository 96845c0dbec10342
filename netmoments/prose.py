"""Numbers in sentences: an estimate with its interval, the sign of an interval, lists of labels for prose.

The book's chapters write their findings from the data when they are executed (chapters 7 and 8); these helpers
keep the wording consistent and make it follow the intervals (``"higher"`` only when an interval lies above 0).
"""
from __future__ import annotations

import math

__all__ = ["format_ci", "interval_sign", "join_words", "sign_phrase", "sig_text"]


def format_ci(estimate: float, low: float, high: float, digits: int = 3) -> str:
    """``"0.053 [0.042, 0.065]"``: an estimate and its interval, each with ``digits`` decimals (``-0`` shown as 0)."""
    if digits < 0:
        raise ValueError(f"digits must be >= 0, got {digits}")
    values = [float(v) for v in (estimate, low, high)]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"estimate, low and high must be finite, got {values}")
    if not values[1] <= values[2]:
        raise ValueError(f"low must be <= high, got low={values[1]}, high={values[2]}")
    text = [f"{v:.{digits}f}" for v in values]
    text = [t[1:] if t.startswith("-") and float(t) == 0 else t for t in text]  # no "-0.000"
    return f"{text[0]} [{text[1]}, {text[2]}]"


def interval_sign(low: float, high: float) -> int:
    """+1 if an interval lies above 0, -1 if below, 0 if it contains 0 (the difference is not distinguishable)."""
    if not low <= high:
        raise ValueError(f"low must be <= high, got low={low}, high={high}")
    return 1 if low > 0 else -1 if high < 0 else 0


def join_words(items) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``: a list for prose."""
    items = [str(i) for i in items]
    if not items:
        raise ValueError("join_words needs at least one item")
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def sign_phrase(signs, labels, words: dict, prefix: str = "", every: str | None = None) -> str:
    """Prose for the signs of several intervals, e.g. ``"worse at k = 100 and 200, not distinguishable at k = 2000"``.

    ``signs``: +1 / -1 / 0 per label (:func:`interval_sign`); ``words``: the phrase for each sign; ``prefix`` goes
    before each group of labels (``"k = "``); ``every``, if given, replaces the labels when all share one sign
    (``"every k"`` gives ``"worse at every k"``). Groups appear in the order of their first label.
    """
    signs, labels = list(signs), [str(lab) for lab in labels]
    if not signs or len(signs) != len(labels):
        raise ValueError(f"signs and labels must be non-empty and equally long, got {len(signs)} and {len(labels)}")
    if not set(signs) <= {-1, 0, 1} or not set(signs) <= set(words):
        raise ValueError(f"signs must be -1, 0 or 1, each with a phrase in words; got {sorted(set(signs))}")
    if every is not None and len(set(signs)) == 1:
        return f"{words[signs[0]]} at {every}"
    groups = {}
    for sign, label in zip(signs, labels):
        groups.setdefault(sign, []).append(label)
    return ", ".join(f"{words[sign]} at {prefix}{join_words(group)}" for sign, group in groups.items())


def sig_text(value: float, sig: int = 3) -> str:
    """``value`` rounded to ``sig`` significant digits, in plain notation for prose (368.9 -> "369", 3.84 -> "3.84")."""
    if sig < 1:
        raise ValueError(f"sig must be >= 1, got {sig}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value}")
    if value == 0:
        return "0"
    decimals = max(sig - 1 - math.floor(math.log10(abs(value))), 0)
    return f"{round(value, decimals):,.{decimals}f}"
