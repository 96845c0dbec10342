"""Figures for the book, organised by chapter.

Every function takes plain numbers or tensors, draws with matplotlib and returns the ``Figure`` (or draws on
the ``ax`` it is given), so a chapter reads ``fig = viz.plot_...(...)`` and stays about the maths. Nothing here
computes a moment: the numbers come from the core (``netmoments.affine``, ``netmoments.relu``, ...) or from
the pure functions in :mod:`netmoments.widgets`.

matplotlib is imported here and in :mod:`netmoments.widgets` only; the core never imports it.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    # shared
    "to_numpy",
    "gaussian_ellipse",
    "plot_gaussian_ellipses",
    # chapter 1
    "plot_affine_gaussian",
    # chapter 2
    "plot_rectified_gaussian",
    "plot_relu_gaussian_check",
    "plot_relu_moment_sweep",
    "plot_zero_mean_ratio",
    # chapters 6-7: deep networks
    "plot_linear_regions",
    "plot_linearization_error",
    "plot_noise_sensitivity",
    "plot_digits",
]

INPUT_COLOR = "#3182bd"
OUTPUT_COLOR = "#e6550d"
MC_COLOR = "#252525"


# ----------------------------------------------------------------------------- shared helpers


def to_numpy(x) -> np.ndarray:
    """A float64 NumPy copy of a tensor, array or number (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_ellipse(mean, cov, k: float = 1.0, n_points: int = 200) -> np.ndarray:
    """Boundary of the ``k``-sigma ellipse ``{x : (x - mean)^T cov^+ (x - mean) = k^2}`` of a 2-D Gaussian.

    Args:
        mean: ``(2,)``.
        cov: ``(2, 2)`` symmetric PSD; a singular ``cov`` gives the degenerate ellipse (a segment, traversed
            twice), which is where the probability mass of such a Gaussian lives.
        k: how many standard deviations (Mahalanobis radius).
        n_points: points on the boundary.

    Returns:
        ``(n_points, 2)`` float64 array, the first point repeated last so it closes when plotted.
    """
    mean, cov = to_numpy(mean), to_numpy(cov)
    if mean.shape != (2,) or cov.shape != (2, 2):
        raise ValueError(f"gaussian_ellipse needs mean (2,) and cov (2, 2), got {mean.shape} and {cov.shape}")
    evals, evecs = np.linalg.eigh(0.5 * (cov + cov.T))
    root = evecs * np.sqrt(np.clip(evals, 0.0, None))  # root @ root.T == cov
    t = np.linspace(0.0, 2.0 * math.pi, n_points)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    return mean + k * circle @ root.T


def plot_gaussian_ellipses(ax: Axes, mean, cov, ks=(1, 2, 3), color: str = INPUT_COLOR, label: str | None = None):
    """Draw the ``k``-sigma ellipses of a 2-D Gaussian and mark its mean on ``ax``."""
    mean_np = to_numpy(mean)
    for i, k in enumerate(ks):
        pts = gaussian_ellipse(mean, cov, k)
        ax.plot(pts[:, 0], pts[:, 1], color=color, lw=2.0 - 0.4 * i, alpha=1.0 - 0.2 * i,
                label=label if i == 0 else None)
    ax.plot(*mean_np, marker="+", color=color, ms=12, mew=2)


def _new_axes(ax: Axes | None, figsize) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


# ----------------------------------------------------------------------------- chapter 1: affine layers


def plot_affine_gaussian(
    mean_in, cov_in, mean_out, cov_out, samples_in=None, samples_out=None, ks=(1, 2, 3), weight=None,
    max_points: int = 2000,
) -> Figure:
    """Two panels: a 2-D Gaussian with its 1-, 2-, 3-sigma ellipses, and its image under an affine map.

    Args:
        mean_in, cov_in: ``(2,)``, ``(2, 2)`` the input Gaussian.
        mean_out, cov_out: ``(2,)``, ``(2, 2)`` the output moments (from :func:`netmoments.affine_moments`).
        samples_in, samples_out: optional ``(N, 2)`` draws of the input and the same draws mapped.
        ks: the ellipse radii in standard deviations.
        weight: optional ``(2, 2)`` map, printed in the right panel's title.
        max_points: at most this many samples are scattered.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    panels = (
        (axes[0], mean_in, cov_in, samples_in, INPUT_COLOR, r"input $x \sim \mathcal{N}(\mu, \Sigma)$"),
        (axes[1], mean_out, cov_out, samples_out, OUTPUT_COLOR, r"output $Ax + b$"),
    )
    for ax, mean, cov, samples, color, title in panels:
        if samples is not None:
            pts = to_numpy(samples)[:max_points]
            ax.scatter(pts[:, 0], pts[:, 1], s=4, color=color, alpha=0.25, lw=0, label="samples")
        plot_gaussian_ellipses(ax, mean, cov, ks, color=MC_COLOR, label=f"{', '.join(map(str, ks))}-sigma ellipses")
        ax.set_title(title)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
        ax.set_xlabel("first coordinate")
        ax.set_ylabel("second coordinate")
    if weight is not None:
        w = to_numpy(weight)
        axes[1].set_title(f"output Ax + b,  A = [[{w[0, 0]:.2f}, {w[0, 1]:.2f}], [{w[1, 0]:.2f}, {w[1, 1]:.2f}]]")
    axes[0].legend(loc="upper left", fontsize=8)
    return fig


# ----------------------------------------------------------------------------- chapter 2: one ReLU of one Gaussian


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


# ----------------------------------------------------------------------------- chapter 3: two ReLUs, the cross moment

__all__ += ["plot_relu_pair", "plot_cross_covariance_profiles", "plot_zero_mean_error_maps"]

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


# ----------------------------------------------------------------------------- chapters 6-7: deep networks


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


# ----------------------------------------------------------------------------- chapter 4: network moments

__all__ += ["plot_z_scores", "plot_relative_error_sweep", "plot_network_covariance"]

HYBRID_COLOR = "#756bb1"
SERIES_COLOR = "#31a354"


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


# ----------------------------------------------------------------------------- chapter 5: computing Phi2

__all__ += ["plot_quadrature_convergence", "plot_series_partial_sums", "plot_series_error_maps",
            "plot_speed_accuracy", "plot_series_slice"]

ROUND_OFF = 2.0**-52


def plot_quadrature_convergence(nodes, errors: dict, ax: Axes | None = None) -> Figure:
    """Error of an ``n``-node Gauss-Legendre rule against ``n`` (log scale), one curve per setting.

    Args:
        nodes: ``(K,)`` node counts.
        errors: ``{label: (K,) max absolute errors}``; zeros are drawn at the round-off floor.
    """
    fig, ax = _new_axes(ax, (6.4, 4.0))
    nodes = to_numpy(nodes)
    floor = 1e-17
    colors = plt.cm.plasma(np.linspace(0.0, 0.85, len(errors)))
    for (label, err), color in zip(errors.items(), colors):
        ax.semilogy(nodes, np.clip(to_numpy(err), floor, None), "o-", ms=3.5, color=color, lw=1.6, label=label)
    ax.axhline(ROUND_OFF, color=MC_COLOR, lw=0.8, ls=":", label="double-precision epsilon")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("Gauss–Legendre nodes")
    ax.set_ylabel(r"max $|\Phi_2^{\mathrm{GL}} - \Phi_2|$")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_series_partial_sums(terms, errors: dict, ax: Axes | None = None) -> Figure:
    """``|I_N - I|`` of a series against the number of terms ``N`` (log scale), one curve per setting.

    Args:
        terms: ``(K,)`` values of ``N``.
        errors: ``{label: (K,) absolute errors}``.
    """
    fig, ax = _new_axes(ax, (6.4, 4.0))
    terms = to_numpy(terms)
    colors = plt.cm.coolwarm(np.linspace(0.0, 1.0, len(errors)))
    for (label, err), color in zip(errors.items(), colors):
        ax.semilogy(terms, np.clip(to_numpy(err), 1e-17, None), "o-", ms=3, color=color, lw=1.6, label=label)
    ax.axhline(ROUND_OFF, color=MC_COLOR, lw=0.8, ls=":")
    ax.set_xlabel("number of terms $N$")
    ax.set_ylabel(r"$|I_N(a, b, c) - I(a, b, c)|$")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_series_error_maps(h, rho, maps: dict, terms, max_errors, quoted: dict | None = None,
                           vmin: float = 1e-8) -> Figure:
    """A 2 x 3 figure: five maps of the series' error over ``(rho, h)`` (one per number of terms, log colour
    scale), and in the sixth panel the largest error against the number of terms.

    Args:
        h: ``(K,)`` values of the first argument (vertical axis).
        rho: ``(R,)`` correlations (horizontal axis), sorted.
        maps: ``{N: (K, R) errors}`` for five values of ``N`` (e.g. already maximised over the second argument).
        terms: ``(T,)`` numbers of terms for the last panel.
        max_errors: ``(T,)`` the largest error for each.
        quoted: optional ``{N: value}`` published values, drawn as markers in the last panel.
        vmin: bottom of the colour scale; smaller errors get its colour.
    """
    from matplotlib.colors import LogNorm

    h, rho = to_numpy(h), to_numpy(rho)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.4), layout="constrained")
    flat = axes.ravel()
    vmax = max(float(to_numpy(m).max()) for m in maps.values())
    norm = LogNorm(vmin=vmin, vmax=vmax)
    for ax, (n_terms, err) in zip(flat[:5], maps.items()):
        err = np.clip(to_numpy(err), vmin, None)
        image = ax.pcolormesh(rho, h, err, norm=norm, cmap="magma", shading="nearest")
        for edge in (-2**-0.5, 2**-0.5):
            ax.axvline(edge, color="white", lw=0.8, ls="--")
        ax.set_title(f"N = {n_terms}: max error {err.max():.1e}", fontsize=10)
        ax.set_xlabel(r"$\rho$")
        ax.set_ylabel("$h$")
    fig.colorbar(image, ax=list(flat[:5]), shrink=0.85,
                 label=r"$\max_k |\Phi_2^{(N)}(h, k; \rho) - \Phi_2(h, k; \rho)|$")
    ax = flat[5]
    ax.semilogy(to_numpy(terms), to_numpy(max_errors), "o-", color=OUTPUT_COLOR, lw=2, label="measured maximum")
    if quoted:
        ax.semilogy(list(quoted), list(quoted.values()), "s", color=INPUT_COLOR, ms=7, ls="none",
                    label="values quoted in the maths contract")
    ax.set_xlabel("number of terms $N$")
    ax.set_ylabel(r"max error in $\Phi_2$")
    ax.set_title("largest error over the grid", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_speed_accuracy(entries, ax: Axes | None = None) -> Figure:
    """Time against accuracy (log-log): one labelled point per method.

    Args:
        entries: list of ``(label, seconds per 1e5 evaluations, max absolute error)``; errors below
            ``1e-16`` are drawn at ``1e-16``. Labels of the form ``"series N=<n> ..."`` are drawn as one
            connected curve, in the given order, whose end points are labelled by ``n``.
    """
    fig, ax = _new_axes(ax, (7.0, 4.4))
    series = [(label.split("N=")[1].split()[0], seconds, max(float(error), 1e-16))
              for label, seconds, error in entries if label.startswith("series N=")]
    if series:
        ax.loglog([s[1] for s in series], [s[2] for s in series], "o-", ms=7, color=SERIES_COLOR, lw=1,
                  label="NM20 series, N terms")
        # the error falls with N, so the ends of the curve identify the rest; labelling every point overlaps
        for n_terms, seconds, error in (series[0], series[-1]):
            ax.annotate(f"N={n_terms}", (seconds, error), textcoords="offset points", xytext=(7, -3), fontsize=8,
                        color=SERIES_COLOR)
    for label, seconds, error in entries:
        if label.startswith("series N="):
            continue
        shown = max(float(error), 1e-16)
        ax.loglog(seconds, shown, "D", ms=7, color=OUTPUT_COLOR)
        ax.annotate(label, (seconds, shown), textcoords="offset points", xytext=(7, 4), fontsize=8)
    ax.set_xlim(right=ax.get_xlim()[1] * 30)  # room for the labels of the rightmost points
    ax.set_xlabel(r"seconds per $10^5$ pairs")
    ax.set_ylabel(r"max error in $\Phi_2$")
    ax.set_title("Speed against accuracy", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if series:
        ax.legend(fontsize=8, loc="center right")
    return fig


def plot_series_slice(summary: dict) -> Figure:
    """``Phi2(h, k; rho)`` and its ``N``-term series against ``rho`` (left), and the error on a log scale (right),
    with ``|rho| = 1/sqrt(2)`` (``|a| = 1``) marked.

    Args:
        summary: the dict of :func:`netmoments.widgets.series_slice_summary`.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), layout="constrained")
    rho = to_numpy(summary["rho"])
    axes[0].plot(rho, to_numpy(summary["exact"]), color=OUTPUT_COLOR, lw=2, label=r"exact $\Phi_2$")
    axes[0].plot(rho, to_numpy(summary["series"]), color=SERIES_COLOR, lw=1.5, ls="--",
                 label=f"series, N = {summary['terms']}")
    axes[0].set_ylabel(r"$\Phi_2(h, k; \rho)$")
    axes[0].legend(fontsize=8)
    axes[1].semilogy(rho, np.clip(to_numpy(summary["error"]), 1e-17, None), color=SERIES_COLOR, lw=1.5)
    axes[1].set_ylabel("absolute error")
    axes[1].set_title(f"max error {summary['max_error']:.2e} at rho = {summary['rho_of_max']:.3f}", fontsize=10)
    for ax in axes:
        for edge in (-2**-0.5, 2**-0.5):
            ax.axvline(edge, color=MC_COLOR, lw=0.8, ls=":")
        ax.set_xlabel(r"$\rho$  (dotted: $|\rho| = 1/\sqrt{2}$, i.e. $|a| = 1$)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title(f"h = {summary['h']:.2f}, k = {summary['k']:.2f}", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- chapter 9: Gaussian attacks

__all__ += ["plot_attack_grid"]


def plot_attack_grid(clean, mean, noise_std, draws, titles=None, success=None) -> Figure:
    """One row per attacked digit: clean | mean shift (mean - clean) | noise std | a few clipped draws.

    Args:
        clean, mean, noise_std: ``(B, 1, H, W)`` (tensors or arrays); draws: ``(B, S, 1, H, W)``.
        titles: optional per-row labels (e.g. "7 -> 1"); success: optional per-row MC success rates.
    """
    clean, mean, std, draws = (to_numpy(x) for x in (clean, mean, noise_std, draws))
    rows, n_draws = draws.shape[0], draws.shape[1]
    cols = 3 + n_draws
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.5 * rows + 0.3), squeeze=False)
    heads = ["clean", "mean shift δ", "noise std"] + [f"draw {i + 1}" for i in range(n_draws)]
    for r in range(rows):
        delta = mean[r, 0] - clean[r, 0]
        panels = [(clean[r, 0], "gray_r", 0, 1), (delta, "RdBu_r", -1, 1), (std[r, 0], "magma", 0,
                  max(float(std.max()), 1e-6))] + [(draws[r, i, 0], "gray_r", 0, 1) for i in range(n_draws)]
        for c, (img, cmap, lo, hi) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=8)
        label = titles[r] if titles is not None else ""
        if success is not None:
            label += f"\nMC {float(success[r]):.2f}"
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def plot_linear_regions(model, xlim=(-3.0, 3.0), ylim=(-3.0, 3.0), resolution: int = 300, points=None,
                        ax: Axes | None = None) -> Figure:
    """The linear regions of a piecewise-linear network on 2-D inputs: one colour per activation pattern.

    Args:
        model: ``nn.Sequential`` taking ``(N, 2)`` inputs (see :func:`netmoments.linearize.activation_pattern`).
        xlim, ylim: the plotted square; resolution: grid points per side.
        points: optional ``(K, 2)`` points to mark (e.g. linearization points).
    """
    from ..linearize import activation_pattern

    fig, ax = _new_axes(ax, (5.0, 4.6))
    xs = np.linspace(*xlim, resolution)
    ys = np.linspace(*ylim, resolution)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), dtype=next(model.parameters()).dtype)
    pattern = torch.cat([p.reshape(grid.shape[0], -1).to(torch.int64) for p in activation_pattern(model, grid)], 1)
    _, region = torch.unique(pattern, dim=0, return_inverse=True)
    # Shuffle region ids so neighbouring regions rarely share similar colours.
    perm = np.random.default_rng(0).permutation(int(region.max()) + 1)
    ids = perm[region.numpy()].reshape(resolution, resolution)
    ax.imshow(ids % 20, origin="lower", extent=(*xlim, *ylim), cmap="tab20", interpolation="nearest", aspect="auto")
    if points is not None:
        pts = to_numpy(points).reshape(-1, 2)
        ax.plot(pts[:, 0], pts[:, 1], "k*", ms=12, mec="w", label="linearization point")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(f"{int(region.max()) + 1} linear regions in view", fontsize=10)
    return fig


