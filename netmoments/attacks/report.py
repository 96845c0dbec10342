"""Tables and plots from the per-image rows of :mod:`netmoments.experiments.attack_suite` (chapter 8).

Every interval is a percentile bootstrap over *digits* (:func:`netmoments.attacks.metrics.bootstrap_ci`); a
targeted run has one row per (digit, target) and is resampled by digit (its per-digit mean over targets).
"""
from __future__ import annotations

import math

import numpy as np

from .metrics import L0_BUDGETS, bootstrap_ci

__all__ = ["load_rows", "by_method", "method_table", "format_interval", "cost_ratio", "calibration",
           "per_digit"]


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


def per_digit(rows, key) -> np.ndarray:
    """One value per digit: ``key`` averaged over a digit's rows (its targets, for a targeted run)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["image"], []).append(float(r[key]))
    return np.array([np.mean(v) if np.isfinite(v).all() else np.inf for v in groups.values()])


def format_interval(ci, digits=2) -> str:
    est, lo, hi = ci
    if not math.isfinite(est):
        return "inf"
    fmt = f"{{:.{digits}f}}"
    hi_txt = "inf" if not math.isfinite(hi) else fmt.format(hi)
    return f"{fmt.format(est)} [{fmt.format(lo)}, {hi_txt}]"


def method_table(rows, methods=None, n_boot=2000, budgets=L0_BUDGETS, size="l0") -> list[dict]:
    """One dict per method: n digits, mean expected success, its 10 % quantile over digits, success at each
    L0 budget, median size at which a digit is fooled, SSIM, diversity, seconds and passes per digit, each an
    ``(estimate, low, high)`` bootstrap interval over digits."""
    groups = by_method(rows)
    methods = methods or list(groups)
    table = []
    for name in methods:
        if name not in groups:
            continue
        g = groups[name]
        entry = dict(method=name, n=len({r["image"] for r in g}))
        entry["success"] = bootstrap_ci(per_digit(g, "success"), "mean", n_boot)
        entry["success_q10"] = bootstrap_ci(per_digit(g, "success"), 0.1, n_boot)
        for b in budgets:
            key = f"success_l0_{b}"
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


def cost_ratio(rows, method="gauss-sparse", n_boot=2000):
    """Our time per digit over the 100-step-PGD yardstick timed on the same chunk: ``(est, lo, hi)`` of the
    ratio of means, bootstrapped over chunks (a chunk's digits share one timing)."""
    g = [r for r in rows if r["method"] == method]
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


def calibration(rows, method="gauss-sparse", bins=(0.0, 0.5, 0.9, 0.99, 0.999, 1.0)):
    """Predicted ``Phi(-r)`` of the surrogate against Monte Carlo success on the real network, per digit, and
    binned means: returns ``dict(pred, mc, margin_z, bins=[(lo, hi, n, mean pred, mean mc)])``."""
    g = [r for r in rows if r["method"] == method and math.isfinite(float(r["pred_success"]))]
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
