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


def relu_wrong_answers(mean: torch.Tensor, var: torch.Tensor) -> dict[str, torch.Tensor]:
    """Typical wrong ``(mean, var)`` of ``max(z, 0)``, ``z ~ N(mean, var)``, ``var > 0`` (the book's convention:
    a variance, like :func:`netmoments.relu_moments`)."""
    mu, sigma = mean, var.sqrt()
    h = mu / sigma
    cdf, pdf = torch.special.ndtr(h), _pdf(h)
    second = (mu * mu + sigma * sigma) * cdf + mu * sigma * pdf
    hv = mu / var  # the variance taken for the standard deviation
    mean_v = mu * torch.special.ndtr(hv) + var * _pdf(hv)
    second_v = (mu * mu + var * var) * torch.special.ndtr(hv) + mu * var * _pdf(hv)
    hf = -h
    mean_f = mu * torch.special.ndtr(hf) + sigma * _pdf(hf)
    return {
        "second_moment": second,
        "mean_without_pdf_term": mu * cdf,
        "var_as_std_mean": mean_v,
        "var_as_std_var": second_v - mean_v ** 2,
        "zero_mean_mean": sigma / _SQRT_2PI,
        "zero_mean_var": var * (0.5 - 1 / (2 * math.pi)),
        "flipped_sign_mean": mean_f,
    }


def cross_moment(mean_i, mean_j, var_i, var_j, rho):
    """``E[relu(y_i) relu(y_j)]`` for a bivariate normal with variances ``var_*`` (exact, the package's own)."""
    return nm.relu_cross_moment(mean_i, mean_j, var_i, var_j, rho, method="exact")


def zero_mean_cross_moment(var_i, var_j, rho):
    """NM18's zero-mean ``E[relu(y_i) relu(y_j)] = sigma_i sigma_j c(rho)`` (package kernel)."""
    return torch.sqrt(var_i * var_j) * nm.zero_mean_relu_kernel(rho)


def cross_wrong_answers(mean_i, mean_j, var_i, var_j, rho) -> dict[str, torch.Tensor]:
    """Typical wrong general-mean ``E[relu(y_i) relu(y_j)]`` (see :func:`cross_moment` for the right one)."""

    def formula(mi, mj, si, sj, r, flip=1.0, drop_last=False, drop_mixed=False):
        # si, sj: what the student took for the standard deviations
        hi, hj = mi / si, mj / sj
        s = torch.sqrt((1 - r) * (1 + r))
        phi2 = nm.bivariate_normal_cdf(hi, hj, flip * r)
        value = (mi * mj + r * si * sj) * phi2 + mj * si * _pdf(hi) * torch.special.ndtr((hj - r * hi) / s)
        if not drop_mixed:
            value = value + mi * sj * _pdf(hj) * torch.special.ndtr((hi - r * hj) / s)
        if not drop_last:
            value = value + si * sj * s * _pdf(hi) * _pdf((hj - r * hi) / s)
        return value

    args = (mean_i, mean_j, var_i.sqrt(), var_j.sqrt(), rho)
    return {
        "flipped_rho": formula(*args, flip=-1.0),
        "dropped_last_term": formula(*args, drop_last=True),
        "dropped_mixed_term": formula(*args, drop_mixed=True),
        "var_as_std": formula(mean_i, mean_j, var_i, var_j, rho),
        "zero_mean_everywhere": zero_mean_cross_moment(var_i, var_j, rho),
    }
