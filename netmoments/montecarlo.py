"""Monte Carlo moments with standard errors, streamed in batches so memory stays bounded.

The closed forms are checked against this module, so it reports not just estimates but their standard
errors, computed from the same samples: a test then asks ``|analytic - MC| <= z * SE``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ._validation import check_compatible, check_covariance, check_finite, check_tensor
from .gaussian import covariance_sqrt, whiten_to_gaussian

__all__ = ["MonteCarloResult", "monte_carlo_moments"]


@dataclass
class MonteCarloResult:
    """Monte Carlo estimates of the moments of ``f(x)``, ``x ~ N(mean, cov)``; ``(...)`` is the batch shape.

    Attributes:
        mean: ``(..., p)`` sample mean.
        var: ``(..., p)`` unbiased sample variance.
        mean_se: ``(..., p)`` standard error of ``mean``: ``sqrt(var / N)``.
        var_se: ``(..., p)`` standard error of ``var``: ``sqrt((m4 - var^2) / N)`` with ``m4`` the fourth
            central sample moment (no Gaussian assumption on the output).
        cov: ``(..., p, p)`` unbiased sample covariance, or ``None`` unless requested.
        cov_se: ``(..., p, p)`` standard error of each ``cov`` entry, or ``None``.
        n_samples: ``N``.
    """

    mean: torch.Tensor
    var: torch.Tensor
    mean_se: torch.Tensor
    var_se: torch.Tensor
    cov: torch.Tensor | None
    cov_se: torch.Tensor | None
    n_samples: int

    def z_scores(self, mean: torch.Tensor, var: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``|analytic - MC| / SE`` for an analytic mean (and variance), elementwise."""
        tiny = torch.finfo(self.mean.dtype).tiny
        z_mean = (mean.to(self.mean) - self.mean).abs() / self.mean_se.clamp_min(tiny)
        if var is None:
            return (z_mean,)
        z_var = (var.to(self.var) - self.var).abs() / self.var_se.clamp_min(tiny)
        return z_mean, z_var


class _StreamingMoments:
    """Shifted power sums, merged batch by batch (float64 accumulators; the shift avoids cancellation)."""

    def __init__(self, shift: torch.Tensor, covariance: bool):
        self.shift = shift.to(torch.float64)
        zeros = torch.zeros_like(self.shift)
        self.n = 0
        self.s1, self.s2, self.s3, self.s4 = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
        self.covariance = covariance
        if covariance:
            outer = zeros.unsqueeze(-1) * zeros.unsqueeze(-2)
            self.c2, self.c2sq = outer.clone(), outer.clone()

    def update(self, values: torch.Tensor) -> None:
        d = values.to(torch.float64) - self.shift
        d2 = d * d
        self.n += d.shape[0]
        self.s1 += d.sum(0)
        self.s2 += d2.sum(0)
        self.s3 += (d2 * d).sum(0)
        self.s4 += (d2 * d2).sum(0)
        if self.covariance:
            outer = d.unsqueeze(-1) * d.unsqueeze(-2)
            self.c2 += outer.sum(0)
            self.c2sq += (outer * outer).sum(0)

    def result(self, dtype: torch.dtype) -> MonteCarloResult:
        n = self.n
        a = self.s1 / n  # mean of the shifted values
        m2 = self.s2 / n - a * a
        m4 = self.s4 / n - 4 * a * self.s3 / n + 6 * a * a * self.s2 / n - 3 * a**4
        var = (m2 * n / (n - 1)).clamp_min(0)
        mean = self.shift + a
        mean_se = (var / n).sqrt()
        var_se = ((m4 - m2 * m2).clamp_min(0) / n).sqrt()
        cov = cov_se = None
        if self.covariance:
            outer_mean = a.unsqueeze(-1) * a.unsqueeze(-2)
            cov_biased = self.c2 / n - outer_mean
            cov = cov_biased * n / (n - 1)
            # Var of the product of centred values, estimated about the shift; the mean correction is O(1/N).
            second = self.c2sq / n - (self.c2 / n) ** 2
            cov_se = (second.clamp_min(0) / n).sqrt()
            cov, cov_se = cov.to(dtype), cov_se.to(dtype)
        return MonteCarloResult(
            mean=mean.to(dtype),
            var=var.to(dtype),
            mean_se=mean_se.to(dtype),
            var_se=var_se.to(dtype),
            cov=cov,
            cov_se=cov_se,
            n_samples=n,
        )


def monte_carlo_moments(
    f: Callable[[torch.Tensor], torch.Tensor],
    mean: torch.Tensor,
    cov: torch.Tensor,
    n_samples: int,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
    covariance: bool = False,
    progress: bool = False,
) -> MonteCarloResult:
    """Estimate the mean and variance (and optionally covariance) of ``f(x)``, ``x ~ N(mean, cov)``.

    Draws are generated and pushed through ``f`` ``batch_size`` at a time under ``torch.no_grad()``;
    only running sums are kept, so memory does not grow with ``n_samples``.

    Args:
        f: maps samples ``(N, ..., n)`` to outputs ``(N, ..., p)`` (or ``(N, ...)`` for a scalar output).
        mean: ``(..., n)``.
        cov: ``(..., n, n)`` symmetric PSD (rank-deficient is fine: draws stay on its support).
        n_samples: total number of draws ``N >= 2``.
        batch_size: draws per batch.
        generator: optional ``torch.Generator`` on the inputs' device, for reproducibility.
        covariance: also estimate the ``(..., p, p)`` output covariance and its standard errors.
        progress: show a tqdm progress bar (needs ``tqdm``).

    Returns:
        :class:`MonteCarloResult` in ``mean``'s dtype, on its device.
    """
    check_tensor("mean", mean, min_dim=1)
    check_finite("mean", mean)
    cov = check_covariance("cov", cov, dim=mean.shape[-1])
    check_compatible(mean=mean, cov=cov)
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    with torch.no_grad():
        factor = covariance_sqrt(cov)
        batch = torch.broadcast_shapes(mean.shape[:-1], factor.shape[:-2])
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_samples, desc="Monte Carlo", unit="draw")
        stats = None
        done = 0
        while done < n_samples:
            size = min(batch_size, n_samples - done)
            z = torch.randn((size, *batch, mean.shape[-1]), generator=generator, dtype=mean.dtype, device=mean.device)
            out = f(mean + whiten_to_gaussian(z, factor))
            if not isinstance(out, torch.Tensor) or out.shape[0] != size:
                raise ValueError(
                    f"f must return a tensor whose first dimension is the number of draws ({size}), "
                    f"got {getattr(out, 'shape', type(out).__name__)}"
                )
            if out.dim() == 1 + len(batch):
                out = out.unsqueeze(-1)
            if stats is None:
                # Shift by the first batch's mean: later sums are of small numbers, so the
                # raw-moment formulas lose no precision.
                stats = _StreamingMoments(out.detach().to(torch.float64).mean(0), covariance)
            stats.update(out.detach())
            done += size
            if bar is not None:
                bar.update(size)
        if bar is not None:
            bar.close()
    return stats.result(mean.dtype)
