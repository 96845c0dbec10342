import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import netmoments as nm
from reference import cross_moment_quad, relu_covariance_reference, relu_moments_quad

f64 = dict(dtype=torch.float64)


def t(x):
    return torch.as_tensor(x, **f64)


# ---------------------------------------------------------------- one unit (spec section 2)
@pytest.mark.parametrize("mu,sigma", [(0.0, 1.0), (0.7, 1.3), (-2.0, 0.5), (5.0, 0.3), (-4.0, 2.0), (12.0, 1.0)])
@pytest.mark.numerics
def test_relu_moments_match_quadrature(mu, sigma):
    e, v = nm.relu_moments(t(mu), t(sigma**2))
    e_ref, v_ref = relu_moments_quad(mu, sigma)
    assert abs(e.item() - e_ref) <= 1e-12 * max(1, abs(e_ref))
    assert abs(v.item() - v_ref) <= 1e-12 * max(1, abs(v_ref))


@pytest.mark.numerics
def test_relu_moments_zero_mean_closed_form():
    sigma = t([0.5, 1.0, 3.0])
    e, v = nm.relu_moments(torch.zeros(3, **f64), sigma**2)
    torch.testing.assert_close(e, sigma / math.sqrt(2 * math.pi), rtol=1e-15, atol=0)
    torch.testing.assert_close(v, sigma**2 * (math.pi - 1) / (2 * math.pi), rtol=1e-14, atol=0)


def test_relu_moments_zero_variance_is_exact_limit_with_finite_gradients():
    mean = t([-1.0, 0.0, 2.0]).requires_grad_()
    var = torch.zeros(3, **f64, requires_grad=True)
    e, v = nm.relu_moments(mean, var)
    assert e.tolist() == [0.0, 0.0, 2.0] and v.tolist() == [0.0, 0.0, 0.0]
    (e.sum() + v.sum()).backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(var.grad).all()


def test_relu_moments_large_ratio_keeps_precision():
    # mu/sigma = 1e4: the naive E[q^2] - E[q]^2 would lose 8 digits; the variance must still be sigma^2.
    e, v = nm.relu_moments(t(1e4), t(1.0))
    assert v.item() == pytest.approx(1.0, rel=1e-12)
    assert e.item() == pytest.approx(1e4, rel=1e-15)


def test_relu_moments_gradcheck():
    mean = t([-1.5, -0.2, 0.0, 0.3, 2.5]).requires_grad_()
    var = t([0.4, 1.0, 2.0, 0.05, 1.7]).requires_grad_()
    assert torch.autograd.gradcheck(nm.relu_moments, (mean, var))
    assert torch.autograd.gradgradcheck(nm.relu_moments, (mean, var))


@given(mu=st.floats(-20, 20), sigma=st.floats(1e-3, 20))
def test_relu_moments_properties(mu, sigma):
    e, v = nm.relu_moments(t(mu), t(sigma**2))
    # max(z, 0) >= z and >= 0; a 1-Lipschitz map cannot increase the variance.
    assert e.item() >= max(mu, 0.0) - 1e-12 * (1 + abs(mu))
    assert 0.0 <= v.item() <= sigma**2 * (1 + 1e-12)


# ---------------------------------------------------------------- a pair (spec section 3)
SPEC_CROSS = [((0.7, -0.3, 1.3, 0.8, 0.6), 0.359227391170802), ((2.0, 1.5, 1.0, 0.3, 0.9), 3.276593518299237)]


@pytest.mark.parametrize("args,expected", SPEC_CROSS)
@pytest.mark.numerics
def test_cross_moment_spec_reference_values(args, expected):
    mi, mj, si, sj, rho = args
    value = nm.relu_cross_moment(t(mi), t(mj), t(si**2), t(sj**2), t(rho))
    assert abs(value.item() - expected) < 1e-13


@pytest.mark.parametrize("rho,expected", [(-0.9, 0.004769199422336), (0.0, 0.159154943091895), (0.5, 0.304498890522115)])
def test_zero_mean_kernel_spec_values(rho, expected):
    assert abs(nm.zero_mean_relu_kernel(t(rho)).item() - expected) < 1e-14


