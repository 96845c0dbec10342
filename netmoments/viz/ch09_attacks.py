"""Chapter 9, Gaussian attacks: the figures of this package (the chapter's result plots live in
:mod:`netmoments.attacks.report`).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ._common import to_numpy

__all__ = ["plot_attack_grid"]

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
