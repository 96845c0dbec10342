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

__all__ = ["load_rows", "by_method", "method_table", "markdown_table", "format_interval", "cost_ratio",
           "calibration", "per_digit", "paired_difference", "compare", "brier_score", "reliability_edges",
           "expected_calibration_error", "reliability_table", "goal_calibration"]


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


# ----------------------------------------------------------------------------------------------- reliability
# The calibration suite (netmoments.experiments.attack_calibration) asks the attack for goals 0.5, 0.7 and 0.9,
# so its predictions spread; these functions judge them. A digit is the unit throughout: its observed rate (on
# its own draws) is one number, and every interval resamples digits, never pooled draws.


def _check_probabilities(name, values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-digit probabilities, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"{name} must lie in [0, 1] (finite), got values from {arr.min()!r} to {arr.max()!r}")
    return arr


def brier_score(pred, observed) -> float:
    """Brier score of per-digit predictions ``pred`` ``(n,)`` against binary draws whose per-digit success rates
    are ``observed`` ``(n,)``: the mean over digits of ``E_draws[(p - y)^2] = (p - r)^2 + r (1 - r)``.

    The second term is the draws' own spread, which no prediction can remove; a perfectly calibrated ``p = r``
    scores ``mean(r (1 - r))``. Raises ``ValueError`` unless both are 1-D, equally long and in ``[0, 1]``.
    """
    p, r = _check_probabilities("pred", pred), _check_probabilities("observed", observed)
    if p.shape != r.shape:
        raise ValueError(f"pred and observed must have the same length, got {p.size} and {r.size}")
    return float(np.mean((p - r) ** 2 + r * (1 - r)))