def test_zero_mean_kernel_limits():
    values = nm.zero_mean_relu_kernel(t([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(values, t([0.0, 1 / (2 * math.pi), 0.5]), rtol=0, atol=1e-16)


def test_cross_moment_against_quadrature_random_grid():
    rng = np.random.default_rng(0)
    for _ in range(25):
        mi, mj = rng.normal(0, 2, 2)
        si, sj = rng.uniform(0.1, 3, 2)
        rho = rng.uniform(-0.999, 0.999)
        got = nm.relu_cross_moment(t(mi), t(mj), t(si**2), t(sj**2), t(rho)).item()
        ref = cross_moment_quad(mi, mj, si, sj, rho)
        assert abs(got - ref) <= 1e-11 * max(1.0, abs(ref)), (mi, mj, si, sj, rho, got, ref)


@pytest.mark.parametrize("rho", [1.0, -1.0])
def test_cross_moment_at_unit_correlation_is_exact_limit(rho):
    for mi, mj, si, sj in [(0.4, -0.2, 1.0, 2.0), (-0.5, 1.0, 0.7, 0.3), (1.0, 2.0, 1.0, 2.0)]:
        got = nm.relu_cross_moment(t(mi), t(mj), t(si**2), t(sj**2), t(rho)).item()
        ref = cross_moment_quad(mi, mj, si, sj, rho)
        near = nm.relu_cross_moment(t(mi), t(mj), t(si**2), t(sj**2), t(rho * (1 - 1e-12))).item()
        assert abs(got - ref) < 1e-11
        assert abs(got - near) < 1e-5  # continuous at the limit


def test_cross_moment_diagonal_equals_second_moment():
    mu, sigma = t(0.37), t(1.9)
    e, v = nm.relu_moments(mu, sigma**2)
    second = nm.relu_cross_moment(mu, mu, sigma**2, sigma**2, t(1.0))
    torch.testing.assert_close(second, v + e * e, rtol=1e-13, atol=0)


def test_cross_moment_takes_variances_like_relu_moments():
    # Both pair functions take variances (relu_moments(mean, var), relu_cross_moment(..., var_i, var_j, rho)).
    # With var != std (here var = 4, std = 2) a call that passed standard deviations would disagree with the
    # independent quadrature reference, which is parametrised by standard deviations.
    mi, mj, si, sj, rho = 0.4, -0.3, 2.0, 0.5, 0.35
    got = nm.relu_cross_moment(t(mi), t(mj), t(si**2), t(sj**2), t(rho)).item()
    assert got == pytest.approx(cross_moment_quad(mi, mj, si, sj, rho), rel=1e-11, abs=1e-13)
    wrong = nm.relu_cross_moment(t(mi), t(mj), t(si), t(sj), t(rho)).item()
    assert abs(wrong - got) > 1e-2
    # rho = 1 on one unit reproduces relu_moments' second moment with the very same variance argument
    e, v = nm.relu_moments(t(mi), t(si**2))
    torch.testing.assert_close(nm.relu_cross_moment(t(mi), t(mi), t(si**2), t(si**2), t(1.0)), v + e * e,
                               rtol=1e-13, atol=0)


def test_cross_moment_zero_variance_is_product_of_means():
    got = nm.relu_cross_moment(t(0.8), t(0.3), t(0.0), t(1.44), t(0.5))
    e_j, _ = nm.relu_moments(t(0.3), t(1.44))
    torch.testing.assert_close(got, 0.8 * e_j, rtol=1e-15, atol=0)


def test_cross_moment_general_reduces_to_zero_mean():
    rho = torch.linspace(-0.99, 0.99, 21, **f64)
    vi, vj = t(1.3**2), t(0.6**2)
    exact = nm.relu_cross_moment(t(0.0), t(0.0), vi, vj, rho)
    zero_mean = nm.relu_cross_moment(t(0.0), t(0.0), vi, vj, rho, method="zero_mean")
    torch.testing.assert_close(exact, zero_mean, rtol=1e-13, atol=1e-15)


def test_cross_moment_gradcheck_including_near_unit_correlation_and_small_variance():
    args = [
        t([0.7, -0.4, 1.2, 0.0]).requires_grad_(),
        t([-0.3, 0.9, 1.1, 0.0]).requires_grad_(),
        t([1.69, 0.04, 1e-4, 1.0]).requires_grad_(),
        t([0.64, 1.21, 0.25, 4.0]).requires_grad_(),
        t([0.6, -0.3, 0.999, -0.9995]).requires_grad_(),
    ]
    assert torch.autograd.gradcheck(nm.relu_cross_moment, args)


def test_cross_moment_gradients_finite_at_degenerate_points():
    args = [t([0.5, 0.5, -0.2]), t([0.1, 0.3, 0.4]), t([0.0, 1.0, 1.0]), t([1.0, 1.0, 0.0]), t([0.3, 1.0, -1.0])]
    args = [a.requires_grad_() for a in args]
    nm.relu_cross_moment(*args).sum().backward()
    for a in args:
        assert torch.isfinite(a.grad).all()


def test_cross_moment_series_close_to_exact():
    rng = np.random.default_rng(3)
    mi, mj = (t(rng.normal(0, 1, 200)) for _ in range(2))
    si, sj = (t(rng.uniform(0.5, 2, 200)) for _ in range(2))
    rho = t(rng.uniform(-0.95, 0.95, 200))
    exact = nm.relu_cross_moment(mi, mj, si**2, sj**2, rho)
    series = nm.relu_cross_moment(mi, mj, si**2, sj**2, rho, method="series", terms=10)
    scale = (mi * mj + rho * si * sj).abs() + 1
    assert ((exact - series).abs() / scale).max() < 1e-2
    assert ((exact - series).abs() / scale).max() > 0  # it is an approximation, not the exact path


# ---------------------------------------------------------------- a layer
def _layer(gen, m=6, n=4):
    a = torch.randn(m, n, generator=gen, **f64)
    a[1] = 2.0 * a[0]  # parallel rows: rho = 1 off the diagonal
    a[2] = 0.0  # a unit with zero variance
    sigma = nm.random_spd(n, trace=float(n), generator=gen)
    cov = a @ sigma @ a.T
    mean = torch.randn(m, generator=gen, **f64)
    return mean, 0.5 * (cov + cov.T)


@pytest.mark.numerics
def test_relu_covariance_exact_matches_reference_with_degenerate_units(gen):
    mean, cov = _layer(gen)
    got = nm.relu_covariance(mean, cov)
    ref = relu_covariance_reference(mean.numpy(), cov.numpy())
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-11)
    assert torch.equal(got, got.T)


def test_relu_covariance_methods_relationships(gen):
    mean, cov = _layer(gen)
    exact = nm.relu_covariance(mean, cov)
    hybrid = nm.relu_covariance(mean, cov, method="hybrid")
    zero_mean = nm.relu_covariance(mean, cov, method="zero_mean")
    series = nm.relu_covariance(mean, cov, method="series", terms=5)
    torch.testing.assert_close(torch.diagonal(hybrid), torch.diagonal(exact), rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.diagonal(series), torch.diagonal(exact), rtol=1e-14, atol=0)
    off = ~torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(hybrid[off], zero_mean[off], rtol=0, atol=0)
    # with non-zero means the 2018 formulas are visibly wrong
    assert (hybrid - exact).abs().max() > 1e-2
    # and at zero means all coincide
    zero = torch.zeros_like(mean)
    torch.testing.assert_close(nm.relu_covariance(zero, cov), nm.relu_covariance(zero, cov, method="zero_mean"), rtol=1e-12, atol=1e-13)


def test_relu_covariance_chunking_does_not_change_the_result(gen):
    mean, cov = _layer(gen)
    whole = nm.relu_covariance(mean, cov)
    chunked = nm.relu_covariance(mean, cov, chunk_elements=5)
    torch.testing.assert_close(whole, chunked, rtol=0, atol=0)


@pytest.mark.numerics
def test_relu_covariance_batched_equals_per_item(gen):
    items = [_layer(gen) for _ in range(3)]
    means = torch.stack([m for m, _ in items])
    covs = torch.stack([c for _, c in items])
    batched = nm.relu_covariance(means, covs, chunk_elements=40)
    for b, (m, c) in enumerate(items):
        torch.testing.assert_close(batched[b], nm.relu_covariance(m, c), rtol=1e-15, atol=1e-16)


def test_relu_covariance_float32_close_to_float64(gen):
    mean, cov = _layer(gen)
    c64 = nm.relu_covariance(mean, cov)
    c32 = nm.relu_covariance(mean.float(), cov.float())
    assert c32.dtype == torch.float32
    torch.testing.assert_close(c32.double(), c64, rtol=1e-4, atol=1e-5)


def test_relu_covariance_gradcheck_and_finite_at_degenerate_units(gen):
    mean, _ = _layer(gen, m=4, n=3)
    mean = mean.requires_grad_()
    # full-rank random case for gradcheck (through a covariance factor so perturbations stay PSD)
    factor = torch.randn(4, 4, generator=gen, **f64).requires_grad_()

    def fn(mu, f):
        return nm.relu_covariance(mu, f @ f.T + 0.1 * torch.eye(4, **f64))

    assert torch.autograd.gradcheck(fn, (mean, factor))
    # degenerate case: gradients finite
    mean2, cov2 = _layer(gen)
    cov2 = cov2.requires_grad_()
    mean2 = mean2.requires_grad_()
    nm.relu_covariance(mean2, cov2).sum().backward()
    assert torch.isfinite(cov2.grad).all() and torch.isfinite(mean2.grad).all()


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    good_mean, good_cov = torch.zeros(3, **f64), torch.eye(3, **f64)
    with pytest.raises(ValueError, match="var must be non-negative"):
        nm.relu_moments(t(0.0), t(-1.0))
    with pytest.raises(TypeError, match="mean must be a torch.Tensor"):
        nm.relu_moments(0.0, t(1.0))
    with pytest.raises(ValueError, match="mean contains NaN"):
        nm.relu_moments(t(float("nan")), t(1.0))
    with pytest.raises(ValueError, match="rho must lie in"):
        nm.relu_cross_moment(t(0.0), t(0.0), t(1.0), t(1.0), t(1.5))
    with pytest.raises(ValueError, match="var_i must be non-negative"):
        nm.relu_cross_moment(t(0.0), t(0.0), t(-1.0), t(1.0), t(0.5))
    with pytest.raises(ValueError, match="method must be one of"):
        nm.relu_covariance(good_mean, good_cov, method="bogus")
    with pytest.raises(ValueError, match="cov is not symmetric"):
        nm.relu_covariance(good_mean, good_cov + torch.triu(torch.ones(3, 3, **f64), 1))
    with pytest.raises(ValueError, match="cov is not positive semi-definite"):
        nm.relu_covariance(good_mean, torch.diag(t([1.0, -0.5, 1.0])))
    with pytest.raises(ValueError, match=r"cov must be \(3, 3\)"):
        nm.relu_covariance(good_mean, torch.eye(4, **f64))
    with pytest.raises(ValueError, match="cov contains inf"):
        nm.relu_covariance(good_mean, good_cov + torch.diag(t([float("inf"), 0.0, 0.0])))
    with pytest.raises(TypeError, match="dtype"):
        nm.relu_covariance(good_mean.float(), good_cov)
    with pytest.raises(TypeError, match="floating dtype"):
        nm.relu_covariance(torch.zeros(3, dtype=torch.int64), good_cov)


@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(2, 7),
    rank=st.integers(1, 7),
    shift=st.floats(-3, 3),
)
@pytest.mark.numerics
def test_relu_covariance_is_a_valid_covariance(seed, m, rank, shift):
    # Any covariance of a random vector is symmetric PSD; a 1-Lipschitz map shrinks each variance;
    # correlations stay in [-1, 1]. Rank-deficient inputs included.
    g = torch.Generator().manual_seed(seed)
    root = torch.randn(m, min(rank, m), generator=g, **f64)
    cov = root @ root.T
    mean = shift + torch.randn(m, generator=g, **f64)
    out = nm.relu_covariance(mean, cov)
    assert torch.equal(out, out.T)
    scale = out.diagonal().max().clamp_min(1e-300)
    assert torch.linalg.eigvalsh(out).min() >= -1e-10 * scale
    assert (out.diagonal() <= cov.diagonal() * (1 + 1e-12) + 1e-15).all()
    sd = out.diagonal().sqrt()
    assert (out.abs() <= sd[:, None] * sd[None, :] * (1 + 1e-9) + 1e-15).all()


@pytest.mark.parametrize("far", [39.0, 41.0, 135.0, -80.0])
def test_relu_covariance_gradient_exact_when_a_partner_is_far_in_the_tail(far):
    # Regression: standardized means were once clipped at 40 inside linear terms of the backward pass.
    mean = t([0.17, far]).requires_grad_()
    factor = torch.linalg.cholesky(t([[1.0, -0.3], [-0.3, 1.0]])).requires_grad_()

    def fn(mu, f):
        return nm.relu_covariance(mu, f @ f.T)

    assert torch.autograd.gradcheck(fn, (mean, factor))


# ---------------------------------------------------------------- large |mean| / sd (cancellation)
def _pair_cov_mpmath(mu_i, mu_j, s_i, s_j, rho, mpmath):
    """Cov[relu(y_i), relu(y_j)] in 40-digit arithmetic: E[q_i E[q_j | y_i]] by 1-D quadrature, minus the means."""
    mu_i, mu_j, s_i, s_j, rho = (mpmath.mpf(x) for x in (mu_i, mu_j, s_i, s_j, rho))
    cond_sd = s_j * mpmath.sqrt(1 - rho**2)

    def relu_mean(m, s):
        return m * mpmath.ncdf(m / s) + s * mpmath.npdf(m / s)

    def integrand(y):
        return y * mpmath.npdf(y, mu_i, s_i) * relu_mean(mu_j + rho * s_j * (y - mu_i) / s_i, cond_sd)

    points = sorted({mpmath.mpf(0), *(max(mpmath.mpf(0), mu_i + k * s_i) for k in (-12, -4, 0, 4, 12))})
    second = mpmath.quad(integrand, points + [mpmath.inf])
    return second - relu_mean(mu_i, s_i) * relu_mean(mu_j, s_j)


# (h_i, h_j, rho): standardized means up to 1e4 on both sides of 0; sd_i = 2, sd_j = 0.5
_LARGE_MEAN_PAIRS = [
    (1e4, 1e4, 0.3), (1e4, -3.0, -0.6), (-1e4, 5.0, 0.8), (500.0, -500.0, 0.3), (500.0, 800.0, -0.45),
    (3e3, 2.5, 0.9), (-2e3, -1.5, 0.5), (60.0, 0.0, -0.7), (3.0, -2.0, 0.6), (1e3, 1e3, -0.999),
]


def _large_mean_batch(dtype):
    h = torch.tensor([[p[0], p[1]] for p in _LARGE_MEAN_PAIRS], **f64)
    rho = torch.tensor([p[2] for p in _LARGE_MEAN_PAIRS], **f64)
    sd = t([2.0, 0.5])
    cov = torch.zeros(len(rho), 2, 2, **f64)
    cov[:, 0, 0], cov[:, 1, 1] = sd[0] ** 2, sd[1] ** 2
    cov[:, 0, 1] = cov[:, 1, 0] = rho * sd[0] * sd[1]
    return (h * sd).to(dtype), cov.to(dtype)


@pytest.mark.numerics
def test_relu_covariance_large_means_match_high_precision_reference():
    mpmath = pytest.importorskip("mpmath")
    mean, cov = _large_mean_batch(torch.float64)
    got = nm.relu_covariance(mean, cov)[:, 0, 1]
    with mpmath.workdps(40):
        ref = [float(_pair_cov_mpmath(*mean[b].tolist(), 2.0, 0.5, p[2], mpmath)) for b, p in enumerate(_LARGE_MEAN_PAIRS)]
    # absolute error relative to sd_i sd_j = 1: E[q_i q_j] - E[q_i] E[q_j] lost ~eps (mu_i mu_j) = 1e-8 here before
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-14)


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["exact", "series"])
def test_relu_covariance_float32_keeps_off_diagonals_at_large_means(method):
    # float32 used to return 0 (or 7-100 % off) for |mean| / sd >~ 500; compare with float64 on the same inputs
    mean32, cov32 = _large_mean_batch(torch.float32)
    got = nm.relu_covariance(mean32, cov32, method=method)
    assert got.dtype == torch.float32
    ref = nm.relu_covariance(mean32.double(), cov32.double(), method=method)
    # errors relative to sd_i sd_j (= 1 off the diagonal, 4 and 0.25 on it)
    np.testing.assert_allclose(got.double().numpy(), ref.numpy(), rtol=2e-6, atol=2e-6)


@pytest.mark.numerics
def test_relu_covariance_large_means_gradients():
    mean = t([3e3, -40.0, 0.0, 700.0]).requires_grad_()
    factor = torch.linalg.cholesky(t([[1.0, 0.3, -0.2, 0.1], [0.3, 1.0, 0.4, 0.0],
                                      [-0.2, 0.4, 1.0, 0.5], [0.1, 0.0, 0.5, 1.0]])).requires_grad_()
    assert torch.autograd.gradcheck(lambda mu, f: nm.relu_covariance(mu, f @ f.T), (mean, factor))


def test_relu_covariance_series_any_number_of_terms(gen):
    # NaN from ~135 terms and OverflowError from 171 before the series was scaled; now it converges to "exact"
    mean, cov = _layer(gen)
    exact = nm.relu_covariance(mean, cov)
    errors = []
    for terms in (5, 150, 171, 1000):
        series = nm.relu_covariance(mean, cov, method="series", terms=terms)
        assert torch.isfinite(series).all()
        errors.append((series - exact).abs().max().item())
        cross = nm.relu_cross_moment(mean[0], mean[1], cov[0, 0], cov[1, 1], cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt(),
                                     method="series", terms=terms)
        assert torch.isfinite(cross)
    assert errors[0] > errors[1] >= errors[3] and errors[3] < 1e-4
