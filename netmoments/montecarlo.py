"""Monte Carlo moments with standard errors, streamed in batches so memory stays bounded.

The closed forms are checked against this module, so it reports not just estimates but their standard
errors, computed from the same samples: a test then asks ``|analytic - MC| <= z * SE``.

A closed form can also make sampling better: with a *control variate* ``g`` whose moments are known exactly
(a linearized network, say) and that is evaluated on the same draws, ``E f = E g + mean(f - g)`` and
``Var f = Var g + (var(f) - var(g))`` are still unbiased, with the spread of ``f - g`` in place of that of ``f``.
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


def _result(dtype, n, mean, var, mean_se, var_se, cov=None, cov_se=None) -> MonteCarloResult:
    """The float64 accumulations as a :class:`MonteCarloResult` in the inputs' ``dtype``."""
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return MonteCarloResult(mean=cast(mean), var=cast(var), mean_se=cast(mean_se), var_se=cast(var_se), cov=cast(cov),
                            cov_se=cast(cov_se), n_samples=n)  # fmt: skip


class _StreamingControl:
    """Power sums of ``x = f - shift_f`` and ``y = g - shift_g`` for the control-variate estimators (float64)."""

    def __init__(self, shift_f: torch.Tensor, shift_g: torch.Tensor, covariance: bool):
        self.shift_f, self.shift_g = shift_f.to(torch.float64), shift_g.to(torch.float64)
        self.n = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.covariance = covariance

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    def update(self, f_values: torch.Tensor, g_values: torch.Tensor) -> None:
        x = f_values.to(torch.float64) - self.shift_f
        y = g_values.to(torch.float64) - self.shift_g
        x2, y2 = x * x, y * y
        self.n += x.shape[0]
        for name, value in (
            ("d", x - y), ("dd", (x - y) ** 2), ("x", x), ("y", y), ("xx", x2), ("yy", y2), ("xy", x * y),
            ("xxx", x2 * x), ("yyy", y2 * y), ("xxxx", x2 * x2), ("yyyy", y2 * y2), ("xxy", x2 * y),
            ("xyy", x * y2), ("xxyy", x2 * y2),
        ):  # fmt: skip
            self._add(name, value.sum(0))
        if self.covariance:
            # the (i, j) influence term of cov(f) - cov(g), about the shifts (the mean correction is O(1/N))
            outer = x.unsqueeze(-1) * x.unsqueeze(-2) - y.unsqueeze(-1) * y.unsqueeze(-2)
            self._add("c", outer.sum(0))
            self._add("cc", (outer * outer).sum(0))

    def result(self, exact_mean: torch.Tensor, exact_second: torch.Tensor, dtype: torch.dtype) -> MonteCarloResult:
        n = self.n
        m = {name: value / n for name, value in self.sums.items()}
        a, b = m["x"], m["y"]
        d_mean = m["d"]
        d_var = (m["dd"] - d_mean * d_mean).clamp_min(0) * n / (n - 1)
        mean = exact_mean.to(torch.float64) + (self.shift_f - self.shift_g) + d_mean
        mean_se = (d_var / n).sqrt()
        var_x, var_y = m["xx"] - a * a, m["yy"] - b * b
        # fourth central moments of x and y, and the mixed E[(x - a)^2 (y - b)^2], from the raw sums
        m4x = m["xxxx"] - 4 * a * m["xxx"] + 6 * a * a * m["xx"] - 3 * a**4
        m4y = m["yyyy"] - 4 * b * m["yyy"] + 6 * b * b * m["yy"] - 3 * b**4
        mixed = (
            m["xxyy"] - 2 * b * m["xxy"] + b * b * m["xx"] - 2 * a * m["xyy"] + 4 * a * b * m["xy"]
            - 2 * a * b * b * a + a * a * m["yy"] - 2 * a * a * b * b + a * a * b * b
        )  # fmt: skip
        influence_var = m4x - 2 * mixed + m4y - (var_x - var_y) ** 2
        exact_var = exact_second if not self.covariance else torch.diagonal(exact_second, dim1=-2, dim2=-1)
        var = exact_var.to(torch.float64) + (var_x - var_y) * n / (n - 1)
        var_se = (influence_var.clamp_min(0) / n).sqrt()
        cov = cov_se = None
        if self.covariance:
            outer_x = m["x"].unsqueeze(-1) * m["x"].unsqueeze(-2)
            outer_y = m["y"].unsqueeze(-1) * m["y"].unsqueeze(-2)
            cov = exact_second.to(torch.float64) + (m["c"] - outer_x + outer_y) * n / (n - 1)
            cov_se = ((m["cc"] - m["c"] ** 2).clamp_min(0) / n).sqrt()
        return _result(dtype, n, mean, var, mean_se, var_se, cov, cov_se)


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
        return _result(dtype, n, mean, var, mean_se, var_se, cov, cov_se)


def monte_carlo_moments(
    f: Callable[[torch.Tensor], torch.Tensor],
    mean: torch.Tensor,
    cov: torch.Tensor,
    n_samples: int,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
    covariance: bool = False,
    progress: bool = False,
    control=None,
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
        control: optional control variate ``g``: callable on the draws like ``f`` (same output shape) and with
            exact ``g.moments(mean, cov, output="var" or "cov")`` (an :class:`~netmoments.AffineReLUAffine`, e.g.
            a linearization of ``f``). The estimates become ``E g + mean(f - g)`` and ``Var g + var(f) - var(g)``
            (and likewise for the covariance): unbiased, with standard errors from the spread of ``f - g``.

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
    exact = None
    if control is not None:
        if not callable(control) or not callable(getattr(control, "moments", None)):
            raise TypeError(
                f"control must be callable on the draws and have exact moments(mean, cov, output=...), "
                f"got {type(control).__name__}"
            )
        with torch.no_grad():
            exact = control.moments(mean, cov, output="cov" if covariance else "var")
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
            x = mean + whiten_to_gaussian(z, factor)
            out = f(x)
            if not isinstance(out, torch.Tensor) or out.shape[0] != size:
                raise ValueError(
                    f"f must return a tensor whose first dimension is the number of draws ({size}), "
                    f"got {getattr(out, 'shape', type(out).__name__)}"
                )
            if out.dim() == 1 + len(batch):
                out = out.unsqueeze(-1)
            if exact is not None:
                out_g = control(x)
                if not isinstance(out_g, torch.Tensor) or out_g.dim() == 1 + len(batch):
                    out_g = torch.as_tensor(out_g).unsqueeze(-1)
                if out_g.shape != out.shape:
                    raise ValueError(f"control returned shape {tuple(out_g.shape)} on the draws but f returned {tuple(out.shape)}")
                if stats is None:
                    stats = _StreamingControl(out.to(torch.float64).mean(0), out_g.to(torch.float64).mean(0), covariance)
                stats.update(out.detach(), out_g.detach())
                done += size
                if bar is not None:
                    bar.update(size)
                continue
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
    if exact is not None:
        return stats.result(exact[0], exact[1], mean.dtype)
    return stats.result(mean.dtype)
