"""Gaussian helpers: the papers' random covariance recipe, matrix square roots and sampling."""
from __future__ import annotations

import torch

from ._validation import check_compatible, check_covariance, check_finite, check_tensor

__all__ = ["random_spd", "covariance_sqrt", "sample_gaussian"]


def random_spd(
    dim: int,
    trace: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A random dense symmetric positive-definite matrix with a prescribed trace (NM20's recipe).

    Eigenvalues are ``1 - U(0, 1)`` (so in ``(0, 1]``), eigenvectors are the Q factor of the QR
    decomposition of a standard Gaussian matrix (sign-corrected so Q is Haar-distributed), and the matrix
    is scaled so that ``trace(Sigma) = trace``. With ``trace = dim * sigma**2`` the average per-coordinate
    standard deviation is ``sigma``.

    Args:
        dim: matrix size ``n``.
        trace: the target trace, ``> 0``.
        generator: optional ``torch.Generator`` (on ``device``) for reproducibility.

    Returns:
        ``(n, n)`` tensor of ``dtype`` on ``device``.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if not (float(trace) > 0 and float(trace) < float("inf")):
        raise ValueError(f"trace must be a positive finite number, got {trace!r}")
    if generator is not None and device is None:
        device = generator.device
    gauss = torch.randn(dim, dim, generator=generator, dtype=dtype, device=device)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones((), dtype=dtype, device=q.device))
    eig = 1.0 - torch.rand(dim, generator=generator, dtype=dtype, device=device)
    eig = eig * (float(trace) / eig.sum())
    sigma = (q * eig) @ q.mT
    return 0.5 * (sigma + sigma.mT)


def covariance_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """A factor ``L`` with ``L @ L.mT == cov`` for a batch ``(..., n, n)`` of PSD matrices.

    Uses Cholesky where it succeeds and a clamped eigen-decomposition (``V sqrt(max(w, 0))``) where the
    matrix is singular, so rank-deficient covariances are sampled exactly on their support.
    """
    chol, info = torch.linalg.cholesky_ex(cov)
    if not (info != 0).any():
        return chol
    w, v = torch.linalg.eigh(cov)
    eig_factor = v * w.clamp_min(0).sqrt().unsqueeze(-2)
    ok = (info == 0)[..., None, None]
    return torch.where(ok, chol, eig_factor)


def sample_gaussian(
    mean: torch.Tensor,
    cov: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    *,
    factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``n_samples`` from ``N(mean, cov)``.

    Args:
        mean: ``(..., n)``.
        cov: ``(..., n, n)`` symmetric PSD (may be rank-deficient).
        n_samples: number of draws.
        generator: optional ``torch.Generator`` on the inputs' device.
        factor: optional precomputed :func:`covariance_sqrt` of ``cov`` (skips the factorisation).

    Returns:
        ``(n_samples, ..., n)`` of ``mean``'s dtype and device.
    """
    check_tensor("mean", mean, min_dim=1)
    check_finite("mean", mean)
    cov = check_covariance("cov", cov, dim=mean.shape[-1])
    check_compatible(mean=mean, cov=cov)
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if factor is None:
        factor = covariance_sqrt(cov)
    batch = torch.broadcast_shapes(mean.shape[:-1], factor.shape[:-2])
    z = torch.randn((n_samples, *batch, mean.shape[-1]), generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + whiten_to_gaussian(z, factor)


def whiten_to_gaussian(z: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Map standard normal draws ``z`` ``(N, ..., n)`` to ``z @ factor.mT`` (zero-mean, covariance ``L L^T``)."""
    if factor.dim() == 2:
        return z @ factor.mT  # one GEMM for all draws
    # batched factors: put the draws inside each batch so the product is one batched GEMM
    return (z.movedim(0, -2) @ factor.mT).movedim(-2, 0)
