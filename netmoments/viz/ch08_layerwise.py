"""Chapter 8, moments layer by layer: the figures."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import INPUT_COLOR, OUTPUT_COLOR, _new_axes

__all__ = ["plot_clark_check", "plot_cost_accuracy", "plot_logit_moments", "format_formula_check"]

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


def format_formula_check(check: dict) -> str:
    """A Markdown table: the sampling errors measured at a few budgets beside the formula's.

    Args:
        check: ``{(sigma, draws): ((var_ci, zmu_ci), (var_formula, zmu_formula))}``, each ``*_ci`` a
            ``(median or mean, low, high)`` triple over digits (the variance error's mean, the median |Δμ|/sd).

    Returns:
        One row per ``(sigma, draws)`` in the dict's order, three decimals.
    """
    lines = ["| σ | draws | variance error, measured [95 % interval] | formula "
             "| median \\|Δμ\\|/sd, measured [95 % interval] | formula |",
             "|---:|---:|---|---:|---|---:|"]  # fmt: skip
    for (sigma, draws), ((var_ci, zmu_ci), (var_f, zmu_f)) in check.items():
        measured = [f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]" for ci in (var_ci, zmu_ci)]
        lines.append(f"| {sigma:g} | {draws:,} | {measured[0]} | {var_f:.3f} | {measured[1]} | {zmu_f:.3f} |")
    return "\n".join(lines)
