"""Chapter 3, two ReLUs and the cross moment: the figures."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import INPUT_COLOR, MC_COLOR, OUTPUT_COLOR, _new_axes, to_numpy

__all__ = ["plot_relu_pair", "plot_cross_covariance_profiles", "plot_zero_mean_error_maps"]

ZERO_MEAN_COLOR = "#756bb1"


def plot_relu_pair(summary: dict, z: float = 2.0, max_points: int = 4000) -> Figure:
    """Two panels for a Gaussian pair through a ReLU: draws of ``(q_i, q_j)`` (left) and ``Cov[q_i, q_j]`` three
    ways (right): exact, Monte Carlo with ``+- z`` standard errors, and NM18's zero-mean formula.

    Args:
        summary: the dict of :func:`netmoments.widgets.relu_pair_summary`.
        z: half-width of the Monte Carlo error bar in standard errors.
        max_points: at most this many draws are scattered.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained", width_ratios=(1.25, 1))
    ax = axes[0]
    pts = to_numpy(summary["samples"])[:max_points]
    both = (pts[:, 0] > 0) & (pts[:, 1] > 0)
    ax.scatter(pts[both, 0], pts[both, 1], s=4, color=OUTPUT_COLOR, alpha=0.3, lw=0,
               label=f"both on (MC {summary['mc_p_both_on']:.3f}, $\\Phi_2$ = {summary['p_both_on']:.3f})")
    ax.scatter(pts[~both, 0], pts[~both, 1], s=6, color=INPUT_COLOR, alpha=0.3, lw=0,
               label="at least one unit off (on an axis)")
    ax.set_xlabel(r"$q_i = \max(y_i, 0)$")
    ax.set_ylabel(r"$q_j = \max(y_j, 0)$")
    ax.set_title(f"{len(to_numpy(summary['samples']))} draws of $(q_i, q_j)$ (first {len(pts)} shown)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[1]
    exact, mc, mc_se, old = summary["cov_exact"], summary["mc_cov"], summary["mc_cov_se"], summary["cov_zero_mean"]
    ax.plot([0], [exact], "D", color=OUTPUT_COLOR, ms=9, label=f"exact (NM20): {exact:.4f}")
    ax.errorbar([1], [mc], yerr=[z * mc_se], fmt="o", color=MC_COLOR, capsize=5,
                label=f"Monte Carlo: {mc:.4f} $\\pm$ {z:g} SE")
    ax.plot([2], [old], "X", color=ZERO_MEAN_COLOR, ms=10, label=f"zero-mean (NM18): {old:.4f}")
    ax.axhline(exact, color=OUTPUT_COLOR, lw=0.8, ls=":")
    ax.axhline(0.0, color=MC_COLOR, lw=0.6)
    ax.set_xticks([0, 1, 2], ["exact", "Monte Carlo", "zero-mean"])
    ax.set_xlim(-0.6, 2.6)
    values = [exact, mc - z * mc_se, mc + z * mc_se, old, 0.0]
    span = max(values) - min(values)
    ax.set_ylim(min(values) - 0.25 * span - 1e-6, max(values) + 0.45 * span + 1e-6)
    ax.set_title(r"$\mathrm{Cov}[q_i, q_j]$, error of the zero-mean formula: " + f"{summary['cov_error']:+.4f}",
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_zero_mean_error_maps(h, rhos, errors, levels=(-0.1, -0.03, 0.03, 0.1)) -> Figure:
    """One map per correlation of ``error(h_i, h_j)``, NM18's zero-mean covariance minus the exact one in units of
    ``sigma_i sigma_j``, on a shared diverging colour scale, with the zero contour and a few labelled levels.

    Args:
        h: ``(K,)`` grid of standardised means, used for both axes.
        rhos: the ``R`` correlations, one panel each.
        errors: ``(R, K, K)``, ``errors[r, a, b]`` at ``h_i = h[a]``, ``h_j = h[b]``.
        levels: extra contour levels drawn and labelled.
    """
    h, errors = to_numpy(h), to_numpy(errors)
    limit = float(np.abs(errors).max())
    fig, axes = plt.subplots(1, len(rhos), figsize=(3.2 * len(rhos) + 1.0, 3.6), layout="constrained",
                             sharey=True)
    axes = np.atleast_1d(axes)
    extent = (h[0], h[-1], h[0], h[-1])
    for ax, rho, err in zip(axes, rhos, errors):
        image = ax.imshow(err.T, origin="lower", extent=extent, cmap="RdBu_r", vmin=-limit, vmax=limit,
                          aspect="equal")
        if np.abs(err).max() > 1e-9 * max(limit, 1e-300):
            ax.contour(h, h, err.T, levels=[0.0], colors=MC_COLOR, linewidths=1.2)
            lines = ax.contour(h, h, err.T, levels=sorted(levels), colors=MC_COLOR, linewidths=0.6,
                               linestyles="--")
            ax.clabel(lines, fontsize=7, fmt="%g")
        else:
            # an identically zero map (rho = 0): contours of round-off noise would be meaningless
            ax.text(0.5, 0.75, "zero everywhere", transform=ax.transAxes, ha="center", va="center", fontsize=9)
        ax.plot([0], [0], marker="+", color=MC_COLOR, ms=10, mew=2)
        ax.set_title(rf"$\rho$ = {rho:g}: max |error| = {np.abs(err).max():.3f}", fontsize=10)
        ax.set_xlabel(r"$h_i = \mu_i / \sigma_i$")
    axes[0].set_ylabel(r"$h_j = \mu_j / \sigma_j$")
    fig.colorbar(image, ax=list(axes), shrink=0.9,
                 label=r"(zero-mean $-$ exact) $\mathrm{Cov}[q_i, q_j] / (\sigma_i \sigma_j)$")
    return fig


def plot_cross_covariance_profiles(h, rhos, exact, zero_mean, ax: Axes | None = None) -> Figure:
    """``Cov[q_i, q_j] / (sigma_i sigma_j)`` along the diagonal ``h_i = h_j = h``: the exact value as a curve per
    correlation, NM18's zero-mean value (which ignores ``h``) as a dashed line of the same colour, and the two
    limits, ``0`` (both units off) and ``rho`` (both units on, i.e. linear), as dotted lines.

    Args:
        h: ``(K,)`` standardised means.
        rhos: the ``R`` correlations.
        exact: ``(R, K)`` exact scaled covariances.
        zero_mean: ``(R,)`` the zero-mean formula ``c(rho) - 1/(2 pi)``.
    """
    fig, ax = _new_axes(ax, (7.0, 4.2))
    h, exact, zero_mean = to_numpy(h), to_numpy(exact), to_numpy(zero_mean)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(rhos)))
    for rho, ex, old, color in zip(rhos, exact, zero_mean, colors):
        ax.plot(h, ex, color=color, lw=2, label=rf"$\rho$ = {rho:g}")
        ax.axhline(old, color=color, lw=1.2, ls="--")
        ax.axhline(rho, color=color, lw=0.8, ls=":")
    ax.axhline(0.0, color=MC_COLOR, lw=0.8)
    ax.plot([], [], color=MC_COLOR, ls="--", lw=1.2, label="zero-mean formula (NM18)")
    ax.plot([], [], color=MC_COLOR, ls=":", lw=0.8, label=r"both on: $\rho$")
    ax.set_xlabel(r"$h_i = h_j = h$")
    ax.set_ylabel(r"$\mathrm{Cov}[q_i, q_j] / (\sigma_i \sigma_j)$")
    ax.set_title("Exact covariance of two ReLUs as both means move together", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    return fig
