"""Chapter 2, one ReLU of one Gaussian: the widget."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .. import viz
from ..montecarlo import monte_carlo_moments
from ..relu import relu_moments
from ._frames import FRAME_DPI, FrameWidget, _on_grid, precomputed_widget

__all__ = ["relu_gaussian_summary", "relu_gaussian_widget", "RELU_GRID"]

def relu_gaussian_summary(mu: float, sigma: float, n_samples: int = 20000, seed: int = 0) -> dict:
    """Closed-form and Monte Carlo moments of ``max(z, 0)``, ``z ~ N(mu, sigma^2)``.

    Returns:
        dict: ``mean``, ``var`` (closed form, :func:`netmoments.relu_moments`), ``p_zero`` (``P(q = 0) =
        Phi(-mu/sigma)``), ``mc_mean``, ``mc_mean_se``, ``mc_var``, ``mc_var_se`` (Monte Carlo with standard
        errors from the same draws), ``z_mean``, ``z_var`` (``|closed form - MC| / SE``), all Python floats,
        and ``samples`` (``(n_samples,)`` float64 tensor of draws of ``max(z, 0)``).
    """
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")
    dtype = torch.float64
    mean_t = torch.tensor([mu], dtype=dtype)
    var_t = torch.tensor([sigma**2], dtype=dtype)
    mean, var = relu_moments(mean_t, var_t)
    kept = []

    def relu_and_keep(x):
        # keep the draws too, so the histogram shows the very samples behind the estimates
        out = torch.relu(x)
        kept.append(out)
        return out

    generator = torch.Generator().manual_seed(seed)
    mc = monte_carlo_moments(relu_and_keep, mean_t, var_t.reshape(1, 1), n_samples, generator=generator)
    samples = torch.cat(kept).reshape(-1)
    z_mean, z_var = mc.z_scores(mean, var)
    p_zero = 0.5 * math.erfc(mu / (sigma * math.sqrt(2.0))) if sigma > 0 else float(mu <= 0)
    return {
        "mean": mean.item(),
        "var": var.item(),
        "p_zero": p_zero,
        "mc_mean": mc.mean.item(),
        "mc_mean_se": mc.mean_se.item(),
        "mc_var": mc.var.item(),
        "mc_var_se": mc.var_se.item(),
        "z_mean": z_mean.item(),
        "z_var": z_var.item(),
        "samples": samples,
    }



#: The chapter 2 widget's grid (91 frames).
RELU_GRID = {
    "mu": tuple(x / 2 for x in range(-6, 7)),
    "sigma": (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
}


def relu_gaussian_widget(n_samples: int = 20000, seed: int = 0, *, grid: Mapping[str, Sequence] | None = None,
                         dpi: int = FRAME_DPI) -> FrameWidget:
    """Sliders for ``mu`` and ``sigma``; draws the law of ``max(z, 0)`` with its closed-form and Monte Carlo
    means, and prints both (see :func:`relu_gaussian_summary`). ``grid`` defaults to :data:`RELU_GRID`."""

    def compute(mu, sigma):
        return relu_gaussian_summary(mu, sigma, n_samples=n_samples, seed=seed) | {"mu": mu, "sigma": sigma}

    def plot(s):
        return viz.plot_rectified_gaussian(
            s["mu"], s["sigma"], samples=s["samples"], analytic=(s["mean"], s["var"]),
            monte_carlo=(s["mc_mean"], s["mc_mean_se"], s["mc_var"], s["mc_var_se"]),
        )

    def describe(s):
        return (f"closed form:               E[q] = {s['mean']:.4f}           Var[q] = {s['var']:.4f}\n"
                f"Monte Carlo ({n_samples} draws): E[q] = {s['mc_mean']:.4f} ± {s['mc_mean_se']:.4f}  "
                f"Var[q] = {s['mc_var']:.4f} ± {s['mc_var_se']:.4f}")

    grid = RELU_GRID if grid is None else grid
    return precomputed_widget(compute, plot, grid, initial=_on_grid({"mu": 0.5, "sigma": 1.0}, grid),
                              describe=describe, dpi=dpi, title="one ReLU unit's moments",
                              descriptions={"mu": "mean μ", "sigma": "standard deviation σ"})
