"""Chapter 7, how tight is it: the figures."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import HYBRID_COLOR, INPUT_COLOR, MC_COLOR, OUTPUT_COLOR, SERIES_COLOR, _new_axes, to_numpy

__all__ = ["plot_intervals", "plot_error_split", "plot_z_distribution"]

def plot_intervals(groups: dict, xlabel: str, reference: float | None = None, log: bool = False,
                   ax: Axes | None = None) -> Figure:  # fmt: skip
    """A forest plot: one row per ``(label, estimate, low, high)``, in titled groups.

    Args:
        groups: ``{group title: [(label, estimate, low, high), ...]}`` (intervals, e.g. bootstrap over images).
        xlabel: what the estimates are.
        reference: an x value to mark with a dashed line (e.g. 0 for paired differences).
        log: logarithmic x axis.
    """
    rows = [(title, entry) for title, entries in groups.items() for entry in entries]
    if not rows:
        raise ValueError("groups holds no intervals")
    fig, ax = _new_axes(ax, (6.4, 0.32 * len(rows) + 0.6 * len(groups) + 0.8))
    y, ticks, labels = 0.0, [], []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for g, (title, entries) in enumerate(groups.items()):
        for label, est, lo, hi in entries:
            ax.errorbar([est], [y], xerr=[[est - lo], [hi - est]], fmt="o", color=colors[g % len(colors)],
                        capsize=3, markersize=4)  # fmt: skip
            ticks.append(y)
            labels.append(f"{title}: {label}" if title else label)
            y -= 1.0
        y -= 0.6
    ax.set_yticks(ticks, labels, fontsize=8)
    if reference is not None:
        ax.axvline(reference, color="#888888", linestyle="--", linewidth=1)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_error_split(per_image: dict, title: str | None = None, ax: Axes | None = None) -> Figure:
    """Per-image variance error split into its linearization and formula parts (relative to the MC variance).

    Args:
        per_image: ``{"linearization": (n,), "formula": (n,), "mc_rel_se": (n,)}`` logit-averaged per image:
            ``|MC[f] - MC[g]| / MC var``, ``|closed form - MC[g]| / MC var`` and the MC relative SE of the variance.
    """
    lin = np.asarray(per_image["linearization"], dtype=float)
    formula = np.asarray(per_image["formula"], dtype=float)
    fig, ax = _new_axes(ax, (4.8, 3.6))
    lo = max(1e-5, min(lin.min(), formula.min()) / 2)
    hi = max(lin.max(), formula.max()) * 2
    ax.loglog(lin, formula, "o", markersize=3, alpha=0.6, color=INPUT_COLOR)
    ax.plot([lo, hi], [lo, hi], color="#888888", linestyle="--", linewidth=1, label="equal parts")
    if "mc_rel_se" in per_image:
        se = float(np.median(per_image["mc_rel_se"]))
        ax.axhline(se, color=OUTPUT_COLOR, linewidth=1, label=f"MC relative SE of the variance ({se:.3f})")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("linearization part  |MC[f] − MC[g]| / var")
    ax.set_ylabel("formula part  |closed form − MC[g]| / var")
    ax.legend(fontsize=7, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_z_distribution(z_by_name: dict, threshold: float | None = None, limit: float | None = None,
                        bins: int = 60, ax: Axes | None = None) -> Figure:  # fmt: skip
    """Histograms of signed ``Delta / SE`` values against the standard normal density they follow when ``Delta`` is
    pure Monte Carlo noise (log density, so the tails, where an error would show, are visible).

    Args:
        z_by_name: ``{name: array of Delta / SE}`` (any shape; NaNs are dropped), one histogram each.
        threshold: a critical value (e.g. Bonferroni's) drawn at ``+-threshold``.
        limit: the x range ``[-limit, limit]`` (default: 5 % beyond the largest ``|z|``, the threshold and 5);
            values beyond it are counted in the outermost bins.
        bins: number of bins.
    """
    values = {name: to_numpy(z).ravel() for name, z in z_by_name.items()}
    values = {name: v[np.isfinite(v)] for name, v in values.items()}
    if not values or any(v.size == 0 for v in values.values()):
        raise ValueError("z_by_name must hold at least one non-empty array of finite values per name")
    if limit is None:
        limit = 1.05 * max(5.0, max(float(np.abs(v).max()) for v in values.values()), threshold or 0.0)
    edges = np.linspace(-limit, limit, bins + 1)
    width = edges[1] - edges[0]
    fig, ax = _new_axes(ax, (6.4, 3.8))
    colors = (INPUT_COLOR, OUTPUT_COLOR, HYBRID_COLOR, SERIES_COLOR)
    smallest = np.inf
    for k, (name, v) in enumerate(values.items()):
        counts, _ = np.histogram(np.clip(v, -limit, limit), edges)
        density = counts / (v.size * width)
        smallest = min(smallest, 1.0 / (v.size * width))
        ax.stairs(np.where(counts > 0, density, np.nan), edges, color=colors[k % len(colors)], linewidth=1.4,
                  label=f"{name} ({v.size:,})")
    grid = np.linspace(-limit, limit, 400)
    ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color=MC_COLOR, linestyle="--", linewidth=1,
            label="standard normal")
    if threshold is not None:
        for sign in (-1, 1):
            ax.axvline(sign * threshold, color="#888888", linewidth=1,
                       label=f"threshold ±{threshold:.2f}" if sign > 0 else None)
    ax.set_yscale("log")
    ax.set_ylim(smallest / 3, 1.0)
    ax.set_xlim(-limit, limit)
    ax.set_xlabel("Δ / SE")
    ax.set_ylabel("density")
    ax.legend(fontsize=7, loc="upper right")
    return fig
