"""Independent float64 references built from SciPy, used only by the tests.

They share no code with ``netmoments``: the ReLU moments come from numerical quadrature and the pair moment
from a one-dimensional quadrature over the conditional Gaussian, so an error in the closed forms or in Phi2
cannot cancel out.
"""
import math

import numpy as np
from scipy import integrate, stats


def relu_moments_quad(mu, sigma):
    """E[max(z,0)], Var[max(z,0)] for z ~ N(mu, sigma^2) by quadrature (sigma > 0)."""
    pdf = lambda x: stats.norm.pdf(x, mu, sigma)
    lo, hi = 0.0, max(0.0, mu) + 40 * sigma
    pts = [p for p in (mu,) if lo < p < hi] or None
    m1 = integrate.quad(lambda x: x * pdf(x), lo, hi, epsabs=1e-15, epsrel=1e-13, points=pts, limit=200)[0]
    m2 = integrate.quad(lambda x: x * x * pdf(x), lo, hi, epsabs=1e-15, epsrel=1e-13, points=pts, limit=200)[0]
    return m1, m2 - m1 * m1


def _relu_mean_closed(mu, sigma):
    if sigma == 0:
        return max(mu, 0.0)
    h = mu / sigma
    return mu * stats.norm.cdf(h) + sigma * stats.norm.pdf(h)


def cross_moment_quad(mi, mj, si, sj, rho):
    """E[q_i q_j] = int_0^inf x E[q_j | y_i = x] p_i(x) dx (one-dimensional quadrature)."""
    if si == 0:
        return max(mi, 0.0) * _relu_mean_closed(mj, sj)
    cond_sd = sj * math.sqrt(max(0.0, 1 - rho * rho))

    def integrand(x):
        cond_mean = mj + rho * sj * (x - mi) / si
        return x * _relu_mean_closed(cond_mean, cond_sd) * stats.norm.pdf(x, mi, si)

    lo, hi = 0.0, max(0.0, mi) + 40 * si
    pts = [p for p in (mi, mi - si * mj / (rho * sj) if rho != 0 and sj > 0 else None) if p is not None and lo < p < hi]
    return integrate.quad(integrand, lo, hi, epsabs=1e-15, epsrel=1e-13, points=pts or None, limit=400)[0]


def owens_t_phi2(h, k, rho):
    """Phi2(h, k; rho) from SciPy's Owen's T (spec section 4), vectorised numpy; finite h, k and |rho| < 1.

    The numerators k - rho h and h - rho k are formed without cancellation near |rho| = 1.
    """
    from scipy.special import ndtr, owens_t

    h, k, rho = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (h, k, rho)))
    s = np.sqrt((1 - rho) * (1 + rho))
    num_h = np.where(rho >= 0, (k - h) + (1 - rho) * h, (k + h) - (1 + rho) * h)  # k - rho h
    num_k = np.where(rho >= 0, (h - k) + (1 - rho) * k, (h + k) - (1 + rho) * k)  # h - rho k
    with np.errstate(divide="ignore", invalid="ignore"):
        t_h = np.where(h != 0, owens_t(h, num_h / (h * s)), np.sign(num_h) * 0.25)
        t_k = np.where(k != 0, owens_t(k, num_k / (k * s)), np.sign(num_k) * 0.25)
    beta = np.where((h * k < 0) | ((h * k == 0) & (h + k < 0)), 0.5, 0.0)
    out = 0.5 * (ndtr(h) + ndtr(k)) - t_h - t_k - beta
    return np.where((h == 0) & (k == 0), 0.25 + np.arcsin(rho) / (2 * np.pi), out)


def relu_covariance_reference(mean, cov):
    """Cov[q(y)] for y ~ N(mean, cov) entry by entry from the quadrature references (small m only)."""
    mean = np.asarray(mean, float)
    cov = np.asarray(cov, float)
    m = mean.shape[0]
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    first = np.array([_relu_mean_closed(mean[i], sd[i]) for i in range(m)])
    out = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            if i == j:
                out[i, i] = relu_moments_quad(mean[i], sd[i])[1] if sd[i] > 0 else 0.0
                continue
            rho = 0.0 if sd[i] == 0 or sd[j] == 0 else float(np.clip(cov[i, j] / (sd[i] * sd[j]), -1, 1))
            out[i, j] = cross_moment_quad(mean[i], mean[j], sd[i], sd[j], rho) - first[i] * first[j]
    return out
