"""Small tensor operations shared by the Gaussian attack and its baselines.

Everything works on flattened images ``(..., n)`` with ``n = C * H * W`` plus the image shape ``(C, H, W)``,
keeps the inputs' dtype and device, and is differentiable where it is used inside an objective.
"""
from __future__ import annotations

import math

import torch

from ..stats import wilson_interval  # kept importable here: chapter 8 imports it from this module

__all__ = [
    "gaussian_kernel1d",
    "blur",
    "blur_squared",
    "clipped_gaussian_moments",
    "soft_threshold",
    "project_l1_box",
    "project_l0_box",
    "total_variation",
    "wilson_interval",
]


_VAR_FLOOR = 1e-12


def gaussian_kernel1d(sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    """Normalized 1-D Gaussian kernel ``(2r + 1,)``, ``r = ceil(3 sigma)``; ``sigma = 0`` gives ``[1]``."""
    if sigma <= 0:
        return torch.ones(1, dtype=dtype, device=device)
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _band_matrix(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """``(size, size)`` matrix of zero-padded 1-D convolution with a symmetric ``kernel`` (so it is symmetric)."""
    r = kernel.numel() // 2
    idx = torch.arange(size, device=kernel.device)
    offset = idx[None, :] - idx[:, None] + r
    inside = (offset >= 0) & (offset < kernel.numel())
    return torch.where(inside, kernel[offset.clamp(0, kernel.numel() - 1)], torch.zeros((), dtype=kernel.dtype,
                                                                                       device=kernel.device))


def _separable(flat: torch.Tensor, shape: tuple[int, int, int], kernel: torch.Tensor) -> torch.Tensor:
    c, h, w = shape
    lead = flat.shape[:-1]
    if kernel.numel() == 1:
        return flat * kernel[0]
    # Zero-padded separable blur as K_h X K_w^T with banded matrices: with a symmetric kernel the operator G is
    # a symmetric matrix (G = G^T), so the same function applies G and G^T. Two small matmuls are far cheaper
    # (and steadier on a busy CPU) than depthwise conv2d and its backward on 28 x 28 images.
    x = flat.reshape(-1, c, h, w)
    x = _band_matrix(kernel, h) @ x @ _band_matrix(kernel, w).T
    return x.reshape(*lead, c * h * w)


def blur(flat: torch.Tensor, shape: tuple[int, int, int], sigma: float) -> torch.Tensor:
    """``G x``: zero-padded Gaussian blur of flattened images ``(..., C*H*W)``; ``sigma = 0`` is the identity."""
    if sigma <= 0:
        return flat
    return _separable(flat, shape, gaussian_kernel1d(sigma, flat.dtype, flat.device))


def blur_squared(flat: torch.Tensor, shape: tuple[int, int, int], sigma: float) -> torch.Tensor:
    """``(G * G) w``: elementwise-squared blur operator, so ``diag(G diag(w) G^T) = (G * G) w``."""
    if sigma <= 0:
        return flat
    k = gaussian_kernel1d(sigma, flat.dtype, flat.device)
    return _separable(flat, shape, k * k)


def clipped_gaussian_moments(mean: torch.Tensor, var: torch.Tensor, low: float = 0.0, high: float = 1.0):
    """Mean and variance of ``clip(z, low, high)`` for ``z ~ N(mean, var)``, elementwise.

    With ``a = (low - mu) / sigma``, ``b = (high - mu) / sigma`` and ``Z`` standard normal,
    ``clip(z) = mu + sigma clip(Z, a, b)``,
    ``E[clip(Z, a, b)] = a Phi(a) + b (1 - Phi(b)) + phi(a) - phi(b)`` and
    ``E[clip(Z, a, b)^2] = a^2 Phi(a) + b^2 (1 - Phi(b)) + Phi(b) - Phi(a) + a phi(a) - b phi(b)``.
    Evaluated in float64 (the variance ``sigma^2 (m2 - m1^2)`` cancels terms of size ``(mu / sigma)^2``);
    ``var = 0`` gives ``(clip(mu), 0)`` with finite gradients.

    Args:
        mean, var: ``(...)`` broadcastable, ``var >= 0``.

    Returns:
        ``(mean, var)`` of the clipped variable, in the inputs' dtype.
    """
    dtype = torch.promote_types(mean.dtype, var.dtype)
    mu = mean.double()
    v = var.double()
    positive = v > 0
    # Evaluate at var + tiny so that at var = 0 the gradient is the one-sided derivative (d Var / d var = 1
    # inside the box, 1/2 - 1/(2 pi) on its edge); the value there is replaced by the exact limit below.
    sigma = (v + _VAR_FLOOR).sqrt()
    a = (low - mu) / sigma
    b = (high - mu) / sigma
    cdf_a = torch.special.ndtr(a)
    sf_b = torch.special.ndtr(-b)
    pdf_a = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    pdf_b = torch.exp(-0.5 * b * b) / math.sqrt(2 * math.pi)
    m1 = a * cdf_a + b * sf_b + pdf_a - pdf_b
    m2 = a * a * cdf_a + b * b * sf_b + (1.0 - sf_b - cdf_a) + a * pdf_a - b * pdf_b
    out_mean = mu + sigma * m1
    out_var = (sigma * sigma * (m2 - m1 * m1)).clamp_min(0.0)
    # straight-through at var = 0: exact value (clip(mu), 0), gradient of the floored formula
    out_mean = torch.where(positive, out_mean, out_mean + (mu.clamp(low, high) - out_mean).detach())
    out_var = torch.where(positive, out_var, out_var - out_var.detach())
    return out_mean.to(dtype), out_var.to(dtype)


def soft_threshold(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Proximal map of ``threshold * |x|``: ``sign(x) max(|x| - threshold, 0)`` (exact zeros)."""
    return torch.sign(x) * (x.abs() - threshold).clamp_min(0.0)


def project_l1_box(z: torch.Tensor, radius: torch.Tensor, low: torch.Tensor, high: torch.Tensor, iters: int = 50):
    """Euclidean projection of each row of ``z`` ``(B, n)`` onto ``{d : ||d||_1 <= radius, low <= d <= high}``.

    ``low <= 0 <= high`` elementwise (``(B, n)`` or broadcastable; ``+-inf`` allowed), ``radius`` ``(B,)``.
    The solution is ``d_i = clip(soft_threshold(z_i, tau), low_i, high_i)`` with the smallest ``tau >= 0`` that
    meets the budget; ``tau`` is found by bisection (monotone, so ``iters`` halvings give ``2^-iters`` accuracy).
    """
    box = torch.minimum(torch.maximum(z, low), high)
    inside = box.abs().sum(-1) <= radius
    lo = torch.zeros_like(radius)
    hi = z.abs().amax(-1)
    for _ in range(iters):
        tau = 0.5 * (lo + hi)
        d = torch.minimum(torch.maximum(soft_threshold(z, tau[:, None]), low), high)
        over = d.abs().sum(-1) > radius
        lo = torch.where(over, tau, lo)
        hi = torch.where(over, hi, tau)
    d = torch.minimum(torch.maximum(soft_threshold(z, hi[:, None]), low), high)
    return torch.where(inside[:, None], box, d)


def project_l0_box(z: torch.Tensor, k: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``z`` ``(B, n)`` onto ``{d : ||d||_0 <= k_b, low <= d <= high}``.

    Keeping coordinate ``i`` at its box-feasible value ``clip(z_i)`` instead of 0 lowers the squared distance by
    ``z_i^2 - (z_i - clip(z_i))^2``; the projection keeps the ``k_b`` largest gains. ``k`` is ``(B,)`` int.
    """
    clipped = torch.minimum(torch.maximum(z, low), high)
    gain = z * z - (z - clipped) ** 2
    order = gain.argsort(dim=-1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(z.shape[-1], device=z.device).expand_as(order))
    keep = rank < k[:, None]
    return torch.where(keep, clipped, torch.zeros_like(clipped))


def total_variation(flat: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Anisotropic total variation ``sum |d_x| + |d_y|`` of flattened images ``(..., C*H*W)`` -> ``(...)``."""
    c, h, w = shape
    x = flat.reshape(*flat.shape[:-1], c, h, w)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().sum((-3, -2, -1))
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().sum((-3, -2, -1))
    return dx + dy