def plot_linearization_error(steps, errors: dict, ax: Axes | None = None) -> Figure:
    """Error of linearizations along a ray ``x + t d`` against ``t``, log-log.

    Args:
        steps: ``(T,)`` positive step sizes ``t``.
        errors: ``{label: (T,) max |linearized - network|}``; zeros are drawn at the bottom of the axis.
    """
    fig, ax = _new_axes(ax, (5.6, 3.8))
    t = to_numpy(steps)
    floor = min([to_numpy(e)[to_numpy(e) > 0].min() for e in errors.values() if (to_numpy(e) > 0).any()] + [1e-16])
    for (label, err), color in zip(errors.items(), (OUTPUT_COLOR, INPUT_COLOR, MC_COLOR, "#31a354")):
        err = to_numpy(err)
        ax.loglog(t, np.maximum(err, floor / 10), "o-", ms=3, color=color, label=label)
    ax.set_xlabel("step size $t$ along a random unit direction")
    ax.set_ylabel("max |linearized − network| over logits")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_noise_sensitivity(image, maps: dict, title: str | None = None) -> Figure:
    """A digit and, beside it, per-pixel maps (e.g. each pixel's share of a logit's variance).

    Args:
        image: ``(H, W)`` (or ``(1, H, W)``) pixel values.
        maps: ``{panel title: (H, W) map}``; each map gets its own symmetric colour scale (shares can be < 0).
    """
    image = to_numpy(image).reshape(to_numpy(image).shape[-2:])
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(2.9 * (1 + len(maps)) + 0.4, 3.2), layout="constrained")
    axes = np.atleast_1d(axes)
    axes[0].imshow(image, cmap="gray_r", vmin=0, vmax=1)
    axes[0].set_title("input digit", fontsize=9)
    for ax, (label, values) in zip(axes[1:], maps.items()):
        values = to_numpy(values).reshape(image.shape)
        limit = float(np.abs(values).max()) or 1.0
        shown = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.contour(image, levels=[0.5], colors="k", linewidths=0.6)
        ax.set_title(label, fontsize=9)
        fig.colorbar(shown, ax=ax, shrink=0.8, format="%.0e")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_digits(images, labels=None, predictions=None, n_cols: int = 10) -> Figure:
    """A grid of digits ``(N, 1, H, W)`` titled with their labels (and predictions, red when wrong)."""
    images = to_numpy(images)
    n = images.shape[0]
    rows = math.ceil(n / n_cols)
    fig, axes = plt.subplots(rows, n_cols, figsize=(1.2 * n_cols, 1.35 * rows), layout="constrained")
    axes = np.atleast_1d(axes).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_visible(False)
            continue
        ax.imshow(images[i].reshape(images.shape[-2:]), cmap="gray_r", vmin=0, vmax=1)
        parts = []
        if labels is not None:
            parts.append(f"label {int(labels[i])}")
        if predictions is not None:
            parts.append(f"pred {int(predictions[i])}")
        wrong = labels is not None and predictions is not None and int(labels[i]) != int(predictions[i])
        ax.set_title("\n".join(parts), fontsize=7, color="#de2d26" if wrong else "black")
    return fig


