"""Chapter 2, one ReLU of one Gaussian: the figures."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import INPUT_COLOR, MC_COLOR, OUTPUT_COLOR, _new_axes, to_numpy

__all__ = ["plot_rectified_gaussian", "plot_relu_gaussian_check", "plot_relu_moment_sweep", "plot_zero_mean_ratio"]

def plot_rectified_gaussian(
    mu: float, sigma: float, samples=None, analytic=None, monte_carlo=None, ax: Axes | None = None,
    n_bins: int = 60,
) -> Figure:
    """The law of ``max(z, 0)``, ``z ~ N(mu, sigma^2)``: a point mass ``Phi(-mu/sigma)`` at 0 plus the normal
    density on ``(0, inf)``, with a histogram of draws and the means marked.

    Args:
        mu, sigma: the pre-activation's mean and standard deviation (``sigma > 0``).
        samples: optional ``(N,)`` draws of ``max(z, 0)``; the positive ones are histogrammed (normalised by
            ``N``, so bars and curve share a scale) and the fraction at zero is drawn beside the point mass.
        analytic: optional ``(mean, var)`` of ``max(z, 0)`` from the closed form.
        monte_carlo: optional ``(mean, mean_se, var, var_se)`` estimated from draws.
        ax: draw here instead of a new figure.
    """
    fig, ax = _new_axes(ax, (6.4, 4.2))
    if sigma <= 0:
        raise ValueError(f"sigma must be positive to draw a density, got {sigma}")
    top = max(mu + 4.0 * sigma, 1e-3)
    x = np.linspace(0.0, top, 400)
    density = np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))
    p_zero = 0.5 * math.erfc(mu / (sigma * math.sqrt(2.0)))
    if samples is not None:
        s = to_numpy(samples).ravel()
        positive = s[s > 0]
        if positive.size:
            edges = np.linspace(0.0, top, n_bins + 1)
            counts, _ = np.histogram(positive, bins=edges)
            ax.stairs(counts / (s.size * np.diff(edges)), edges, fill=True, color=OUTPUT_COLOR, alpha=0.3,
                      label="draws (density, $q > 0$)")
        frac_zero = float(np.mean(s == 0))
        ax.plot([0.02 * top], [frac_zero], marker="s", color=OUTPUT_COLOR, ms=7, ls="none",
                label=f"draws at 0: {frac_zero:.3f}")
    ax.plot(x, density, color=OUTPUT_COLOR, lw=2, label="normal density on $(0, \\infty)$")
    ax.vlines(0.0, 0.0, p_zero, color=INPUT_COLOR, lw=4, label=rf"point mass $\Phi(-\mu/\sigma)$ = {p_zero:.3f}")
    ax.plot([0.0], [p_zero], marker="o", color=INPUT_COLOR, ms=8)
    if analytic is not None:
        ax.axvline(float(analytic[0]), color=MC_COLOR, lw=1.5, label=f"analytic mean {float(analytic[0]):.4f}")
    if monte_carlo is not None:
        m, m_se = float(monte_carlo[0]), float(monte_carlo[1])
        ax.axvspan(m - 2 * m_se, m + 2 * m_se, color=MC_COLOR, alpha=0.15,
                   label=f"MC mean {m:.4f} $\\pm$ 2 SE")
    ax.set_xlim(-0.05 * top, top)
    ax.set_ylim(0.0, max(p_zero, density.max()) * 1.15)
    ax.set_xlabel(r"$q = \max(z, 0)$")
    ax.set_ylabel("density (mass at 0)")
    title = rf"$z \sim \mathcal{{N}}({mu:.2f}, {sigma:.2f}^2)$"
    if analytic is not None:
        title += f":  E[q] = {float(analytic[0]):.4f}, Var[q] = {float(analytic[1]):.4f}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_relu_gaussian_check(mu: float, sigma: float, summary: dict, z: float = 2.0) -> Figure:
    """Side by side: the law of ``max(z, 0)`` with a histogram of draws (left), and the closed-form mean and
    variance beside their Monte Carlo estimates with ``+- z`` standard-error bars (right).

    Args:
        mu, sigma: the pre-activation's mean and standard deviation.
        summary: the dict of :func:`netmoments.widgets.relu_gaussian_summary` (``mean``, ``var``, ``mc_mean``,
            ``mc_mean_se``, ``mc_var``, ``mc_var_se``, ``samples``).
        z: half-width of the error bars in standard errors.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained", width_ratios=(1.7, 1))
    plot_rectified_gaussian(
        mu, sigma, samples=summary["samples"], analytic=(summary["mean"], summary["var"]),
        monte_carlo=(summary["mc_mean"], summary["mc_mean_se"], summary["mc_var"], summary["mc_var_se"]),
        ax=axes[0],
    )
    ax = axes[1]
    names = (r"$\mathbb{E}[q]$", r"$\mathrm{Var}[q]$")
    exact = (summary["mean"], summary["var"])
    est = (summary["mc_mean"], summary["mc_var"])
    se = (summary["mc_mean_se"], summary["mc_var_se"])
    pos = np.arange(2)
    ax.plot(pos - 0.1, exact, "D", color=OUTPUT_COLOR, ms=8, ls="none", label="closed form")
    ax.errorbar(pos + 0.1, est, yerr=[z * e for e in se], fmt="o", color=MC_COLOR, capsize=4,
                label=f"Monte Carlo $\\pm$ {z:g} SE")
    for i in range(2):
        ax.annotate(f"{exact[i]:.4f}\n{est[i]:.4f} $\\pm$ {se[i]:.4f}", (pos[i], max(exact[i], est[i])),
                    textcoords="offset points", xytext=(0, 18), ha="center", fontsize=8)
    ax.set_xticks(pos, names)
    ax.set_xlim(-0.6, 1.6)
    top = max(max(exact), max(e + z * s for e, s in zip(est, se)))
    ax.set_ylim(0.0, top * 1.35 + 1e-12)
    ax.set_title(f"closed form vs {int(summary['samples'].numel())} draws", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower center")
    return fig


def plot_relu_moment_sweep(
    mus, sigma: float, mean, var, mc_mean, mc_mean_se, mc_var, mc_var_se, z: float = 2.0,
) -> Figure:
    """Two panels, ``E[max(z,0)]`` and ``Var[max(z,0)]`` against ``mu`` at fixed ``sigma``: the closed form as a
    curve, Monte Carlo estimates as points with ``+- z`` standard-error bars.

    Args:
        mus: ``(K,)`` pre-activation means.
        sigma: the pre-activation standard deviation.
        mean, var: ``(K,)`` closed-form moments.
        mc_mean, mc_mean_se, mc_var, mc_var_se: ``(K,)`` Monte Carlo estimates and their standard errors.
        z: half-width of the error bars in standard errors.
    """
    mus = to_numpy(mus)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for ax, exact, est, se, name in (
        (axes[0], mean, mc_mean, mc_mean_se, r"$\mathbb{E}[\max(z, 0)]$"),
        (axes[1], var, mc_var, mc_var_se, r"$\mathrm{Var}[\max(z, 0)]$"),
    ):
        ax.plot(mus, to_numpy(exact), color=OUTPUT_COLOR, lw=2, label="closed form")
        ax.errorbar(mus, to_numpy(est), yerr=z * to_numpy(se), fmt="o", ms=3.5, color=MC_COLOR, capsize=2,
                    label=f"Monte Carlo $\\pm$ {z:g} SE")
        ax.set_xlabel(r"$\mu$")
        ax.set_title(rf"{name},  $\sigma$ = {sigma:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_zero_mean_ratio(h, ratio_mean, ratio_var, ax: Axes | None = None) -> Figure:
    """The zero-mean formulas divided by the truth, against ``h = mu / sigma`` (log scale).

    Args:
        h: ``(K,)`` standardised means.
        ratio_mean, ratio_var: ``(K,)`` ``(sigma / sqrt(2 pi)) / E[q]`` and ``sigma^2 (pi - 1) / (2 pi) / Var[q]``.
    """
    fig, ax = _new_axes(ax, (6.4, 4.0))
    h = to_numpy(h)
    ax.semilogy(h, to_numpy(ratio_mean), color=OUTPUT_COLOR, lw=2, label="mean: zero-mean formula / truth")
    ax.semilogy(h, to_numpy(ratio_var), color=INPUT_COLOR, lw=2, ls="--", label="variance: zero-mean formula / truth")
    ax.axhline(1.0, color=MC_COLOR, lw=1)
    ax.axvline(0.0, color=MC_COLOR, lw=0.8, ls=":")
    ax.set_xlabel(r"$h = \mu / \sigma$")
    ax.set_ylabel("ratio (1 = exact)")
    ax.set_title("The zero-mean formulas are exact only at $\\mu = 0$")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig
