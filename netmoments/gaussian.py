"""Gaussian helpers: the papers' random covariance recipe, matrix square roots and sampling."""
from __future__ import annotations

import torch

from ._validation import check_compatible, check_covariance, check_dtype, check_finite, check_tensor

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
    check_dtype("dtype", dtype)
    if generator is not None and device is None:
        device = generator.device
    gauss = torch.randn(dim, dim, generator=generator, dtype=dtype, device=device)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones((), dtype=dtype, device=q.device))
    eig = 1.0 - torch.rand(dim, generator=generator, dtype=dtype, device=device)
    eig = eig * (float(trace) / eig.sum())
    sigma = (q * eig) @ q.mT
    return 0.5 * (sigma + sigma.mT)


def _rank_cutoff(dtype: torch.dtype, n: int) -> float:
    """Relative size ``n * eps`` below which an eigenvalue is indistinguishable from rounding noise.

    A symmetric eigensolver returns the eigenvalues of ``cov + E`` with ``|E| ~ n eps |cov|``, so an exact zero
    comes back as anything in about ``+-n eps lambda_max``, positive or negative depending on the CPU's kernels
    (numpy's ``matrix_rank`` uses the same rule). Clamping at 0 instead kept such noise as a ``sqrt(eps)``-sized
    factor column, and draws left the support by ~1e-7 on some CPUs.
    """
    return n * torch.finfo(dtype).eps


def _cholesky_well_conditioned(chol: torch.Tensor, cov: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """``(...)`` bool: the smallest eigenvalue of ``chol @ chol.mT`` is clearly above the rank cutoff.

    Cholesky also succeeds on many numerically singular matrices (rounding leaves tiny positive pivots), and its
    factor then spreads draws ``sqrt(eps)`` off the support. A few steps of inverse iteration with the factor
    (``O(n^2)`` each) estimate the smallest eigenvalue; a rank deficiency shows at once, because its eigenvalue
    is ``1 / eps`` times smaller than the others. The estimate is an upper bound, hence the margin of 100.
    """
    n = cov.shape[-1]
    # A fixed, generic start vector: the caller's random stream is left untouched, and no structured matrix
    # (e.g. one whose null space is orthogonal to the ones vector) hides its small eigenvalue from it.
    k = torch.arange(n, dtype=cov.dtype, device=cov.device)
    x = torch.cos(2.399963229728653 * k + 0.5).expand(*cov.shape[:-1]).unsqueeze(-1)
    x = x / torch.linalg.vector_norm(x, dim=-2, keepdim=True)
    growth = torch.ones(cov.shape[:-2], dtype=cov.dtype, device=cov.device)
    for _ in range(iterations):
        y = torch.cholesky_solve(x, chol)
        growth = torch.linalg.vector_norm(y, dim=(-2, -1))  # ||cov^-1 x|| <= 1 / lambda_min
        x = y / growth[..., None, None]
    scale = torch.linalg.matrix_norm(cov)  # Frobenius: >= lambda_max
    # NaN/inf (a breakdown on a singular factor) compares False: such matrices go to the eigen-decomposition.
    return growth.reciprocal() > 100.0 * _rank_cutoff(cov.dtype, n) * scale


def covariance_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """A factor ``L`` with ``L @ L.mT == cov`` for a batch ``(..., n, n)`` of symmetric PSD matrices.

    Uses the Cholesky factor where the matrix is clearly positive definite, and otherwise an eigen-decomposition
    ``V sqrt(w)`` in which every eigenvalue ``w <= n * eps * max(w)`` (rounding noise, see
    :func:`_rank_cutoff`) is set to exactly 0: a rank-deficient covariance is then sampled exactly on its support
    (to rounding of the eigenvectors), whatever the CPU's LAPACK returns for its zero eigenvalues.

    Args:
        cov: ``(..., n, n)`` float32/float64 symmetric positive semi-definite (not checked here).

    Returns:
        ``(..., n, n)`` of ``cov``'s dtype and device.
    """
    n = cov.shape[-1]
    if n == 0:
        return cov.clone()
    chol, info = torch.linalg.cholesky_ex(cov)
    ok = info == 0
    if bool(ok.any()):
        ok = ok & _cholesky_well_conditioned(torch.where(ok[..., None, None], chol, torch.eye(n, dtype=cov.dtype,
                                                                                            device=cov.device)), cov)
    if bool(ok.all()):
        return chol
    w, v = torch.linalg.eigh(cov)
    keep = w > _rank_cutoff(cov.dtype, n) * w[..., -1:]
    root = torch.where(keep, w, torch.ones_like(w)).sqrt() * keep
    eig_factor = v * root.unsqueeze(-2)
    return torch.where(ok[..., None, None], chol, eig_factor)


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
