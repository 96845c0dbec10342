"""Chapter 4, network moments: the widget."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .. import viz
from ..affine import AffineReLUAffine
from ..montecarlo import monte_carlo_moments
from ..relu import relu_moments
from ._frames import FRAME_DPI, FrameWidget, _on_grid, precomputed_widget

__all__ = ["ar1_covariance", "chapter4_network", "network_covariance_summary", "network_covariance_widget",
           "NETWORK_GRID"]

#: The chapter 4 widget's network: input size n, hidden width m, output size p, and the seed of its weights.
NETWORK_SIZES = (8, 24, 4)
NETWORK_SEED = 2018


def ar1_covariance(dim: int, coefficient: float, scale: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The AR(1) covariance ``Sigma_kl = scale^2 coefficient^|k - l|``, ``(dim, dim)``: neighbouring coordinates
    (pixels, time steps) correlated by ``coefficient``, decaying with distance. Positive definite for
    ``|coefficient| < 1``."""
    if not -1.0 < coefficient < 1.0:
        raise ValueError(f"coefficient must lie in (-1, 1), got {coefficient}")
    if scale < 0:
        raise ValueError(f"scale must be non-negative, got {scale}")
    lag = torch.arange(dim)
    power = (lag[:, None] - lag[None, :]).abs().to(dtype)
    base = torch.tensor(coefficient, dtype=dtype)
    # 0 ** 0 = 1 on the diagonal, also for coefficient = 0
    return scale**2 * torch.where(power == 0, torch.ones_like(power), base.abs() ** power * base.sign() ** power)


def chapter4_network(dtype: torch.dtype = torch.float64) -> dict:
    """The fixed random network of the chapter 4 widget (sizes :data:`NETWORK_SIZES`, seed :data:`NETWORK_SEED`).

    Returns:
        dict of tensors: ``A (m, n)`` and ``B (p, m)`` with variance-preserving Gaussian entries, the input mean
        ``mean (n,)``, and ``direction (m,)``, the standard normal direction along which the bias shift moves
        the pre-activation means.
    """
    n, m, p = NETWORK_SIZES
    generator = torch.Generator().manual_seed(NETWORK_SEED)
    A = torch.randn(m, n, generator=generator, dtype=dtype) / math.sqrt(n)
    B = torch.randn(p, m, generator=generator, dtype=dtype) / math.sqrt(m)
    mean = torch.randn(n, generator=generator, dtype=dtype)
    direction = torch.randn(m, generator=generator, dtype=dtype)
    return {"A": A, "B": B, "mean": mean, "direction": direction}


