"""Tables and plots from the per-image rows of :mod:`netmoments.experiments.attack_suite` (chapter 8).

Every interval is a percentile bootstrap over *digits* (:func:`netmoments.attacks.metrics.bootstrap_ci`); a
targeted run has one row per (digit, target) and is resampled by digit (its per-digit mean over targets).
"""
from __future__ import annotations

import math

import numpy as np

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


def method_table(rows, methods=None, n_boot=2000, budgets=L0_BUDGETS, size="l0") -> list[dict]:
    """One dict per method: n digits, mean expected success, its 10 % quantile over digits, success at each
    ``size`` budget (``"l0"``, ``"l2"`` or ``"tv"``, with the matching ``budgets``), median size at which a digit is fooled, SSIM, diversity, seconds and passes per digit, each an
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


# ----------------------------------------------------------------------------------------------- figures


def plot_budget_curves(table, budgets=L0_BUDGETS, ax=None, labels=None):
    """Expected success at each L0 budget (mean over digits, 95 % bootstrap band) for every method in ``table``
    (from :func:`method_table`)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.8))
    for entry in table:
        keys = [f"success_l0_{b}" for b in budgets]
        if not all(k in entry for k in keys):
            continue
        est = np.array([entry[k][0] for k in keys])
        lo = np.array([entry[k][1] for k in keys])
        hi = np.array([entry[k][2] for k in keys])
        name = (labels or {}).get(entry["method"], entry["method"])
        line, = ax.plot(budgets, est, marker="o", ms=3, label=f"{name} (n={entry['n']})")
        ax.fill_between(budgets, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("pixel budget k (changed pixels of the attacked image, noise included)")
    ax.set_ylabel("expected success per digit")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return ax.figure


def plot_calibration(cal, ax=None):
    """Surrogate ``Phi(-r)`` against Monte Carlo success of the same margin on the real network, per digit."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    else:
        axes = ax
    a, b = axes
    a.scatter(cal["pred"], cal["mc"], s=10, alpha=0.6)
    for lo, hi, n, p, m in cal["bins"]:
        a.plot([p], [m], "s", color="k", ms=5)
    a.plot([0, 1], [0, 1], "k--", lw=0.8)
    a.set_xlabel(r"surrogate $\Phi(-\mathbb{E}[M]/\mathrm{sd}[M])$")
    a.set_ylabel("Monte Carlo P(M < 0), real LeNet")
    a.set_title("calibration (squares: bin means)", fontsize=9)
    b.scatter(cal["mc_mean"], cal["sur_mean"], s=10, alpha=0.6)
    lim = [min(cal["mc_mean"].min(), cal["sur_mean"].min()), max(cal["mc_mean"].max(), cal["sur_mean"].max())]
    b.plot(lim, lim, "k--", lw=0.8)
    b.set_xlabel("Monte Carlo E[M], real LeNet")
    b.set_ylabel("surrogate E[M]")
    b.set_title("margin at the final distribution", fontsize=9)
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].figure.tight_layout()
    return axes[0].figure


def plot_draws_and_points(clean, columns, titles, row_labels=None):
    """A grid: one row per digit; column 0 the clean digit, then one column per entry of ``columns``
    (``(B, 1, H, W)`` tensors or arrays: our draws, point attacks), titled by ``titles``."""
    import matplotlib.pyplot as plt

    bsz = clean.shape[0]
    ncol = 1 + len(columns)
    fig, axes = plt.subplots(bsz, ncol, figsize=(1.25 * ncol, 1.35 * bsz), squeeze=False)
    for i in range(bsz):
        images = [clean[i]] + [c[i] for c in columns]
        for j, img in enumerate(images):
            ax = axes[i, j]
            ax.imshow(np.asarray(img).reshape(clean.shape[-2], clean.shape[-1]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title((["clean"] + list(titles))[j], fontsize=7)
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
    fig.tight_layout()
    return fig