# ============================================================================= tables for chapters 1-5
# (bookteach) Printing helpers, kept apart from the plotting code above: a chapter calls one function instead of a
# loop of format strings, and every closed-form-versus-sampling table in Part I reads the same way.

from typing import NamedTuple  # noqa: E402  (kept with the block that uses it)


class MonteCarloTable(NamedTuple):
    """What :func:`monte_carlo_table` printed: row names, ``{label: z-scores (rows,)}`` and the threshold."""

    rows: list
    z: dict
    threshold: float


def bonferroni_threshold(n_compared: int, level: float = 0.01) -> float:
    """Two-sided Bonferroni threshold ``z_{1 - level / (2 k)}`` for ``k = n_compared`` z-scores.

    A correct formula then fails *any* of the ``k`` comparisons with probability at most ``level``.
    """
    if not isinstance(n_compared, int) or n_compared < 1:
        raise ValueError(f"n_compared must be a positive int, got {n_compared!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    quantile = torch.tensor(1.0 - level / (2 * n_compared), dtype=torch.float64)
    return torch.special.ndtri(quantile).item()


def monte_carlo_table(
    mc,
    closed_forms: dict,
    labels=None,
    *,
    variances: bool = True,
    covariances: bool = True,
    level: float = 0.01,
    digits: int = 4,
    name: str = "y",
) -> MonteCarloTable:
    """Print closed-form moments beside Monte Carlo estimates, their standard errors and ``|diff| / SE``.

    The z-scores of the means and variances are :meth:`netmoments.MonteCarloResult.z_scores`; those of the
    off-diagonal covariances use ``mc.cov_se``. The last line gives the two-sided Bonferroni threshold for all
    rows at once (:func:`bonferroni_threshold`) and, per closed form, how many rows exceed it.

    Args:
        mc: a :class:`netmoments.MonteCarloResult` of ``f(x)`` with outputs ``(..., p)`` (leading dimensions
            are flattened into rows).
        closed_forms: ``{label: (mean, second)}`` with ``mean`` shaped like ``mc.mean`` and ``second`` either
            the variances (shaped like ``mc.var``), the covariance ``(..., p, p)``, or ``None`` (means only).
        labels: names of the flattened outputs (default ``y1, y2, ...``).
        variances: compare the variances.
        covariances: compare the off-diagonal covariances (needs ``mc.cov`` and covariance ``second``).
        level: family-wise level of the Bonferroni threshold.
        digits: decimals printed.
        name: stem of the default labels.

    Returns:
        :class:`MonteCarloTable` ``(rows, z, threshold)``: the row names, ``{label: z-scores (rows,)}`` and the
        Bonferroni threshold.
    """
    p = mc.mean.shape[-1]
    n_out = mc.mean.numel()
    if labels is None:
        labels = [f"{name}{k + 1}" for k in range(n_out)]
    labels = list(labels)
    if len(labels) != n_out:
        raise ValueError(f"labels must name the {n_out} outputs, got {len(labels)}")
    use_cov = covariances and mc.cov is not None and p > 1
    rows, estimate, std_err = [], [], []
    rows += [f"E[{lab}]" for lab in labels]
    estimate.append(mc.mean.reshape(-1))
    std_err.append(mc.mean_se.reshape(-1))
    if variances:
        rows += [f"Var[{lab}]" for lab in labels]
        estimate.append(mc.var.reshape(-1))
        std_err.append(mc.var_se.reshape(-1))
    if use_cov:
        iu, ju = torch.triu_indices(p, p, offset=1)
        grouped = [labels[b * p:(b + 1) * p] for b in range(n_out // p)]
        rows += [f"Cov[{g[i]},{g[j]}]" for g in grouped for i, j in zip(iu.tolist(), ju.tolist())]
        estimate.append(mc.cov[..., iu, ju].reshape(-1))
        std_err.append(mc.cov_se[..., iu, ju].reshape(-1))
    estimate, std_err = torch.cat(estimate), torch.cat(std_err)

    values, z_scores = {}, {}
    for label, (mean, second) in closed_forms.items():
        mean = torch.as_tensor(mean).to(mc.mean).reshape(mc.mean.shape)
        if second is None:
            if variances or use_cov:
                raise ValueError(f"closed form {label!r} gives no second moment; pass variances=False, covariances=False")
            (z_mean,) = mc.z_scores(mean)
            values[label], z_scores[label] = mean.reshape(-1), z_mean.reshape(-1)
            continue
        second = torch.as_tensor(second).to(mc.mean)
        is_cov = second.dim() == mc.var.dim() + 1  # (..., p, p) covariance rather than (..., p) variances
        var = torch.diagonal(second, dim1=-2, dim2=-1) if is_cov else second.reshape(mc.var.shape)
        z_mean, z_var = mc.z_scores(mean, var)
        parts, zs = [mean.reshape(-1)], [z_mean.reshape(-1)]
        if variances:
            parts.append(var.reshape(-1))
            zs.append(z_var.reshape(-1))
        if use_cov:
            if not is_cov:
                raise ValueError(f"closed form {label!r} gives variances only; pass covariances=False")
            cov_entries = second[..., iu, ju].reshape(-1)
            tiny = torch.finfo(estimate.dtype).tiny
            parts.append(cov_entries)
            zs.append((cov_entries - mc.cov[..., iu, ju].reshape(-1)).abs()
                      / mc.cov_se[..., iu, ju].reshape(-1).clamp_min(tiny))
        values[label] = torch.cat(parts)
        z_scores[label] = torch.cat(zs)

    threshold = bonferroni_threshold(len(rows), level)
    width = max(len(r) for r in rows) + 1
    number = digits + 6
    header = f"{'quantity':<{width}} {'Monte Carlo ± SE':>{2 * number + 3}}"
    for label in closed_forms:
        header += f" | {label:>{number}} {'|z|':>6}"
    print(header)
    for k, row in enumerate(rows):
        line = f"{row:<{width}} {estimate[k].item():{number}.{digits}f} ± {std_err[k].item():<{number}.{digits}f}"
        for label in closed_forms:
            line += f" | {values[label][k].item():{number}.{digits}f} {z_scores[label][k].item():6.2f}"
        print(line)
    verdicts = ", ".join(f"{label}: {int((z > threshold).sum())} of {len(rows)} above it"
                         for label, z in z_scores.items())
    print(f"Bonferroni threshold for {len(rows)} numbers at level {level}: {threshold:.2f}; {verdicts}")
    return MonteCarloTable(rows, z_scores, threshold)


# ----------------------------------------------------------------------------- chapters 6-7: the TSL split and tightness

__all__ += ["plot_two_stage_diagram", "plot_exact_sets", "plot_intervals", "plot_error_split", "plot_z_distribution"]

STAGE1_COLOR = "#9ecae1"
KEPT_COLOR = "#fdae6b"
STAGE2_COLOR = "#a1d99b"


def plot_two_stage_diagram(layers, kept: int, ax: Axes | None = None) -> Figure:
    """A block diagram of the two-stage linearization of a sequential network.

    Args:
        layers: short names of the layers, in order (e.g. ``["conv1", "pool", "ReLU", ...]``).
        kept: index into ``layers`` of the kept ReLU. Layers before it form stage 1 (replaced by ``A x + c1``,
            linearized at ``p``), layers after it stage 2 (``B h + c2``, linearized at the kept ReLU's output).
    """
    layers = list(layers)
    if not 0 <= kept < len(layers):
        raise ValueError(f"kept must index layers (0..{len(layers) - 1}), got {kept}")
    fig, ax = _new_axes(ax, (max(6.0, 0.95 * len(layers) + 1.5), 2.6))
    width, gap = 0.8, 0.15
    for i, name in enumerate(layers):
        color = STAGE1_COLOR if i < kept else KEPT_COLOR if i == kept else STAGE2_COLOR
        x0 = i * (width + gap)
        ax.add_patch(plt.Rectangle((x0, 0.0), width, 1.0, facecolor=color, edgecolor="#333333", linewidth=1))
        ax.text(x0 + width / 2, 0.5, name, ha="center", va="center", fontsize=8, rotation=90 if len(name) > 6 else 0)
        if i:
            ax.annotate("", xy=(x0, 0.5), xytext=(x0 - gap, 0.5), arrowprops=dict(arrowstyle="->", lw=0.8))

    def brace(i0, i1, text, y=-0.15):
        x0, x1 = i0 * (width + gap), i1 * (width + gap) + width
        ax.plot([x0, x0, x1, x1], [y + 0.08, y, y, y + 0.08], color="#333333", lw=1)
        ax.text((x0 + x1) / 2, y - 0.08, text, ha="center", va="top", fontsize=9)

    if kept > 0:
        brace(0, kept - 1, "stage 1: $A x + c_1$\n(Jacobian at $p$)")
    brace(kept, kept, "kept ReLU\n(exact)")
    if kept < len(layers) - 1:
        brace(kept + 1, len(layers) - 1, "stage 2: $B h + c_2$\n(Jacobian at $q_p$)")
    ax.set_xlim(-0.2, len(layers) * (width + gap))
    ax.set_ylim(-0.85, 1.15)
    ax.set_axis_off()
    ax.set_title(r"$f(x) \approx g(x) = B\,\max(Ax + c_1, 0) + c_2$", fontsize=10)
    return fig


def plot_exact_sets(xs, ys, tsl_exact, affine_exact, point=None, ax: Axes | None = None) -> Figure:
    """Where the TSL and the affine linearization at ``point`` reproduce a 2-D network exactly.

    Args:
        xs, ys: grid coordinates ``(nx,)``, ``(ny,)``.
        tsl_exact, affine_exact: boolean ``(ny, nx)`` grids (``|error| <`` a tolerance at each grid point).
        point: the linearization point ``(2,)``, drawn as a star.
    """
    from matplotlib.colors import ListedColormap

    tsl_exact, affine_exact = np.asarray(tsl_exact, bool), np.asarray(affine_exact, bool)
    if tsl_exact.shape != affine_exact.shape or tsl_exact.shape != (len(ys), len(xs)):
        raise ValueError(f"grids must have shape (len(ys), len(xs)) = {(len(ys), len(xs))}")
    # 0: neither, 1: TSL only, 2: both, 3: affine only (should not happen: it would contradict the theory)
    code = np.where(affine_exact, np.where(tsl_exact, 2, 3), np.where(tsl_exact, 1, 0))
    fig, ax = _new_axes(ax, (4.6, 4.2))
    cmap = ListedColormap(["#f0f0f0", KEPT_COLOR, STAGE1_COLOR, "#d62728"])
    ax.imshow(code, origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), cmap=cmap, vmin=-0.5, vmax=3.5,
              interpolation="nearest", aspect="auto")
    if point is not None:
        p = to_numpy(point).reshape(-1)
        ax.plot(p[0], p[1], "k*", markersize=12)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (STAGE1_COLOR, KEPT_COLOR, "#f0f0f0")]
    ax.legend(handles, ["both exact (affine ⊆ TSL)", "only the TSL exact", "neither"], loc="upper right", fontsize=8)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    return fig


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


# ----------------------------------------------------------------------------- chapter 8: moments layer by layer

__all__ += ["plot_clark_check", "plot_cost_accuracy", "plot_logit_moments"]

#: One colour per method of chapter 8, so every figure and widget frame names a method the same way.
METHOD_COLORS = {"diag": "#9ecae1", "lowrank": "#3182bd", "lowrank32": "#08519c", "full": "#31a354",
                 "unscented": "#756bb1", "tsl": "#e6550d", "mc": "#636363", "cv": "#d62728"}  # fmt: skip
METHOD_LABELS = {"diag": "diagonal", "lowrank": "low-rank", "lowrank32": "low-rank, float32", "full": "full",
                 "unscented": "unscented", "tsl": "two-stage linearization", "mc": "Monte Carlo (measured)",
                 "cv": "control variate (measured)"}  # fmt: skip


def plot_clark_check(rho, exact: dict, reference: dict, ax: Axes | None = None) -> Figure:
    """Clark's mean and standard deviation of ``max(X1, X2)`` against an independent reference, over ``rho``.

    Args:
        rho: ``(n,)`` correlations; exact, reference: ``{"mean": (n,), "std": (n,)}`` (closed form, quadrature).
    """
    fig, ax = _new_axes(ax, (6.4, 3.4))
    for key, color in (("mean", OUTPUT_COLOR), ("std", INPUT_COLOR)):
        ax.plot(rho, exact[key], color=color, linewidth=2, label=f"{key}, Clark")
        ax.plot(rho[::8], np.asarray(reference[key])[::8], "o", color="black", markersize=3,
                label=f"{key}, quadrature" if key == "mean" else None)
    ax.set_xlabel("correlation ρ of X₁ and X₂")
    ax.set_ylabel("moment of max(X₁, X₂)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_cost_accuracy(data: dict, axes=None, title: str | None = None) -> Figure:
    """The decision figure: error against cost, each method a point with its interval, sampling as curves.

    Args:
        data: :func:`netmoments.experiments.layerwise.cost_accuracy`'s dict.
        axes: two axes (variance error, mean error), or ``None`` for a new figure.
        title: put over the top axes.
    """
    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(4.4, 6.0), sharex=True, layout="constrained")
    fig = axes[0].figure
    for ax, key, label in ((axes[0], "var_err", "variance error (mean over digits)"),
                           (axes[1], "zmu", "|Δμ| / sd (median over digits)")):  # fmt: skip
        for name, curve in data["curves"].items():
            style = "-" if name == "Monte Carlo" else "--"
            ax.plot(curve["draws"], curve[key], style, color=METHOD_COLORS["mc" if name == "Monte Carlo" else "cv"],
                    linewidth=1.3, label=name)
        ax.axhline(data["floor"][key], color="#bbbbbb", linestyle=":", linewidth=1.2, label="the truth's own noise")
        for method, point in data["points"].items():
            est, lo, hi = point[key]
            ax.errorbar([point["draws"]], [est], yerr=[[est - lo], [hi - est]], fmt="o", capsize=2, markersize=5,
                        color=METHOD_COLORS.get(method, "black"), label=METHOD_LABELS.get(method, method))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[1].set_xlabel("cost per digit, in forward passes of the network")
    if title:
        axes[0].set_title(title, fontsize=10)
    return fig


def plot_logit_moments(truth_mean, truth_sd, mean, sd, label: str, color: str = OUTPUT_COLOR,
                       ax: Axes | None = None) -> Figure:
    """One method's logits against the truth, in the truth's standard deviations, logit by logit.

    Each logit ``k`` is drawn as ``(mean_k - truth_mean_k) / truth_sd_k`` with a bar of ``±2 sd_k / truth_sd_k``,
    beside the truth itself (0 with a bar of ±2): a point off zero is a biased mean, a short bar a variance that
    is too small.

    Args:
        truth_mean, truth_sd, mean, sd: ``(K,)`` arrays; label: the method's name.
    """
    truth_mean, truth_sd, mean, sd = (np.asarray(a, float) for a in (truth_mean, truth_sd, mean, sd))
    fig, ax = _new_axes(ax, (6.4, 3.0))
    k = np.arange(len(truth_mean))
    ax.errorbar(k - 0.12, np.zeros(len(k)), yerr=2.0, fmt="s", color="#777777", capsize=3, markersize=4,
                label="truth (Monte Carlo), ±2 sd")
    ax.errorbar(k + 0.12, (mean - truth_mean) / truth_sd, yerr=2 * sd / truth_sd, fmt="o", color=color, capsize=3,
                markersize=4, label=f"{label}, ±2 sd")
    ax.axhline(0.0, color="#bbbbbb", linewidth=0.8)
    ax.set_xticks(k)
    ax.set_xlabel("logit")
    ax.set_ylabel("(value − true mean) / true sd", fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig
