import math

import numpy as np
import pytest
import torch
from scipy import stats

import netmoments as nm

f64 = dict(dtype=torch.float64)


def test_random_spd_recipe(gen):
    sigma = nm.random_spd(50, trace=50 * 0.1**2, generator=gen)
    assert sigma.shape == (50, 50) and sigma.dtype == torch.float64
    assert torch.equal(sigma, sigma.T)
    eig = torch.linalg.eigvalsh(sigma)
    assert eig.min() > 0
    assert sigma.trace().item() == pytest.approx(0.5, rel=1e-12)
    # eigenvalues are 1 - U(0,1) rescaled: their ratio to the largest is (close to) uniform on (0, 1]
    ratios = (eig / eig.max()).numpy()
    assert stats.kstest(ratios[:-1], "uniform").pvalue > 1e-3


def test_random_spd_reproducible_and_errors():
    a = nm.random_spd(5, 5.0, generator=torch.Generator().manual_seed(0))
    b = nm.random_spd(5, 5.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="trace must be"):
        nm.random_spd(5, -1.0)
    with pytest.raises(ValueError, match="dim must be"):
        nm.random_spd(0, 1.0)


@pytest.mark.numerics
def test_sample_gaussian_moments_and_rank_deficient_support(gen):
    mean = torch.tensor([1.0, -2.0, 0.5], **f64)
    u = torch.tensor([[1.0], [2.0], [-1.0]], **f64)
    cov = u @ u.T  # rank one: every draw lies on the line mean + t u
    x = nm.sample_gaussian(mean, cov, 20_000, generator=gen)
    assert x.shape == (20_000, 3)
    resid = (x - mean) - ((x - mean) @ u / (u.T @ u)) * u.T
    assert resid.abs().max() < 1e-10
    emp = torch.cov((x - mean).T)
    se = (cov.diagonal() * math.sqrt(2 / 20_000)).max()
    assert (emp - cov).abs().max() < 6 * se


def test_monte_carlo_standard_errors_are_calibrated(gen):
    # f(x) = x for x ~ N(0, diag(v)): the truth is known, and the z-scores over many outputs must look N(0,1)
    p = 400
    var = torch.linspace(0.5, 2.0, p, **f64)
    mc = nm.monte_carlo_moments(lambda x: x, torch.zeros(p, **f64), torch.diag(var), n_samples=5000, batch_size=1024, generator=gen)
    z_mean = (mc.mean / mc.mean_se).numpy()
    z_var = ((mc.var - var) / mc.var_se).numpy()
    assert stats.kstest(z_mean, "norm").pvalue > 1e-3
    assert stats.kstest(z_var, "norm").pvalue > 1e-3
    # the variance SE of a Gaussian output is about var * sqrt(2 / N)
    np.testing.assert_allclose(mc.var_se.numpy(), (var * math.sqrt(2 / 5000)).numpy(), rtol=0.1)


