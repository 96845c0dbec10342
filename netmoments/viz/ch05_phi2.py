"""Chapter 5, computing Phi2 (and appendix A1, its quadrature): the figures."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import INPUT_COLOR, MC_COLOR, OUTPUT_COLOR, SERIES_COLOR, _new_axes, to_numpy

__all__ = ["plot_quadrature_convergence", "plot_series_partial_sums", "plot_series_error_maps",
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
                    label="published values")
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
