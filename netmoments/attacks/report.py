"""Tables from the per-image rows of :mod:`netmoments.experiments.attack_suite` (chapter 9); their plots are in
:mod:`netmoments.viz.ch09_attacks` (``plot_*`` here hand over to them).

Every interval is a percentile bootstrap over *digits* (:func:`netmoments.attacks.metrics.bootstrap_ci`); a
targeted run has one row per (digit, target) and is resampled by digit (its per-digit mean over targets).

The rows name their attack in a ``"method"`` column (a stored data format, kept); the functions here take it as
``attack`` (``method`` is the package's word for a covariance formula).
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import renamed
from ..prose import format_ci, interval_sign
from .metrics import L0_BUDGETS, bootstrap_ci

__all__ = ["load_rows", "by_method", "method_table", "format_interval", "cost_ratio", "calibration",
           "per_digit", "paired_difference", "compare"]


def load_rows(path) -> list[dict]:
    """The complete tasks' rows of a suite CSV (numbers parsed; a torn or partial task is dropped)."""
    from ..experiments.runner import read_rows

    return read_rows(path)


def by_method(rows) -> dict:
    """``{method: [rows]}`` in first-seen order."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r)
    return out


SIZE_KEYS = ("l0", "l2", "tv", "l0_all", "l2_all", "tv_all")


def per_digit(rows, key) -> np.ndarray:
    """One value per digit over its rows (its 9 targets, for a targeted run): the mean, or for a size (``l0``,
    ``l2``, ``tv``, infinite where a target is never reached) the lower median over the digit's rows."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["image"], []).append(float(r[key]))
    if key in SIZE_KEYS:
        return np.array([np.quantile(np.array(v), 0.5, method="lower") for v in groups.values()])
    return np.array([np.mean(v) if np.isfinite(v).all() else np.inf for v in groups.values()])


def format_interval(ci, digits=2) -> str:
    """``(est, lo, hi)`` as ``"0.48 [0.38, 0.58]"`` (:func:`netmoments.prose.format_ci`); a size that is infinite
    (digits never fooled) reads ``"inf"``, an infinite upper end ``"0.50 [0.25, inf]"``."""
    est, lo, hi = ci
    if not math.isfinite(est):
        return "inf"
    if not math.isfinite(hi):
        return format_ci(est, lo, lo, digits).rsplit(",", 1)[0] + ", inf]"
    return format_ci(est, lo, hi, digits)


def method_table(rows, attacks=None, n_boot=2000, budgets=L0_BUDGETS, size="l0", *,
                 methods=None) -> list[dict]:
    """One dict per attack (``attacks``: which, in order; default all, first seen first; formerly ``methods=``,
    still accepted with a ``DeprecationWarning``; the dict's ``method`` key is the rows' attack name): n digits,
    mean expected success, its 10 % quantile over digits, success at each ``size`` budget (``"l0"``, ``"l2"`` or
    ``"tv"``, with the matching ``budgets``), median size at which a digit is fooled, SSIM, diversity, seconds and passes per digit, each an ``(estimate, low, high)`` bootstrap interval
    over digits."""
    attacks = renamed("method_table", "methods", "attacks", methods, attacks, None)
    groups = by_method(rows)
    attacks = attacks or list(groups)
    table = []
    for name in attacks:
        if name not in groups:
            continue
        g = groups[name]
        entry = dict(method=name, n=len({r["image"] for r in g}))
        entry["success"] = bootstrap_ci(per_digit(g, "success"), "mean", n_boot)
        entry["success_q10"] = bootstrap_ci(per_digit(g, "success"), 0.1, n_boot)
        for b in budgets:
            key = f"success_{size}_{b:g}"  # the CSV's column names (metrics.ImageMetrics.rows)
            if key in g[0]:
                entry[key] = bootstrap_ci(per_digit(g, key), "mean", n_boot)
        entry[size] = bootstrap_ci(per_digit(g, size), "median", n_boot)
        for key in ("l2", "tv"):
            entry[key] = bootstrap_ci(per_digit(g, key), "median", n_boot)
        for key in ("ssim", "diversity", "support_jaccard", "time_s", "forward", "backward"):
            values = per_digit(g, key)
            entry[key] = bootstrap_ci(values, "mean", n_boot) if np.isfinite(values).all() else (np.nan,) * 3
        table.append(entry)
    return table


