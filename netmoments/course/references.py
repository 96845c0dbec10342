"""Reference values the hidden tests compare against, and the values of typical wrong answers.

Every reference goes through the package's own, separately tested functions; the few calls whose argument
convention may change live here only (keyword arguments), so the notebooks never need to change with them.
The "wrong answers" are the results of common mistakes: when a student's answer matches one of them, the
feedback names the mistake.
"""
from __future__ import annotations

import math

import torch

import netmoments as nm

_SQRT_2PI = math.sqrt(2 * math.pi)


def _pdf(x):
    return torch.exp(-0.5 * x * x) / _SQRT_2PI


def relu_wrong_answers(mu: torch.Tensor, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
    """Typical wrong ``(mean, var)`` of ``max(z, 0)``, ``z ~ N(mu, sigma^2)``, ``sigma > 0``."""
    h = mu / sigma
    cdf, pdf = torch.special.ndtr(h), _pdf(h)
    mean = mu * cdf + sigma * pdf
    second = (mu * mu + sigma * sigma) * cdf + mu * sigma * pdf
    root = sigma.sqrt()  # sigma taken for the variance
    hv = mu / root
    mean_v = mu * torch.special.ndtr(hv) + root * _pdf(hv)
    second_v = (mu * mu + sigma) * torch.special.ndtr(hv) + mu * root * _pdf(hv)
    hf = -h
    mean_f = mu * torch.special.ndtr(hf) + sigma * _pdf(hf)
    return {
        "second_moment": second,
        "mean_without_pdf_term": mu * cdf,
        "variance_as_std_mean": mean_v,
        "variance_as_std_var": second_v - mean_v ** 2,
        "zero_mean_mean": sigma / _SQRT_2PI,
        "zero_mean_var": sigma * sigma * (0.5 - 1 / (2 * math.pi)),
        "flipped_sign_mean": mean_f,
    }


def cross_moment(mean_i, mean_j, std_i, std_j, rho):
    """``E[relu(x_i) relu(x_j)]`` for a bivariate normal, with standard deviations ``std_*`` (exact)."""
    cov = torch.stack([
        torch.stack([std_i * std_i, rho * std_i * std_j], -1),
        torch.stack([rho * std_i * std_j, std_j * std_j], -1),
    ], -2)
    mean = torch.stack([mean_i, mean_j], -1)
    mean, cov = torch.broadcast_tensors(mean.unsqueeze(-1), cov)
    mean = mean[..., 0]
    second = nm.relu_covariance(mean, cov, method="exact")[..., 0, 1]
    m, _ = nm.relu_moments(mean, torch.diagonal(cov, dim1=-2, dim2=-1))
    return second + m[..., 0] * m[..., 1]


def zero_mean_cross_moment(std_i, std_j, rho):
    """NM18's zero-mean ``E[relu(x_i) relu(x_j)] = std_i std_j c(rho)`` (package kernel)."""
    return std_i * std_j * nm.zero_mean_relu_kernel(rho)


def cross_wrong_answers(mean_i, mean_j, std_i, std_j, rho) -> dict[str, torch.Tensor]:
    """Typical wrong general-mean ``E[relu(x_i) relu(x_j)]`` (see :func:`cross_moment` for the right one)."""

    def formula(mi, mj, si, sj, r, flip=1.0, drop_last=False, drop_mixed=False, h_scale=None):
        hi = mi / (h_scale(si) if h_scale else si)
        hj = mj / (h_scale(sj) if h_scale else sj)
        s = torch.sqrt((1 - r) * (1 + r))
        phi2 = nm.bivariate_normal_cdf(hi, hj, flip * r)
        value = (mi * mj + r * si * sj) * phi2 + mj * si * _pdf(hi) * torch.special.ndtr((hj - r * hi) / s)
        if not drop_mixed:
            value = value + mi * sj * _pdf(hj) * torch.special.ndtr((hi - r * hj) / s)
        if not drop_last:
            value = value + si * sj * s * _pdf(hi) * _pdf((hj - r * hi) / s)
        return value

    args = (mean_i, mean_j, std_i, std_j, rho)
    return {
        "flipped_rho": formula(*args, flip=-1.0),
        "dropped_last_term": formula(*args, drop_last=True),
        "dropped_mixed_term": formula(*args, drop_mixed=True),
        "variance_as_std": formula(*args, h_scale=lambda s: s * s),
        "zero_mean_everywhere": zero_mean_cross_moment(std_i, std_j, rho),
    }
