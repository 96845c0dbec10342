"""Moments of the ReLU ``q = max(y, 0)`` of Gaussians: one unit, a correlated pair and a whole layer.

One unit ``z ~ N(mu, sigma^2)``, ``h = mu / sigma``: ``E[q] = mu Phi(h) + sigma phi(h)``,
``E[q^2] = (mu^2 + sigma^2) Phi(h) + mu sigma phi(h)``; ``sigma = 0`` gives the constant ``max(mu, 0)``. A pair:
the zero-mean arc-cosine kernel of NM18 (Bibi, Alfadly & Ghanem, CVPR 2018, Theorem 2) and the exact general-mean
cross moment of NM20 (Alfadly et al., arXiv 2006.11776), through the bivariate normal cdf Phi2.

All functions are elementwise / batched, keep their inputs' dtype and device, and are differentiable. Legal
degenerate inputs (zero variance, correlation of exactly +-1) return their exact limits with finite gradients:
every division is guarded by a "safe" denominator *before* it happens, because ``torch.where`` alone does not
stop NaN gradients flowing out of the branch it discards.
"""
from __future__ import annotations

import math

import torch

from ._validation import check_compatible, check_covariance, check_finite, check_tensor
from .special import _bivariate_cdf_values, bivariate_normal_cdf, bivariate_normal_cdf_series, normal_cdf, normal_pdf

__all__ = [
    "relu_moments",
    "relu_cross_moment",
    "relu_covariance",
    "zero_mean_relu_kernel",
    "RELU_COVARIANCE_METHODS",
]

#: The ``method`` values :func:`relu_covariance` accepts.
RELU_COVARIANCE_METHODS = ("exact", "series", "hybrid", "zero_mean")
_CROSS_METHODS = ("exact", "series", "zero_mean")
_INV_2PI = 1.0 / (2.0 * math.pi)


def _clip_h(h: torch.Tensor) -> torch.Tensor:
    """Clip standardized means at max_float^(1/4) (1e77 in float64, 1e9 in float32).

    That is far beyond any normal tail, where every phi and Phi factor is exactly 0 or 1, so no value changes
    and linear terms such as mu_j - rho s_j h_i stay exact; it keeps h*h finite, since an inf there would
    turn into NaN gradients through branches that torch.where discards.
    """
    bound = torch.finfo(h.dtype).max ** 0.25
    return h.clamp(-bound, bound)


def _safe_positive(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask x > 0, x with its non-positive entries replaced by 1) for guarded divisions and roots."""
    positive = x > 0
    return positive, torch.where(positive, x, torch.ones_like(x))


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(x, 0)) whose gradient at 0 is 0 instead of inf (so no NaN flows back through a zero variance)."""
    positive, x_safe = _safe_positive(x)
    return torch.where(positive, x_safe.sqrt(), torch.zeros_like(x))


def _relu_moments_std(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[q] and Var[q] for q = max(z, 0), z ~ N(mean, std^2), std >= 0, mean/std already broadcast."""
    positive, std_safe = _safe_positive(std)
    h = _clip_h(mean / std_safe)
    # Two algebraically equal forms, each free of catastrophic cancellation on its own side of h = 0.
    # For h >= 0 write Phi(h) = 1 - Phi(-h) and expand around the un-rectified moments (mean, std^2).
    # Each branch sees h clamped to its own side so the derivative at h = 0 is the one-sided (true) one.
    hp = h.clamp_min(0.0)
    tail = normal_cdf(-hp)
    r = normal_pdf(hp) - hp * tail  # E[(Z - h)^+] >= 0
    mean_pos = mean + std_safe * r
    var_pos = std_safe**2 * (1.0 - tail - hp * r - r * r)
    hn = h.clamp_max(0.0)
    cdf = normal_cdf(hn)
    first_neg = hn * cdf + normal_pdf(hn)
    mean_neg = std_safe * first_neg
    var_neg = std_safe**2 * ((1.0 + hn * hn) * cdf + hn * normal_pdf(hn) - first_neg * first_neg)
    nonneg = h >= 0
    e = torch.where(nonneg, mean_pos, mean_neg)
    v = torch.where(nonneg, var_pos, var_neg).clamp_min(0.0)
    e = torch.where(positive, e, torch.relu(mean))
    v = torch.where(positive, v, torch.zeros_like(v))
    return e, v


def relu_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``max(z, 0)`` for ``z ~ N(mean, var)``, elementwise.

    ``E[q] = mu Phi(h) + sigma phi(h)``, ``E[q^2] = (mu^2 + sigma^2) Phi(h) + mu sigma phi(h)``, ``h = mu / sigma``,
    evaluated in a cancellation-free form. ``var = 0`` gives the exact limit ``(max(mu, 0), 0)``.

    Args:
        mean: ``(...)`` floating tensor.
        var: ``(...)`` non-negative, broadcastable with ``mean``; same dtype and device.

    Returns:
        ``(E[q], Var[q])``, each of the broadcast shape.
    """
    check_tensor("mean", mean)
    check_tensor("var", var)
    check_compatible(mean=mean, var=var)
    check_finite("mean", mean)
    check_finite("var", var)
    if (var < 0).any():
        raise ValueError(f"var must be non-negative, got minimum {var.min().item():.3g}")
    mean, var = torch.broadcast_tensors(mean, var)
    return _relu_moments_std(mean, _safe_sqrt(var))


def zero_mean_relu_kernel(rho: torch.Tensor) -> torch.Tensor:
    """NM18's arc-cosine kernel ``c(rho) = (rho arccos(-rho) + sqrt(1 - rho^2)) / (2 pi)``.

    ``E[q_i q_j] = sigma_i sigma_j c(rho)`` when both pre-activations have zero mean. ``rho`` is clamped to
    ``[-1, 1]`` against round-off; the square root is guarded so the gradient at ``|rho| = 1`` is finite.
    """
    check_tensor("rho", rho)
    rho = rho.clamp(-1.0, 1.0)
    s = _safe_sqrt((1.0 - rho) * (1.0 + rho))
    # arccos has an infinite derivative at -rho = +-1; use arccos(-rho) = pi/2 + arcsin(rho) = pi - atan2(s, rho)
    # which has the same value but a finite gradient through the guarded s.
    angle = math.pi - torch.atan2(s, rho)
    return (rho * angle + s) * _INV_2PI


def _cross_moment(mi, mj, si, sj, rho, method: str, terms: int) -> torch.Tensor:
    """E[q_i q_j] for broadcastable arguments; no validation. See :func:`relu_cross_moment`.

    Per-unit quantities (``h``, ``phi(h)``) are computed on the unbroadcast shapes, so a caller that passes
    rows ``(..., r, 1)`` and columns ``(..., 1, c)`` pays ``O(r + c)`` for them and ``O(r c)`` only for the pairs.
    """
    if method == "zero_mean":
        return si * sj * zero_mean_relu_kernel(rho)
    rho = rho.clamp(-1.0, 1.0)
    pos_i, si_safe = _safe_positive(si)
    pos_j, sj_safe = _safe_positive(sj)
    hi = _clip_h(mi / si_safe)
    hj = _clip_h(mj / sj_safe)
    s = _safe_sqrt((1.0 - rho) * (1.0 + rho))
    pos_s, s_safe = _safe_positive(s)
    degenerate_pairs = not bool(pos_s.all())

    def conditional_cdf(d: torch.Tensor) -> torch.Tensor:
        # Phi(d / s); at s = 0 the exact limit is a step (1/2 on the tie d = 0).
        value = normal_cdf(d / s_safe)
        if degenerate_pairs:
            value = torch.where(pos_s, value, 0.5 * (1.0 + torch.sign(d)))
        return value

    if method == "exact":
        phi2 = bivariate_normal_cdf(hi, hj, rho)
    elif method == "series":
        phi2 = bivariate_normal_cdf_series(hi, hj, rho, terms=terms)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(f"method must be one of {_CROSS_METHODS}, got {method!r}")
    dj = hj - rho * hi
    si_pdf_i = si_safe * normal_pdf(hi)
    sj_pdf_j = sj_safe * normal_pdf(hj)
    last = si_pdf_i * sj_safe * s * normal_pdf(dj / s_safe)
    if degenerate_pairs:
        last = torch.where(pos_s, last, torch.zeros_like(last))
    value = (
        (mi * mj + rho * (si_safe * sj_safe)) * phi2
        + (mi * sj_pdf_j) * conditional_cdf(hi - rho * hj)
        + (mj * si_pdf_i) * conditional_cdf(dj)
        + last
    )
    if bool(pos_i.all()) and bool(pos_j.all()):
        return value
    # A unit with zero variance is the constant max(mu, 0), independent of the other unit.
    ei, _ = _relu_moments_std(mi, si)
    ej, _ = _relu_moments_std(mj, sj)
    return torch.where(pos_i & pos_j, value, ei * ej)


class _PairSecondMoment(torch.autograd.Function):
    """E[q_i q_j] as a function of (mu_i, mu_j, C_ii, C_jj, C_ij) with Gaussian-identity gradients.

    Price's theorem and Stein's lemma give every derivative in closed form from quantities the forward
    pass already needs, so the backward costs a few elementwise operations per pair instead of replaying
    the autograd graph of the whole formula (and of Phi2's quadrature):

    * dF/dC_ij = P(y_i > 0, y_j > 0) = Phi2(h_i, h_j; rho)
    * dF/dmu_i = E[1{y_i > 0} q_j] = mu_j Phi2 + rho s_j phi(h_i) Phi(d_j / s) + s_j phi(h_j) Phi(d_i / s)
    * dF/dC_ii = E[delta(y_i) q_j] / 2 = phi(h_i) s_j (d_j Phi(d_j / s) + s phi(d_j / s)) / (2 s_i)

    with s_i = sqrt(C_ii), rho = C_ij / (s_i s_j), s = sqrt(1 - rho^2), d_i = h_i - rho h_j, d_j = h_j - rho h_i.
    Inputs must have C_ii, C_jj > 0 (the caller substitutes a safe value for zero-variance units and masks them).
    Shapes broadcast: rows ``(..., r, 1)``, columns ``(..., 1, c)``, pairs ``(..., r, c)``.
    """

    @staticmethod
    def _pieces(mi, mj, vi, vj, cij):
        si, sj = vi.sqrt(), vj.sqrt()
        rho = (cij / (si * sj)).clamp(-1.0, 1.0)
        hi = _clip_h(mi / si)
        hj = _clip_h(mj / sj)
        s = _safe_sqrt((1.0 - rho) * (1.0 + rho))
        pos_s, s_safe = _safe_positive(s)
        return si, sj, rho, hi, hj, s, pos_s, s_safe

    @staticmethod
    def _conditional(d, s, pos_s, s_safe):
        """(Phi(d/s), s phi(d/s)) with their exact s = 0 limits (step with 1/2 on ties, and 0)."""
        x = d / s_safe
        cdf = normal_cdf(x)
        scaled_pdf = s * normal_pdf(x)
        if not bool(pos_s.all()):
            cdf = torch.where(pos_s, cdf, 0.5 * (1.0 + torch.sign(d)))
            scaled_pdf = torch.where(pos_s, scaled_pdf, torch.zeros_like(scaled_pdf))
        return cdf, scaled_pdf

    @staticmethod
    def forward(ctx, mi, mj, vi, vj, cij):
        si, sj, rho, hi, hj, s, pos_s, s_safe = _PairSecondMoment._pieces(mi, mj, vi, vj, cij)
        phi2 = _bivariate_cdf_values(hi, hj, rho)
        cdf_i, _ = _PairSecondMoment._conditional(hi - rho * hj, s, pos_s, s_safe)
        cdf_j, spdf_j = _PairSecondMoment._conditional(hj - rho * hi, s, pos_s, s_safe)
        si_pdf_i = si * normal_pdf(hi)
        value = (mi * mj + cij) * phi2 + (mi * (sj * normal_pdf(hj))) * cdf_i + (mj * si_pdf_i) * cdf_j
        value = value + (si_pdf_i * sj) * spdf_j
        ctx.save_for_backward(mi, mj, vi, vj, cij, phi2)
        return value

    @staticmethod
    def backward(ctx, grad):
        mi, mj, vi, vj, cij, phi2 = ctx.saved_tensors
        si, sj, rho, hi, hj, s, pos_s, s_safe = _PairSecondMoment._pieces(mi, mj, vi, vj, cij)
        di = hi - rho * hj
        dj = hj - rho * hi
        cdf_i, spdf_i = _PairSecondMoment._conditional(di, s, pos_s, s_safe)
        cdf_j, spdf_j = _PairSecondMoment._conditional(dj, s, pos_s, s_safe)
        pdf_i = normal_pdf(hi)
        pdf_j = normal_pdf(hj)
        needs = ctx.needs_input_grad
        grads = [None] * 5
        if needs[0]:
            grads[0] = (grad * (mj * phi2 + (rho * sj) * pdf_i * cdf_j + (sj * pdf_j) * cdf_i)).sum_to_size(mi.shape)
        if needs[1]:
            grads[1] = (grad * (mi * phi2 + (rho * si) * pdf_j * cdf_i + (si * pdf_i) * cdf_j)).sum_to_size(mj.shape)
        if needs[2]:
            grads[2] = (grad * ((0.5 * pdf_i / si) * sj * (dj * cdf_j + spdf_j))).sum_to_size(vi.shape)
        if needs[3]:
            grads[3] = (grad * ((0.5 * pdf_j / sj) * si * (di * cdf_i + spdf_i))).sum_to_size(vj.shape)
        if needs[4]:
            grads[4] = (grad * phi2).sum_to_size(cij.shape)
        return tuple(grads)


def relu_cross_moment(
    mean_i: torch.Tensor,
    mean_j: torch.Tensor,
    var_i: torch.Tensor,
    var_j: torch.Tensor,
    rho: torch.Tensor,
    method: str = "exact",
    terms: int | None = 5,
) -> torch.Tensor:
    """``E[max(y_i, 0) max(y_j, 0)]`` for a bivariate Gaussian pair, elementwise.

    The pair is ``y_i ~ N(mean_i, var_i)``, ``y_j ~ N(mean_j, var_j)`` with correlation ``rho``: like
    :func:`relu_moments`, it takes *variances* (not standard deviations).

    ``method="exact"`` is NM20's general-mean closed form with the exact Phi2; ``"series"`` replaces Phi2 by
    NM20's truncated series with ``terms`` terms (``terms=None``: no truncation, the exact Phi2, as in
    :func:`netmoments.bivariate_normal_cdf_series`); ``"zero_mean"`` is NM18's arc-cosine formula, which
    *ignores the means* (exact only when both means are zero).

    Args:
        mean_i, mean_j: ``(...)`` means of the pair.
        var_i, var_j: ``(...)`` variances, ``>= 0`` (0 is legal: that unit is a constant).
        rho: ``(...)`` correlation in ``[-1, 1]`` (``+-1`` is legal).

    Returns:
        ``(...)`` the broadcast shape of all inputs, same dtype and device.
    """
    args = dict(mean_i=mean_i, mean_j=mean_j, var_i=var_i, var_j=var_j, rho=rho)
    for name, value in args.items():
        check_tensor(name, value)
        check_finite(name, value)
    check_compatible(**args)
    if method not in _CROSS_METHODS:
        raise ValueError(f"method must be one of {_CROSS_METHODS}, got {method!r}")
    for name in ("var_i", "var_j"):
        if (args[name] < 0).any():
            raise ValueError(f"{name} must be non-negative, got minimum {args[name].min().item():.3g}")
    if (rho.abs() > 1 + 1e-12).any():
        raise ValueError(f"rho must lie in [-1, 1], got extreme {rho.abs().max().item():.6g}")
    mi, mj, vi, vj, r = torch.broadcast_tensors(mean_i, mean_j, var_i, var_j, rho)
    # _safe_sqrt: a zero variance has a finite (zero) gradient instead of sqrt's infinite one.
    return _cross_moment(mi, mj, _safe_sqrt(vi), _safe_sqrt(vj), r, method, terms)


def _check_method(method: str, terms: int | None) -> None:
    if method not in RELU_COVARIANCE_METHODS:
        raise ValueError(f"method must be one of {RELU_COVARIANCE_METHODS}, got {method!r}")
    # terms=None means what it means in netmoments.special: no truncation, the exact Phi2.
    if terms is not None and (not isinstance(terms, int) or terms < 1):
        raise ValueError(f"terms must be a positive int or None (exact), got {terms!r}")


def relu_covariance(
    mean: torch.Tensor,
    cov: torch.Tensor,
    method: str = "exact",
    terms: int | None = 5,
    *,
    chunk_elements: int = 1 << 18,
    validate: bool = True,
) -> torch.Tensor:
    """Covariance ``Cov[q(y)]`` of ``q = max(y, 0)`` for ``y ~ N(mean, cov)``.

    Methods (the diagonal is always the exact one-unit variance ``(mu^2 + sigma^2) Phi(h) + mu sigma phi(h) -
    E[q]^2``, ``h = mu / sigma``, except for ``"zero_mean"``):

    * ``"exact"``: off-diagonal from NM20's general-mean cross moment with the exact Phi2.
    * ``"series"``: the same with NM20's truncated Phi2 series (``terms`` terms).
    * ``"hybrid"``: NM18's estimate, off-diagonal ``sigma_i sigma_j (c(rho) - 1/(2 pi))`` ignoring the means.
    * ``"zero_mean"``: NM18's zero-mean formula everywhere (exact only if ``mean == 0``).

    The ``m (m - 1) / 2`` pair computations are done in row blocks of about ``chunk_elements`` pairs, so the
    extra memory beyond the ``(..., m, m)`` result stays bounded for large ``m``.

    The exact off-diagonals are computed without forming ``E[q_i q_j] - E[q_i] E[q_j]`` (which cancels like
    ``eps mu_i mu_j``): their error is ``~eps sigma_i sigma_j`` for any means, in float32 too. The series method
    keeps NM20's form and runs in float64 for float32 inputs. ``terms`` may be any positive int, or ``None``
    for no truncation (the exact Phi2, as in :mod:`netmoments.special`): ``method="series", terms=None`` is
    ``method="exact"``.

    Args:
        mean: ``(..., m)`` pre-activation means, float32 or float64; ``m = 0`` gives an empty ``(..., 0, 0)``.
        cov: ``(..., m, m)`` pre-activation covariance (PSD, may be rank-deficient), same dtype/device.

    Returns:
        ``(..., m, m)`` symmetric covariance of the rectified units.
    """
    if validate:
        check_tensor("mean", mean, min_dim=1)
        check_finite("mean", mean)
        cov = check_covariance("cov", cov, dim=mean.shape[-1])
        check_compatible(mean=mean, cov=cov)
    _check_method(method, terms)
    if method == "series" and terms is None:
        method = "exact"  # the untruncated series is the exact Phi2
    m = mean.shape[-1]
    batch = torch.broadcast_shapes(mean.shape[:-1], cov.shape[:-2])
    mean = mean.expand(*batch, m)
    cov = cov.expand(*batch, m, m)
    std = _safe_sqrt(torch.diagonal(cov, dim1=-2, dim2=-1))
    std_safe = torch.where(std > 0, std, torch.ones_like(std))
    if method in ("hybrid", "zero_mean"):
        return _kernel_covariance(mean, cov, std, std_safe, method)
    if method == "series" and mean.dtype == torch.float32:
        # E[q_i q_j] - E[q_i] E[q_j] cancels like mu_i mu_j eps: float32 lost the whole covariance at |mu|/sigma ~ 1e3.
        # The series keeps NM20's form (the exact method's reflection below would change which Phi2 it
        # approximates), so it runs in float64, good to |mu|/sigma ~ 1e6 for a float32 result.
        return relu_covariance(mean.double(), cov.double(), method, terms, chunk_elements=chunk_elements,
                               validate=False).to(mean.dtype)
    return _pairwise_covariance(mean, cov, std, std_safe, method, terms, chunk_elements)


def _kernel_covariance(mean, cov, std, std_safe, method: str) -> torch.Tensor:
    """NM18's ``"hybrid"`` / ``"zero_mean"`` covariance ``(..., m, m)`` from the arc-cosine kernel.

    Off the diagonal ``sigma_i sigma_j (c(rho_ij) - 1/(2 pi))`` (exact only for zero means); ``"hybrid"`` puts the
    exact one-unit variances on the diagonal. ``mean (..., m)``, ``cov (..., m, m)``, ``std``/``std_safe (..., m)``
    (``std_safe`` is ``std`` with zeros replaced by ones), all already broadcast to one batch shape.
    """
    rho_full = (cov / (std_safe.unsqueeze(-1) * std_safe.unsqueeze(-2))).clamp(-1.0, 1.0)
    outer = std.unsqueeze(-1) * std.unsqueeze(-2)
    result = outer * (zero_mean_relu_kernel(rho_full) - _INV_2PI)
    if method == "zero_mean":
        return result
    _, exact_var = _relu_moments_std(mean, std)
    return result - torch.diag_embed(torch.diagonal(result, dim1=-2, dim2=-1)) + torch.diag_embed(exact_var)


def _pairwise_covariance(mean, cov, std, std_safe, method: str, terms: int, chunk_elements: int) -> torch.Tensor:
    """The ``"exact"`` / ``"series"`` covariance ``(..., m, m)``, one pair at a time in row blocks.

    Shapes as in :func:`_kernel_covariance`. Each block holds about ``chunk_elements`` pairs, so peak memory is
    the result plus one block of temporaries.
    """
    batch, m = mean.shape[:-1], mean.shape[-1]
    first, exact_var = _relu_moments_std(mean, std)
    var_safe = std_safe * std_safe
    if method == "exact":
        # Cov[q_i, q_j] without the cancellation of E[q_i q_j] - E[q_i] E[q_j] (both ~ mu_i mu_j for large means,
        # which lost every digit of a float32 covariance from |mu|/sigma ~ 500). A unit with mu >= 0 is written
        # q = y + relu(-y) (flip = 1) and Stein's lemma gives Cov[y_i, relu(-y_j)] = -C_ij Phi(-h_j), so
        #   Cov[q_i, q_j] = C_ij (f_i Phi(h_j) + f_j Phi(h_i) - f_i f_j) + Cov[r_i, r_j],
        # r = relu(-y) for flipped units and q otherwise: every remaining term is a moment of a unit whose mean is
        # <= 0, of size sigma_i sigma_j at most, so the error stays eps sigma_i sigma_j for any means.
        flip = mean >= 0
        flipped = flip.to(mean.dtype)
        sign = 1.0 - 2.0 * flipped
        reflected_mean = torch.where(flip, -mean, mean)
        reflected_first, _ = _relu_moments_std(reflected_mean, std)
        cdf_h = normal_cdf(_clip_h(mean / std_safe))
    zero_var = bool((std == 0).any())
    n_batch = max(1, math.prod(batch))
    rows_per_block = max(1, chunk_elements // max(1, n_batch * m))
    # Written block by block into one buffer so peak memory is the result plus one block of temporaries.
    upper = torch.zeros(*batch, m, m, dtype=mean.dtype, device=mean.device)
    for start in range(0, m, rows_per_block):
        stop = min(m, start + rows_per_block)
        # Only columns >= start: the rest of this row block is the transpose of an earlier block.
        rows, cols = slice(start, stop), slice(start, m)
        mi, mj = mean[..., rows, None], mean[..., None, cols]
        cij = cov[..., rows, cols]
        # The block's diagonal is discarded below; give it a harmless covariance (rho = 0) so no infinite
        # derivative at |rho| = 1 can turn into 0 * inf = NaN in the gradient.
        on_diagonal = torch.arange(start, stop, device=mean.device)[:, None] == torch.arange(start, m, device=mean.device)
        cij = torch.where(on_diagonal, torch.zeros_like(cij), cij)
        if method == "exact":
            fi, fj = flipped[..., rows, None], flipped[..., None, cols]
            reflected = _PairSecondMoment.apply(
                reflected_mean[..., rows, None], reflected_mean[..., None, cols],
                var_safe[..., rows, None], var_safe[..., None, cols],
                (sign[..., rows, None] * sign[..., None, cols]) * cij,
            )
            linear = fi * cdf_h[..., None, cols] + fj * cdf_h[..., rows, None] - fi * fj
            block = cij * linear + (reflected - reflected_first[..., rows, None] * reflected_first[..., None, cols])
            if zero_var:
                # A unit with zero variance is the constant max(mu, 0), independent of the other unit.
                keep = (std[..., rows, None] > 0) & (std[..., None, cols] > 0)
                block = torch.where(keep, block, torch.zeros_like(block))
        else:
            si, sj = std[..., rows, None], std[..., None, cols]
            rho = cij / (std_safe[..., rows, None] * std_safe[..., None, cols])
            second = _cross_moment(mi, mj, si, sj, rho, method, terms)
            block = second - first[..., rows, None] * first[..., None, cols]
        upper[..., rows, cols] = block
    upper = upper.triu(diagonal=1)
    upper.diagonal(dim1=-2, dim2=-1).copy_(0.5 * exact_var)
    return upper + upper.mT
