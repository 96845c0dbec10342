"""Chapter 4, network moments: the figures."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import (HYBRID_COLOR, INPUT_COLOR, MC_COLOR, OUTPUT_COLOR, SERIES_COLOR, _new_axes, gaussian_ellipse,
                      to_numpy)

__all__ = ["plot_z_scores", "plot_relative_error_sweep", "plot_network_covariance"]

def plot_z_scores(labels, z_by_method: dict, threshold: float, ax: Axes | None = None) -> Figure:
    """``|analytic - MC| / SE`` per quantity (log scale) for one or more analytic methods, against a threshold.

    Args:
        labels: the ``K`` quantity names (x tick labels).
        z_by_method: ``{method name: (K,) scores}``; the first is drawn as dots, the others as crosses.
        threshold: the Bonferroni critical value, drawn as a horizontal line.
    """
    fig, ax = _new_axes(ax, (max(6.0, 0.42 * len(labels) + 2.0), 3.8))
    pos = np.arange(len(labels))
    colors = (OUTPUT_COLOR, HYBRID_COLOR, SERIES_COLOR, INPUT_COLOR)
    floor = 1e-3
    for k, (name, z) in enumerate(z_by_method.items()):
        z = np.clip(to_numpy(z), floor, None)
        ax.semilogy(pos, z, "o" if k == 0 else "X", color=colors[k % len(colors)], ms=7 if k == 0 else 8,
                    ls="none", label=name)
    ax.axhline(threshold, color=MC_COLOR, lw=1.2, ls="--", label=f"Bonferroni threshold {threshold:.2f}")
    ax.set_xticks(pos, labels, rotation=60, fontsize=8)
    ax.set_ylabel("|analytic − MC| / SE")
    ax.grid(alpha=0.3, which="both", axis="y")
    ax.legend(fontsize=8)
    return fig


def plot_relative_error_sweep(
    x, curves: dict, mc_error=None, mc_band=None, xlabel: str = "", ylabel: str = "relative error",
    title: str = "", floor: float = 1e-4, styles: dict | None = None, ax: Axes | None = None,
) -> Figure:
    """Relative errors of analytic approximations along a sweep (log scale), with the Monte Carlo noise level.

    Args:
        x: ``(K,)`` sweep values.
        curves: ``{name: (K,) relative errors}``, drawn as lines.
        mc_error: optional ``(K,)`` relative deviation of a Monte Carlo estimate from the exact value (points).
        mc_band: optional ``(K,)`` Monte Carlo noise level (e.g. 2 SE relative to the exact value), shaded.
        xlabel, ylabel, title: labels.
        floor: bottom of the log axis; smaller values (an exact match, say) are drawn on it.
        styles: optional ``{name: (colour, linestyle)}`` so that one method looks the same in several figures.
        ax: draw here instead of a new figure.
    """
    fig, ax = _new_axes(ax, (6.4, 4.0))
    x = to_numpy(x)
    if mc_band is not None:
        ax.fill_between(x, floor, np.clip(to_numpy(mc_band), floor, None), color=MC_COLOR, alpha=0.12, lw=0,
                        label="Monte Carlo noise (2 SE)")
    colors = (HYBRID_COLOR, SERIES_COLOR, INPUT_COLOR, OUTPUT_COLOR)
    linestyles = ("-", "--", "-.", ":")
    for k, (name, values) in enumerate(curves.items()):
        color, style = (styles or {}).get(name, (colors[k % 4], linestyles[k % 4]))
        ax.semilogy(x, np.clip(to_numpy(values), floor, None), color=color, ls=style, lw=2, label=name)
    if mc_error is not None:
        ax.semilogy(x, np.clip(to_numpy(mc_error), floor, None), "o", ms=4, color=MC_COLOR,
                    label="Monte Carlo vs exact")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def _annotated_heatmap(ax: Axes, matrix: np.ndarray, cmap: str, limit: float, title: str):
    image = ax.imshow(matrix, cmap=cmap, vmin=-limit, vmax=limit)
    for (a, b), value in np.ndenumerate(matrix):
        ax.text(b, a, f"{value:.3f}", ha="center", va="center", fontsize=8,
                color="white" if abs(value) > 0.6 * limit else "black")
    ticks = np.arange(matrix.shape[0])
    ax.set_xticks(ticks, [f"$g_{k + 1}$" for k in ticks])
    ax.set_yticks(ticks, [f"$g_{k + 1}$" for k in ticks])
    ax.set_title(title, fontsize=10)
    return image


def plot_network_covariance(summary: dict, max_points: int = 3000) -> Figure:
    """Three panels for an Affine-ReLU-Affine network with Gaussian input: draws of the first two outputs with the
    2-sigma ellipses of the exact and the hybrid covariance; the exact output covariance; the hybrid's error.

    Args:
        summary: the dict of :func:`netmoments.widgets.network_covariance_summary`.
        max_points: at most this many draws are scattered.
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), layout="constrained", width_ratios=(1.2, 1, 1))
    ax = axes[0]
    pts = to_numpy(summary["samples"])[:max_points, :2]
    ax.scatter(pts[:, 0], pts[:, 1], s=4, color=INPUT_COLOR, alpha=0.25, lw=0, label="draws of $g(x)$")
    mean = to_numpy(summary["mean"])[:2]
    for cov, color, style, name in ((summary["cov_exact"], OUTPUT_COLOR, "-", "exact"),
                                    (summary["cov_hybrid"], HYBRID_COLOR, "--", "hybrid (NM18)")):
        ellipse = gaussian_ellipse(mean, to_numpy(cov)[:2, :2], k=2.0)
        ax.plot(ellipse[:, 0], ellipse[:, 1], color=color, ls=style, lw=2, label=f"2-sigma ellipse, {name}")
    ax.plot(*mean, marker="+", color=MC_COLOR, ms=12, mew=2)
    ax.set_xlabel("$g_1$")
    ax.set_ylabel("$g_2$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("two outputs", fontsize=10)
    exact = to_numpy(summary["cov_exact"])
    error = to_numpy(summary["cov_hybrid"]) - exact
    limit = float(np.abs(exact).max()) or 1.0
    image = _annotated_heatmap(axes[1], exact, "RdBu_r", limit, r"exact $\mathrm{Cov}[g]$")
    fig.colorbar(image, ax=axes[1], shrink=0.8)
    image = _annotated_heatmap(axes[2], error, "PuOr_r", limit,
                               f"hybrid − exact (relative error {summary['error_hybrid']:.3f})")
    fig.colorbar(image, ax=axes[2], shrink=0.8)
    return fig
