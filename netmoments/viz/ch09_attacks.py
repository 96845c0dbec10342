"""Chapter 9, Gaussian attacks: an attack's draws (:func:`plot_attack_grid`) and the chapter's results, drawn from
what :mod:`netmoments.attacks.report` computes (:func:`plot_budget_curves` from its ``method_table``,
:func:`plot_calibration` from its ``calibration``) and from the attacked images (:func:`plot_draws_and_points`).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..attacks.metrics import L0_BUDGETS
from ._common import to_numpy

__all__ = ["plot_attack_grid", "plot_draws_and_points", "plot_budget_curves", "plot_calibration", "plot_reliability"]


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


def plot_budget_curves(table, budgets=L0_BUDGETS, ax=None, labels=None) -> Figure:
    """Expected success at each L0 budget (mean over digits, 95 % bootstrap band) for every method in ``table``
    (from :func:`netmoments.attacks.report.method_table`)."""
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


def plot_calibration(cal, ax=None) -> Figure:
    """Surrogate ``Phi(-r)`` against Monte Carlo success of the same margin on the real network, per digit."""
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


def plot_draws_and_points(clean, columns, titles, row_labels=None) -> Figure:
    """A grid: one row per digit; column 0 the clean digit, then one column per entry of ``columns``
    (``(B, 1, H, W)`` tensors or arrays: our draws, point attacks), titled by ``titles``."""
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


def plot_reliability(tables, titles=None, ax=None) -> Figure:
    """Reliability diagrams, one panel per table of :func:`netmoments.attacks.report.goal_calibration` (a dict
    ``{goal: table}``, or a list of :func:`~netmoments.attacks.report.reliability_table` results).

    Each panel: per bin, the mean observed success (over its digits) against the mean prediction, with the bin's
    Wilson interval (bar) and bootstrap interval over its digits (thick bar), the diagonal of perfect
    calibration, and the number of digits in each bin written under its point; the panel's title gives the
    goal, the Brier score and the ECE (estimates). ``ax``: a sequence of axes, one per table (default: new).
    """
    items = list(tables.values()) if isinstance(tables, dict) else list(tables)
    if not items:
        raise ValueError("tables must hold at least one reliability table")
    if ax is None:
        _, axes = plt.subplots(1, len(items), figsize=(3.3 * len(items), 3.4), squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(np.atleast_1d(ax))
        if len(axes) != len(items):
            raise ValueError(f"ax must hold one axes per table ({len(items)}), got {len(axes)}")
    for i, (axis, table) in enumerate(zip(axes, items)):
        pred = np.array([b["pred"] for b in table["bins"]])
        obs = np.array([b["observed"] for b in table["bins"]])
        wil = np.array([b["wilson"] for b in table["bins"]])
        boot = np.array([b["boot"][1:] for b in table["bins"]])
        axis.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
        axis.errorbar(pred, obs, yerr=[obs - wil[:, 0], wil[:, 1] - obs], fmt="none", ecolor="0.55", lw=1,
                      capsize=3, label="Wilson 95 %")
        axis.errorbar(pred, obs, yerr=[obs - boot[:, 0], boot[:, 1] - obs], fmt="o", color="C0", ms=4, lw=2.5,
                      label="bootstrap 95 % (digits)")
        for b in table["bins"]:
            axis.annotate(f"{b['n']}", (b["pred"], b["observed"]), textcoords="offset points", xytext=(6, -10),
                          fontsize=7, color="0.3")
        # zoom on the bins (the wide Wilson bars of small bins are cut at the frame)
        lo = max(0.0, float(min(pred.min(), boot.min())) - 0.05)
        axis.set_xlim(lo, 1.005)
        axis.set_ylim(lo, 1.005)
        axis.set_aspect("equal")
        title = titles[i] if titles is not None else f"goal {table.get('goal', float('nan')):g}"
        axis.set_title(f"{title}\nBrier {table['brier'][0]:.3f}, ECE {table['ece'][0]:.3f}", fontsize=9)
        axis.set_xlabel("predicted success (surrogate)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("observed success (real LeNet)")
    axes[0].legend(fontsize=7, loc="upper left", framealpha=0.9)
    axes[0].figure.tight_layout()
    return axes[0].figure