def paired_difference(rows, method_a, method_b, key, n_boot=2000):
    """Per-digit ``key`` of ``method_a`` minus that of ``method_b`` on the digits both attacked: ``(mean, lo, hi)``,
    a 95 % percentile bootstrap over digits (the pairing removes the digit-to-digit spread from the comparison).

    Digits where either value is infinite (a size for a digit never fooled) are left out; a targeted run's digit
    value is its mean over targets (:func:`per_digit`). Raises ``ValueError`` when the two share no finite digit.
    """
    def values(method):
        g = [r for r in rows if r["method"] == method]
        digits = list(dict.fromkeys(r["image"] for r in g))
        return dict(zip(digits, per_digit(g, key)))

    a, b = values(method_a), values(method_b)
    shared = [d for d in a if d in b and np.isfinite(a[d]) and np.isfinite(b[d])]
    if not shared:
        raise ValueError(f"{method_a!r} and {method_b!r} share no digit with a finite {key!r}")
    return bootstrap_ci(np.array([a[d] - b[d] for d in shared]), "mean", n_boot)


def compare(ci, higher="higher", lower="lower", same="not distinguishable", digits=2) -> str:
    """Words for a paired difference ``(est, lo, hi)``: ``higher`` when its interval lies above 0, ``lower``
    when below, else ``same``; followed by the interval, e.g. ``"higher (+0.39 [0.31, 0.47])"``."""
    est, lo, hi = ci
    word = {1: higher, -1: lower, 0: same}[interval_sign(lo, hi)]
    fmt = f"{{:+.{digits}f}} [{{:.{digits}f}}, {{:.{digits}f}}]"
    return f"{word} ({fmt.format(est, lo, hi)})"


def cost_ratio(rows, attack="gauss-sparse", n_boot=2000, *, method=None):
    """``attack``'s time per digit over the 100-step-PGD yardstick timed on the same chunk: ``(est, lo, hi)`` of
    the ratio of means, bootstrapped over chunks (a chunk's digits share one timing). ``attack`` (the rows'
    ``"method"`` column) was ``method=``, still accepted with a ``DeprecationWarning``."""
    attack = renamed("cost_ratio", "method", "attack", method, attack, "gauss-sparse")
    g = [r for r in rows if r["method"] == attack]
    chunks: dict = {}
    for r in g:
        chunks.setdefault(r["task"], (float(r["time_s"]), float(r["yardstick_s"])))
    ours = np.array([c[0] for c in chunks.values()])
    yard = np.array([c[1] for c in chunks.values()])
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ours), (n_boot, len(ours)))
    boots = ours[idx].mean(1) / yard[idx].mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(ours.mean() / yard.mean()), float(lo), float(hi)


def calibration(rows, attack="gauss-sparse", bins=(0.0, 0.5, 0.9, 0.99, 0.999, 1.0), *, method=None):
    """Predicted ``Phi(-r)`` of the surrogate against Monte Carlo success on the real network, per digit of
    ``attack`` (the rows' ``"method"`` column; formerly ``method=``, still accepted with a ``DeprecationWarning``),
    and binned means: returns ``dict(pred, mc, margin_z, bins=[(lo, hi, n, mean pred, mean mc)])``."""
    attack = renamed("calibration", "method", "attack", method, attack, "gauss-sparse")
    g = [r for r in rows if r["method"] == attack and math.isfinite(float(r["pred_success"]))]
    pred = np.array([float(r["pred_success"]) for r in g])
    mc = np.array([float(r["mc_success_kstar"]) for r in g])
    z = np.array([float(r["margin_z"]) for r in g])
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (pred >= lo) & ((pred < hi) if hi < 1 else (pred <= hi))
        if sel.any():
            out.append((lo, hi, int(sel.sum()), float(pred[sel].mean()), float(mc[sel].mean())))
    return dict(pred=pred, mc=mc, margin_z=z, sur_mean=np.array([float(r["sur_mean"]) for r in g]),
                mc_mean=np.array([float(r["mc_mean"]) for r in g]), bins=out)


# ----------------------------------------------------------------------------------------------- figures
# The figures live in netmoments.viz.ch09_attacks (which imports matplotlib); these keep the old names, so
# ``report.plot_...`` still draws and importing this module still loads no matplotlib.


def plot_budget_curves(table, budgets=L0_BUDGETS, ax=None, labels=None):
    """:func:`netmoments.viz.plot_budget_curves`: success at each L0 budget for every method of :func:`method_table`."""
    from .. import viz

    return viz.plot_budget_curves(table, budgets=budgets, ax=ax, labels=labels)


def plot_calibration(cal, ax=None):
    """:func:`netmoments.viz.plot_calibration`: :func:`calibration`'s surrogate against Monte Carlo, per digit."""
    from .. import viz

    return viz.plot_calibration(cal, ax=ax)


def plot_draws_and_points(clean, columns, titles, row_labels=None):
    """:func:`netmoments.viz.plot_draws_and_points`: the clean digits, then one column per attack."""
    from .. import viz

    return viz.plot_draws_and_points(clean, columns, titles, row_labels=row_labels)