def network_covariance_summary(
    noise_scale: float, ar_coefficient: float, bias_shift: float, n_samples: int = 20000, seed: int = 0,
) -> dict:
    """Output moments of the chapter 4 network ``g(x) = B relu(A x + c1)`` for ``x ~ N(mean, Sigma)``, with
    ``Sigma = noise_scale^2 AR(ar_coefficient)`` and ``c1 = -A mean + bias_shift * direction``, so that the
    pre-activation means are ``bias_shift * direction`` (all zero at ``bias_shift = 0``).

    Returns:
        dict of float64 tensors: ``mean (p,)`` and ``cov_exact (p, p)`` (:meth:`netmoments.AffineReLUAffine.moments`),
        ``cov_hybrid (p, p)`` (NM18's hybrid), ``var_diagonal_only (p,)`` (NM18's ``(B * B) Var[q]``, which drops
        every hidden covariance), ``hidden_h (m,)`` (standardised pre-activation means), Monte Carlo ``mc_mean``,
        ``mc_mean_se``, ``mc_cov``, ``mc_cov_se`` and ``samples (n_samples, p)`` (the draws of ``g``); and Python
        floats ``error_hybrid`` and ``error_mc`` (``||cov - cov_exact||_F / ||cov_exact||_F``),
        ``error_diagonal_only`` (largest relative error of an output variance) and ``max_z`` (largest
        ``|exact - MC| / SE`` over the output means and covariance entries).
    """
    if noise_scale <= 0:
        raise ValueError(f"noise_scale must be positive, got {noise_scale}")
    net = chapter4_network()
    A, B, mean = net["A"], net["B"], net["mean"]
    cov = ar1_covariance(A.shape[-1], ar_coefficient, noise_scale)
    c1 = -(A @ mean) + bias_shift * net["direction"]
    model = AffineReLUAffine(A, c1, B, torch.zeros(B.shape[0], dtype=A.dtype))
    out_mean, cov_exact = model.moments(mean, cov)
    _, cov_hybrid = model.moments(mean, cov, method="hybrid")
    y_mean, y_cov = model.hidden_moments(mean, cov)
    y_var = torch.diagonal(y_cov)
    _, q_var = relu_moments(y_mean, y_var)
    var_diagonal_only = (B * B) @ q_var
    kept = []

    def network(x):
        out = model(x)
        kept.append(out)
        return out

    generator = torch.Generator().manual_seed(seed)
    mc = monte_carlo_moments(network, mean, cov, n_samples, generator=generator, covariance=True)
    tiny = torch.finfo(A.dtype).tiny
    z = torch.cat([((out_mean - mc.mean) / mc.mean_se.clamp_min(tiny)).abs().reshape(-1),
                   ((cov_exact - mc.cov) / mc.cov_se.clamp_min(tiny)).abs().reshape(-1)])
    scale = torch.linalg.matrix_norm(cov_exact)
    exact_var = torch.diagonal(cov_exact)
    return {
        "mean": out_mean,
        "cov_exact": cov_exact,
        "cov_hybrid": cov_hybrid,
        "var_diagonal_only": var_diagonal_only,
        "hidden_h": y_mean / y_var.sqrt(),
        "mc_mean": mc.mean,
        "mc_mean_se": mc.mean_se,
        "mc_cov": mc.cov,
        "mc_cov_se": mc.cov_se,
        "samples": torch.cat(kept),
        "error_hybrid": (torch.linalg.matrix_norm(cov_hybrid - cov_exact) / scale).item(),
        "error_mc": (torch.linalg.matrix_norm(mc.cov - cov_exact) / scale).item(),
        "error_diagonal_only": ((var_diagonal_only - exact_var).abs() / exact_var).max().item(),
        "max_z": z.max().item(),
    }



#: The chapter 4 widget's grid (80 frames).
NETWORK_GRID = {
    "noise_scale": (0.25, 0.5, 1.0, 2.0),
    "ar_coefficient": (-0.5, 0.0, 0.5, 0.9),
    "bias_shift": (-2.0, -1.0, 0.0, 1.0, 2.0),
}


def network_covariance_widget(n_samples: int = 20000, seed: int = 0, *,
                              grid: Mapping[str, Sequence] | None = None, dpi: int = FRAME_DPI) -> FrameWidget:
    """Sliders for the input noise scale, the AR(1) correlation of the input noise and the bias shift of the
    pre-activation means; draws two outputs' samples with the exact and hybrid 2-sigma ellipses, and the exact
    output covariance beside the hybrid's error (see :func:`network_covariance_summary`). ``grid`` defaults to
    :data:`NETWORK_GRID`."""

    def compute(noise_scale, ar_coefficient, bias_shift):
        return network_covariance_summary(noise_scale, ar_coefficient, bias_shift, n_samples=n_samples, seed=seed)

    def describe(s):
        return (f"relative error of Cov[g] (Frobenius): hybrid {s['error_hybrid']:.3f}, Monte Carlo "
                f"{s['error_mc']:.3f}; diagonal-only variances: up to {s['error_diagonal_only']:.3f}; "
                f"largest |exact - MC|/SE = {s['max_z']:.2f}")

    grid = NETWORK_GRID if grid is None else grid
    initial = {"noise_scale": 0.5, "ar_coefficient": 0.5, "bias_shift": 1.0}
    return precomputed_widget(
        compute, viz.plot_network_covariance, grid, describe=describe, dpi=dpi, initial=_on_grid(initial, grid),
        descriptions={"noise_scale": "noise scale σ", "ar_coefficient": "AR(1) correlation φ",
                      "bias_shift": "bias shift t"},
    )
