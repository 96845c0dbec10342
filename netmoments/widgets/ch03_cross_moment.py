"""Chapter 3, two ReLUs and the cross moment: the widget."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .. import viz
from ..montecarlo import monte_carlo_moments
from ..relu import relu_cross_moment, relu_moments, zero_mean_relu_kernel
from ..special import bivariate_normal_cdf
from ._frames import FRAME_DPI, FrameWidget, _on_grid, precomputed_widget

__all__ = ["relu_pair_summary", "relu_pair_widget", "RELU_PAIR_GRID"]

_INV_2PI = 1.0 / (2.0 * math.pi)


def _standardized(mu: float, sigma: float) -> float:
    """h = mu / sigma; for sigma = 0 the unit is the constant max(mu, 0), on (h = +inf) only if mu > 0."""
    if sigma > 0:
        return mu / sigma
    return math.inf if mu > 0 else -math.inf


def relu_pair_summary(
    mu_i: float, mu_j: float, sigma_i: float, sigma_j: float, rho: float, n_samples: int = 20000, seed: int = 0,
) -> dict:
    """The cross moment and covariance of ``q_i = max(y_i, 0)``, ``q_j = max(y_j, 0)`` for a correlated Gaussian
    pair ``(y_i, y_j)``: exact (NM20), NM18's zero-mean formula, and Monte Carlo with standard errors.

    Args:
        mu_i, mu_j: pre-activation means.
        sigma_i, sigma_j: pre-activation standard deviations, ``>= 0``.
        rho: their correlation, in ``[-1, 1]``.
        n_samples: Monte Carlo draws.
        seed: seed of the draws.

    Returns:
        dict of Python floats: ``cross_exact`` (``E[q_i q_j]``, :func:`netmoments.relu_cross_moment`),
        ``cross_zero_mean`` (``sigma_i sigma_j c(rho)``), ``cov_exact``, ``cov_zero_mean`` (NM18's off-diagonal
        ``sigma_i sigma_j (c(rho) - 1/(2 pi))``), ``cov_error`` (``cov_zero_mean - cov_exact``), ``p_both_on``
        (``Phi2(h_i, h_j; rho)``, the probability that both units are on), the Monte Carlo ``mc_cross``,
        ``mc_cross_se``, ``mc_cov``, ``mc_cov_se``, ``mc_p_both_on``, the scores ``z_cross``, ``z_cov``
        (``|exact - MC| / SE``); and ``samples``, an ``(n_samples, 2)`` float64 tensor of draws of
        ``(q_i, q_j)``.
    """
    if sigma_i < 0 or sigma_j < 0:
        raise ValueError(f"sigma_i and sigma_j must be non-negative, got {sigma_i} and {sigma_j}")
    if not -1.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [-1, 1], got {rho}")
    dtype = torch.float64
    mi, mj, si, sj, r = (torch.tensor(float(v), dtype=dtype) for v in (mu_i, mu_j, sigma_i, sigma_j, rho))
    cross_exact = relu_cross_moment(mi, mj, si * si, sj * sj, r)
    cross_zero_mean = relu_cross_moment(mi, mj, si * si, sj * sj, r, method="zero_mean")
    first, _ = relu_moments(torch.stack([mi, mj]), torch.stack([si, sj]) ** 2)
    cov_exact = cross_exact - first[0] * first[1]
    cov_zero_mean = si * sj * (zero_mean_relu_kernel(r) - _INV_2PI)

    mean = torch.stack([mi, mj])
    cov = torch.stack([torch.stack([si * si, r * si * sj]), torch.stack([r * si * sj, sj * sj])])
    kept = []

    def rectify(x):
        # outputs: q_i, q_j, q_i q_j and 1[both on]; the last two give the cross moment and Phi2 with SEs
        q = torch.relu(x)
        kept.append(q)
        product = q[..., 0] * q[..., 1]
        both_on = ((x[..., 0] > 0) & (x[..., 1] > 0)).to(x.dtype)
        return torch.stack([q[..., 0], q[..., 1], product, both_on], dim=-1)

    generator = torch.Generator().manual_seed(seed)
    mc = monte_carlo_moments(rectify, mean, cov, n_samples, generator=generator, covariance=True)
    h = torch.tensor([_standardized(mu_i, sigma_i), _standardized(mu_j, sigma_j)], dtype=dtype)
    p_both_on = bivariate_normal_cdf(h[0], h[1], r)
    tiny = torch.finfo(dtype).tiny
    return {
        "cross_exact": cross_exact.item(),
        "cross_zero_mean": cross_zero_mean.item(),
        "cov_exact": cov_exact.item(),
        "cov_zero_mean": cov_zero_mean.item(),
        "cov_error": (cov_zero_mean - cov_exact).item(),
        "p_both_on": p_both_on.item(),
        "mc_cross": mc.mean[2].item(),
        "mc_cross_se": mc.mean_se[2].item(),
        "mc_cov": mc.cov[0, 1].item(),
        "mc_cov_se": mc.cov_se[0, 1].item(),
        "mc_p_both_on": mc.mean[3].item(),
        "z_cross": ((cross_exact - mc.mean[2]).abs() / mc.mean_se[2].clamp_min(tiny)).item(),
        "z_cov": ((cov_exact - mc.cov[0, 1]).abs() / mc.cov_se[0, 1].clamp_min(tiny)).item(),
        "samples": torch.cat(kept),
    }



#: The chapter 3 widget's grid (196 frames), the means in steps of 0.5, unit standard deviations. A standard
#: deviation only rescales its unit (``q_i = sigma_i max(mu_i / sigma_i + z_i, 0)``), so every covariance, exact or
#: zero-mean, is ``sigma_i sigma_j`` times its value at ``(mu_i / sigma_i, mu_j / sigma_j)`` with unit spreads: the
#: means at ``sigma = 1`` cover the picture, and a fine mean grid is worth more of the 5 MB page than spread
#: sliders. Give ``sigma_i`` / ``sigma_j`` values in ``grid`` to get their sliders back.
RELU_PAIR_GRID = {
    "mu_i": (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5),
    "mu_j": (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5),
    "rho": (-0.6, 0.0, 0.6, 0.9),
}


_DESCRIPTIONS = {"mu_i": "mean μ_i", "mu_j": "mean μ_j", "sigma_i": "std σ_i", "sigma_j": "std σ_j",
                 "rho": "correlation ρ"}


def relu_pair_widget(n_samples: int = 20000, seed: int = 0, *, grid: Mapping[str, Sequence] | None = None,
                     dpi: int = FRAME_DPI) -> FrameWidget:
    """Sliders for the means, standard deviations and correlation of a Gaussian pair; draws samples of
    ``(max(y_i, 0), max(y_j, 0))`` and compares the exact covariance, Monte Carlo and NM18's zero-mean formula
    (see :func:`relu_pair_summary`). ``grid`` defaults to :data:`RELU_PAIR_GRID`; a control missing from it is
    held at its default (standard deviations 1)."""

    def compute(mu_i, mu_j, rho, sigma_i=1.0, sigma_j=1.0):
        return relu_pair_summary(mu_i, mu_j, sigma_i, sigma_j, rho, n_samples=n_samples, seed=seed)

    def describe(s):
        return (f"Cov[q_i, q_j]: exact = {s['cov_exact']:.4f}, Monte Carlo = {s['mc_cov']:.4f} ± "
                f"{s['mc_cov_se']:.4f}, 2018 zero-mean formula = {s['cov_zero_mean']:.4f} "
                f"(error {s['cov_error']:+.4f})")

    grid = RELU_PAIR_GRID if grid is None else grid
    initial = {"mu_i": 1.0, "mu_j": -1.0, "sigma_i": 1.0, "sigma_j": 1.0, "rho": 0.6}
    return precomputed_widget(
        compute, viz.plot_relu_pair, grid, describe=describe, dpi=dpi, initial=_on_grid(initial, grid),
        title="the ReLU pair's covariance",
        descriptions={name: text for name, text in _DESCRIPTIONS.items() if name in grid},
    )
