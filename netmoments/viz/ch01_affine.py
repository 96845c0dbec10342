"""Chapter 1, Gaussians through affine layers: the figures."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ._common import INPUT_COLOR, MC_COLOR, OUTPUT_COLOR, plot_gaussian_ellipses, to_numpy

__all__ = ["plot_affine_gaussian"]

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