def reliability_edges(pred, n_bins: int = 5) -> np.ndarray:
    """Bin edges ``(<= n_bins + 1,)`` over ``[0, 1]`` holding about equally many of the predictions ``pred``
    (quantiles; repeated quantiles merged), so that every bin has enough digits to be judged."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    p = _check_probabilities("pred", pred)
    inner = np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.unique(np.concatenate([[0.0], inner, [1.0]]))


def _bin_index(pred, edges) -> np.ndarray:
    # bins are [lo, hi), the last one closed
    return np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, len(edges) - 2)


def expected_calibration_error(pred, observed, edges) -> float:
    """``sum_b (n_b / n) |mean pred_b - mean observed_b|`` over the bins ``edges`` of the predictions (digits
    weigh equally; ``observed`` is each digit's success rate). Raises ``ValueError`` on bad inputs."""
    p, r = _check_probabilities("pred", pred), _check_probabilities("observed", observed)
    if p.shape != r.shape:
        raise ValueError(f"pred and observed must have the same length, got {p.size} and {r.size}")
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or (np.diff(edges) <= 0).any():
        raise ValueError(f"edges must be increasing, at least two of them, got {edges!r}")
    b = _bin_index(p, edges)
    n_b = np.bincount(b, minlength=edges.size - 1)
    gap = np.bincount(b, weights=p - r, minlength=edges.size - 1)  # sum of (p - r) per bin
    return float(np.abs(gap).sum() / p.size) if n_b.sum() else float("nan")


def reliability_table(pred, observed, edges=None, n_bins: int = 5, n_boot: int = 2000, seed: int = 0) -> dict:
    """The reliability of per-digit predictions ``pred`` ``(n,)`` against per-digit observed success rates
    ``observed`` ``(n,)`` (floats in ``[0, 1]``).

    Returns ``dict(n, edges, bins, brier, ece)``: ``bins`` is a list of dicts, one per non-empty bin of ``edges``
    (default :func:`reliability_edges` with ``n_bins``), with ``lo``, ``hi``, ``n`` (digits), ``pred`` and
    ``observed`` (means over its digits), ``wilson`` (a 95 % Wilson interval for the bin's success rate, each digit
    counting once with its rate as a fractional success) and ``boot`` (a bootstrap interval of the mean observed
    rate over the bin's digits, ``(est, lo, hi)``); ``brier`` (:func:`brier_score`) and ``ece``
    (:func:`expected_calibration_error` on the same edges) are ``(est, lo, hi)`` bootstrap intervals over digits.
    """
    from ..stats import wilson_interval

    p, r = _check_probabilities("pred", pred), _check_probabilities("observed", observed)
    if p.shape != r.shape:
        raise ValueError(f"pred and observed must have the same length, got {p.size} and {r.size}")
    edges = reliability_edges(p, n_bins) if edges is None else np.asarray(edges, dtype=np.float64)
    b = _bin_index(p, edges)
    bins = []
    for k in range(edges.size - 1):
        sel = b == k
        if not sel.any():
            continue
        n_k = int(sel.sum())
        bins.append(dict(lo=float(edges[k]), hi=float(edges[k + 1]), n=n_k, pred=float(p[sel].mean()),
                         observed=float(r[sel].mean()), wilson=wilson_interval(float(r[sel].sum()), n_k),
                         boot=bootstrap_ci(r[sel], "mean", n_boot, seed=seed)))
    idx = np.arange(p.size, dtype=np.float64)
    brier = bootstrap_ci(idx, lambda i: brier_score(p[i.astype(int)], r[i.astype(int)]), n_boot, seed=seed)
    ece = bootstrap_ci(idx, lambda i: expected_calibration_error(p[i.astype(int)], r[i.astype(int)], edges),
                       n_boot, seed=seed)
    return dict(n=int(p.size), edges=edges, bins=bins, brier=brier, ece=ece)


def goal_calibration(rows, attack="gauss-sparse", observed="mc_success_kstar", n_bins: int = 5,
                     n_boot: int = 2000) -> dict:
    """:func:`reliability_table` per ``goal`` of the calibration suite's rows of ``attack`` (the ``"method"``
    column): ``{goal: table}`` in increasing goal order, each table with ``goal`` added.

    ``observed`` is the rows' observed column: ``"mc_success_kstar"`` (the default: the event the surrogate
    predicts, ``M_k* < 0``) or ``"mc_success_any"`` (any misclassification, never below it).
    Raises ``ValueError`` for an unknown ``observed`` or when no row belongs to ``attack``.
    """
    if observed not in ("mc_success_kstar", "mc_success_any"):
        raise ValueError(f"observed must be 'mc_success_kstar' or 'mc_success_any', got {observed!r}")
    g = [r for r in rows if r["method"] == attack]
    if not g:
        raise ValueError(f"no row of attack {attack!r}")
    out = {}
    for goal in sorted({float(r["goal"]) for r in g}):
        sel = [r for r in g if float(r["goal"]) == goal]
        table = reliability_table([float(r["pred_success"]) for r in sel], [float(r[observed]) for r in sel],
                                  n_bins=n_bins, n_boot=n_boot)
        table["goal"] = goal
        out[goal] = table
    return out


def markdown_table(table, columns, labels=None) -> str:
    """A Markdown table of :func:`method_table`'s entries: one row per entry, one column per ``(header, key,
    digits)`` of ``columns``, where ``key`` names an ``(estimate, low, high)`` interval of the entry (shown as
    ``estimate [low, high]`` with ``digits`` decimals; ``digits=None`` shows the estimate alone, rounded to an
    integer) or is a callable of the entry returning the cell's text. ``labels`` maps attack names to the first
    column's text (default: the name itself, in backquotes)."""
    if not columns:
        raise ValueError("columns must name at least one column")
    labels = labels or {}
    head = "| attack | " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    lines = [head, rule]
    for entry in table:
        cells = [labels.get(entry["method"], f"`{entry['method']}`")]
        for _, key, digits in columns:
            if callable(key):
                cells.append(str(key(entry)))
            elif digits is None:
                cells.append(f"{entry[key][0]:.0f}")
            else:
                cells.append(format_interval(entry[key], digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