@pytest.mark.numerics
def test_monte_carlo_streaming_equals_single_batch():
    mean = torch.tensor([0.3, -0.1], **f64)
    cov = torch.tensor([[1.0, 0.4], [0.4, 0.5]], **f64)
    f = lambda x: torch.relu(x) ** 2
    a = nm.monte_carlo_moments(f, mean, cov, 3000, batch_size=3000, generator=torch.Generator().manual_seed(5), covariance=True)
    b = nm.monte_carlo_moments(f, mean, cov, 3000, batch_size=3000, generator=torch.Generator().manual_seed(5), covariance=True)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    # against numpy's estimators on the same draws
    x = nm.sample_gaussian(mean, cov, 3000, generator=torch.Generator().manual_seed(5))
    y = f(x).numpy()
    np.testing.assert_allclose(a.mean.numpy(), y.mean(0), rtol=1e-12)
    np.testing.assert_allclose(a.var.numpy(), y.var(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(a.cov.numpy(), np.cov(y.T), rtol=1e-10)


def test_monte_carlo_batched_inputs_and_scalar_output(gen):
    means = torch.zeros(4, 3, **f64)
    covs = torch.eye(3, **f64).expand(4, 3, 3)
    mc = nm.monte_carlo_moments(lambda x: x.sum(-1), means, covs, n_samples=1000, generator=gen)
    assert mc.mean.shape == (4, 1) and mc.var.shape == (4, 1)


def test_monte_carlo_bad_inputs():
    mean, cov = torch.zeros(2, **f64), torch.eye(2, **f64)
    with pytest.raises(ValueError, match="n_samples must be"):
        nm.monte_carlo_moments(lambda x: x, mean, cov, 1)
    with pytest.raises(TypeError, match="f must be callable"):
        nm.monte_carlo_moments(3, mean, cov, 10)
    with pytest.raises(ValueError, match="first dimension"):
        nm.monte_carlo_moments(lambda x: x.sum(0), mean, cov, 10)
    with pytest.raises(ValueError, match="cov is not positive semi-definite"):
        nm.monte_carlo_moments(lambda x: x, mean, -cov, 10)


def _off_support(x: torch.Tensor, basis: torch.Tensor) -> float:
    """Largest distance of the rows of ``x`` from the span of the orthonormal columns of ``basis``."""
    return (x - (x @ basis) @ basis.T).abs().max().item()


# Both matrices are exact in binary and their small eigenvalue (about 1e-16 of the largest) is positive on every
# CPU, so an eigensolver or a Cholesky factorisation keeps it unless it is cut at a relative threshold: the old
# clamp at 0 left a 3e-8 factor column and draws 1e-7 off the support, here on any machine.
def _spurious_eigen_cov():
    """blockdiag(u u^T, 6e-16): rank one plus a rounding-level term; Cholesky fails, so eigh is used."""
    u = torch.tensor([1.0, 2.0, -1.0], **f64)
    cov = torch.zeros(4, 4, **f64)
    cov[:3, :3] = torch.outer(u, u)
    cov[3, 3] = 6e-16
    support = torch.zeros(4, 1, **f64)
    support[:3, 0] = u / u.norm()
    return cov, support


def _spurious_cholesky_cov():
    """[[4, 2], [2, 1 + 2^-50]]: Cholesky succeeds with a last pivot 2^-50 ~ 9e-16 (eigenvalue ~7e-16, relative 1.4e-16)."""
    cov = torch.tensor([[4.0, 2.0], [2.0, 1.0 + 2.0**-50]], **f64)
    support = torch.tensor([[2.0], [1.0]], **f64) / math.sqrt(5.0)
    return cov, support


@pytest.mark.numerics
@pytest.mark.parametrize("make", [_spurious_eigen_cov, _spurious_cholesky_cov], ids=["eigh", "cholesky"])
def test_covariance_sqrt_drops_rounding_level_eigenvalues(make, gen):
    cov, support = make()
    assert torch.linalg.eigvalsh(cov)[-2] > 0  # the premise: a positive, rounding-level eigenvalue
    factor = nm.gaussian.covariance_sqrt(cov)
    torch.testing.assert_close(factor @ factor.mT, cov, rtol=0, atol=1e-14)
    assert _off_support(factor.mT, support) < 1e-14
    mean = torch.linspace(-1.0, 1.0, cov.shape[0], **f64)
    x = nm.sample_gaussian(mean, cov, 20_000, generator=gen)
    assert _off_support(x - mean, support) < 1e-12


@pytest.mark.numerics
def test_covariance_sqrt_batch_mixes_cholesky_and_eigen_paths():
    singular, support = _spurious_cholesky_cov()
    definite = torch.tensor([[2.0, 0.3], [0.3, 1.0]], **f64)
    factor = nm.gaussian.covariance_sqrt(torch.stack([definite, singular, definite]))
    # a well-conditioned matrix keeps its Cholesky factor bit for bit (so seeded draws are unchanged) ...
    assert torch.equal(factor[0], torch.linalg.cholesky(definite))
    assert torch.equal(factor[2], factor[0])
    # ... and the numerically singular one in the same batch gets the rank-one eigen factor
    assert _off_support(factor[1].mT, support) < 1e-14
    torch.testing.assert_close(factor[1] @ factor[1].mT, singular, rtol=0, atol=1e-14)


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_covariance_sqrt_random_rank_deficient(dtype):
    # random low-rank covariances, rounded to dtype: a rounded singular matrix is sometimes "positive definite" to
    # Cholesky (tiny positive pivots); either way the factor must stay on the support to rounding level
    gen = torch.Generator().manual_seed(3)
    eps = torch.finfo(dtype).eps
    for n in (2, 3, 5, 12):
        for _ in range(40):
            q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, **f64))
            rank = int(torch.randint(1, n, (1,), generator=gen))
            w = torch.zeros(n, **f64)
            w[:rank] = 1e-3 + torch.rand(rank, generator=gen, **f64)
            cov = ((q * w) @ q.T).to(dtype)
            factor = nm.gaussian.covariance_sqrt(0.5 * (cov + cov.T)).double()
            assert (q[:, rank:].T @ factor).abs().max() < 100 * eps
            torch.testing.assert_close(factor @ factor.T, cov.double(), rtol=0, atol=100 * eps)


def test_covariance_sqrt_empty_matrix():
    assert nm.gaussian.covariance_sqrt(torch.zeros(2, 0, 0, **f64)).shape == (2, 0, 0)
