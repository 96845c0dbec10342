"""What the figures of every chapter share: the colours, conversion to NumPy, a 2-D Gaussian's ellipses and a
fresh axes.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["to_numpy", "gaussian_ellipse", "plot_gaussian_ellipses"]

INPUT_COLOR = "#3182bd"
OUTPUT_COLOR = "#e6550d"
MC_COLOR = "#252525"
#: Second and third methods beside the exact one (chapters 4, 5 and 7): NM18's hybrid and NM20's series.
HYBRID_COLOR = "#756bb1"
SERIES_COLOR = "#31a354"


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
