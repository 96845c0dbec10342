"""Monte Carlo with a control variate: unbiased, with the standard errors it reports, and cheaper."""
import math

import pytest
import torch
from scipy import stats

import netmoments as nm

f64 = dict(dtype=torch.float64)


def _pair(gen, n=4, m=10, p=3, perturb=0.15):
    """A network f and a nearby network g (the control), both with exact moments."""
    A = torch.randn(m, n, generator=gen, **f64) / math.sqrt(n)
    c1 = torch.randn(m, generator=gen, **f64)
    B = torch.randn(p, m, generator=gen, **f64) / math.sqrt(m)
    c2 = torch.randn(p, generator=gen, **f64)
    f = nm.AffineReLUAffine(A, c1, B, c2)
    g = nm.AffineReLUAffine(A + perturb * torch.randn(m, n, generator=gen, **f64), c1, B, c2)
    return f, g


def _z(n_checks, alpha=1e-3):
    return float(stats.norm.isf(alpha / (2 * n_checks)))


@pytest.mark.parametrize("covariance", [False, True])
def test_control_variate_estimates_are_unbiased_against_the_exact_moments(covariance, gen):
    f, g = _pair(gen)
    mean = torch.randn(4, generator=gen, **f64)
    cov = nm.random_spd(4, trace=4.0, generator=gen)
    exact_mean, exact_cov = f.moments(mean, cov)
    res = nm.monte_carlo_moments(f, mean, cov, 200_000, generator=gen, control=g, covariance=covariance)
    z = _z(3 + 3 + (9 if covariance else 0))
    z_mean, z_var = res.z_scores(exact_mean, torch.diagonal(exact_cov))
    assert z_mean.max() < z and z_var.max() < z
    if covariance:
        assert ((res.cov - exact_cov).abs() / res.cov_se).max() < z


def test_control_variate_reports_its_own_standard_error_and_reduces_it(gen):
    f, g = _pair(gen, perturb=0.1)
    mean = torch.randn(4, generator=gen, **f64)
    cov = nm.random_spd(4, trace=4.0, generator=gen)
    reps, n = 400, 400
    means, variances, mean_ses, var_ses = [], [], [], []
    for _ in range(reps):
        res = nm.monte_carlo_moments(f, mean, cov, n, generator=gen, control=g)
        means.append(res.mean)
        variances.append(res.var)
        mean_ses.append(res.mean_se)
        var_ses.append(res.var_se)
    spread_mean = torch.stack(means).std(0)
    spread_var = torch.stack(variances).std(0)
    # the empirical spread of the estimates over independent repetitions is what the estimator reports; the
    # standard deviation of `reps` normal estimates is known to about 1/sqrt(2 reps) = 3.5 %, so 20 % is > 5 sigma
    torch.testing.assert_close(spread_mean, torch.stack(mean_ses).mean(0), rtol=0.2, atol=0)
    torch.testing.assert_close(spread_var, torch.stack(var_ses).mean(0), rtol=0.25, atol=0)
    # a closer control removes more of the spread
    f, g = _pair(gen, perturb=0.02)
    plain = nm.monte_carlo_moments(f, mean, cov, 20_000, generator=gen)
    controlled = nm.monte_carlo_moments(f, mean, cov, 20_000, generator=gen, control=g)
    assert (controlled.mean_se < plain.mean_se / 2).all()
    assert (controlled.var_se < plain.var_se / 2).all()


def test_control_must_have_exact_moments_and_match_f(gen):
    f, g = _pair(gen)
    mean, cov = torch.zeros(4, **f64), torch.eye(4, **f64)
    with pytest.raises(TypeError, match="control"):
        nm.monte_carlo_moments(f, mean, cov, 100, control=lambda x: f(x))
    narrow = nm.AffineReLUAffine(g.A, g.c1, g.B[:2], g.c2[:2])
    with pytest.raises(ValueError, match="control returned shape"):
        nm.monte_carlo_moments(f, mean, cov, 100, control=narrow)
