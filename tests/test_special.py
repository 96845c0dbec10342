"""Tests of netmoments.special against independent SciPy / mpmath references (spec sections 3a, 3b, 3d, 4, 8).

The references below share no code with the package: Phi2 from SciPy's Owen's T (spec 4), from adaptive
quadrature of Plackett's integral, from mpmath and from ``scipy.stats.multivariate_normal``; the NM20 series
from SciPy's ``gammainc`` and ``eval_hermite``.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, special, stats

import netmoments.special as sp
from reference import owens_t_phi2
from netmoments import (
    bivariate_normal_cdf,
    bivariate_normal_cdf_series,
    bivariate_normal_pdf,
    normal_cdf,
    normal_pdf,
    series_integral,
)

f64 = dict(dtype=torch.float64)
INF = math.inf
EXACT_TOL = 1e-14  # contract: 1e-13; measured error is ~3e-16, the reference's own error ~2e-16


def t(x, dtype=torch.float64):
    return torch.as_tensor(np.asarray(x, dtype=float), dtype=dtype)


# ------------------------------------------------------------------------------------------ references
def plackett_quad_phi2(h, k, rho):
    """Phi2 = Phi(h)Phi(k) + (1/2pi) int_0^{asin rho} exp(-(h^2+k^2-2hk sin t)/(2cos^2 t)) dt, adaptive quadrature."""
    f = lambda th: math.exp(-(h * h + k * k - 2 * h * k * math.sin(th)) / (2 * math.cos(th) ** 2))
    value, _ = integrate.quad(f, 0.0, math.asin(rho), epsabs=1e-15, epsrel=1e-13, limit=200)
    return special.ndtr(h) * special.ndtr(k) + value / (2 * math.pi)


def limit_phi2(h, k, rho):
    """Exact Phi2 where it is a univariate quantity: |rho| = 1 or an infinite argument."""
    if h == -INF or k == -INF:
        return 0.0
    if h == INF:
        return special.ndtr(k)
    if k == INF:
        return special.ndtr(h)
    if rho == 1:
        return special.ndtr(min(h, k))
    assert rho == -1
    return max(0.0, special.ndtr(h) - special.ndtr(-k))


def series_reference(a, b, c, n_terms):
    """NM20's I_N written literally from spec 3d with SciPy's gammainc, Hermite and Gamma (scalar)."""
    if abs(a) >= 1:
        sa = math.copysign(1.0, a)
        inner = series_reference(1 / abs(a), -b / a, sa * (a * c + b), n_terms)
        return sa * (math.sqrt(math.pi) / 2 - inner) - math.sqrt(math.pi) / 2 * special.erf(a * c + b) * special.erf(c)
    total = math.sqrt(math.pi) / 2 * special.erf(b) * (1 - special.erf(c))
    acc = 0.0
    for u in range(n_terms):
        acc += (a / 2) ** (2 * u + 1) * special.eval_hermite(2 * u, b) * (1 - special.gammainc(u + 1, c * c)) / special.gamma(u + 1.5)
        acc -= ((a / 2) ** (2 * u + 2) * special.eval_hermite(2 * u + 1, b)
                * (1 - np.sign(c) * special.gammainc(u + 1.5, c * c)) / special.gamma(u + 2))
    return total + math.exp(-b * b) * acc


def integral_quad(a, b, c):
    value, _ = integrate.quad(lambda x: special.erf(a * x + b) * math.exp(-x * x), c, INF, epsabs=1e-15, epsrel=1e-13)
    return value


# ------------------------------------------------------------------------------------------ univariate
@pytest.mark.numerics
def test_normal_pdf_and_cdf_match_scipy():
    x = np.array([-INF, -40.0, -8.0, -1.3, 0.0, 0.2, 3.0, 9.0, INF])
    np.testing.assert_allclose(normal_pdf(t(x)).numpy(), stats.norm.pdf(x), rtol=1e-14, atol=0)
    np.testing.assert_allclose(normal_cdf(t(x)).numpy(), special.ndtr(x), rtol=2e-14, atol=0)
    assert normal_pdf(t(x, torch.float32)).dtype == torch.float32


def test_univariate_gradcheck():
    x = torch.tensor([-6.0, -0.4, 0.0, 1.2, 5.0], **f64, requires_grad=True)
    for fn in (normal_pdf, normal_cdf):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_gauss_legendre_nodes_match_numpy():
    for n in (1, 4, 7, 12, 22):
        nodes, weights = sp._gauss_legendre(n)
        ref_nodes, ref_weights = np.polynomial.legendre.leggauss(n)
        np.testing.assert_allclose(np.sort(nodes), ref_nodes, rtol=0, atol=1e-15)
        # numpy's own weights are good to ~1e-13 relative; ours are correctly rounded (exactness check below).
        np.testing.assert_allclose(np.array(weights)[np.argsort(nodes)], ref_weights, rtol=2e-13, atol=0)
        x, w = np.array(nodes), np.array(weights)
        for j in range(n):  # exact for polynomials of degree <= 2n - 1
            assert abs(w @ x ** (2 * j) - 2 / (2 * j + 1)) <= 4e-16


# ------------------------------------------------------------------------------------------ Phi2 values
@pytest.mark.numerics
def test_phi2_random_pairs_match_owens_t():
    rng = np.random.default_rng(0)
    n = 20_000
    h = np.concatenate([rng.normal(0, 1.5, n), rng.uniform(-10, 10, n)])
    k = np.concatenate([rng.normal(0, 1.5, n), rng.uniform(-10, 10, n)])
    rho = rng.uniform(-1, 1, 2 * n)
    err = np.abs(bivariate_normal_cdf(t(h), t(k), t(rho)).numpy() - owens_t_phi2(h, k, rho))
    assert err.max() <= EXACT_TOL


RHO_GRID = [0.0, 0.049, 0.3, 0.5, 0.7071, 0.75, 0.8999, 0.925, 0.95, 0.975, 0.99, 0.999, 0.99999]


@pytest.mark.parametrize("rho", RHO_GRID + [-r for r in RHO_GRID if r])
@pytest.mark.numerics
def test_phi2_grid_matches_owens_t(rho):
    grid = np.concatenate([np.linspace(-10, 10, 41), [-0.37, 0.0, 1e-8, 2.4]])
    h, k = (x.ravel() for x in np.meshgrid(grid, grid))
    # Includes h = 0, k = 0, h = k and h = -k (the support lines at |rho| -> 1).
    err = np.abs(bivariate_normal_cdf(t(h), t(k), t(rho)).numpy() - owens_t_phi2(h, k, rho))
    assert err.max() <= EXACT_TOL


def test_band_cells_are_exact():
    # Bands are unions of cells floor(|rho| R); cell R must hold |rho| = 1 and nothing else.
    resolution = sp._BAND_RESOLUTION
    assert math.floor(math.nextafter(1.0, 0.0) * resolution) == resolution - 1
    assert all(abs(edge * resolution - round(edge * resolution)) < 1e-9 for edge, _, _ in sp._BANDS)
    assert sp._BANDS[-1][0] == 1.0


@pytest.mark.numerics
def test_phi2_band_edges_are_accurate_from_both_sides():
    edges = sorted({edge for edge, _, _ in sp._BANDS if edge < 1})
    rho = np.array([np.nextafter(e, s) for e in edges for s in (0.0, 2.0)] + edges)
    rho = np.concatenate([rho, -rho])
    grid = np.linspace(-4, 4, 17)
    h, k, r = (x.ravel() for x in np.meshgrid(grid, grid, rho))
    err = np.abs(bivariate_normal_cdf(t(h), t(k), t(r)).numpy() - owens_t_phi2(h, k, r))
    assert err.max() <= EXACT_TOL


@pytest.mark.parametrize("h,k,rho", [(0.3, -0.4, 0.2), (-1.5, 2.5, -0.6), (1.1, 1.3, 0.9), (-2.0, -2.2, 0.99),
                                     (0.7, -0.6, -0.97), (3.0, 0.0, 0.5), (-0.5, -0.5, 0.8)])
def test_phi2_matches_plackett_quadrature(h, k, rho):
    assert abs(bivariate_normal_cdf(t(h), t(k), t(rho)).item() - plackett_quad_phi2(h, k, rho)) <= EXACT_TOL


@pytest.mark.parametrize("h,k,rho", [(0.5, 0.5, 0.99999), (-1.0, -1.0000001, 0.9999999), (2.0, -2.0, -0.99999),
                                     (-6.0, -5.5, 0.95), (1.0, 8.0, -0.93), (0.0, 1e-3, 0.999999), (1.3, 1.2, 0.9)])
@pytest.mark.numerics
def test_phi2_extreme_correlation_matches_mpmath(h, k, rho):
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        mh, mk, mr = mpmath.mpf(h), mpmath.mpf(k), mpmath.mpf(rho)
        f = lambda th: mpmath.exp(-(mh**2 + mk**2 - 2 * mh * mk * mpmath.sin(th)) / (2 * mpmath.cos(th) ** 2))
        end = mpmath.asin(mr)
        # Plackett's integral in 40 digits; the breakpoints resolve the sharp end near asin(rho) -> +-pi/2.
        integral = mpmath.quad(f, [0, end / 2, end * 0.99, end * 0.9999, end])
        ref = mpmath.ncdf(mh) * mpmath.ncdf(mk) + integral / (2 * mpmath.pi)
        assert abs(bivariate_normal_cdf(t(h), t(k), t(rho)).item() - float(ref)) <= EXACT_TOL


@pytest.mark.numerics
def test_phi2_of_a_pair_does_not_depend_on_the_rest_of_the_batch(monkeypatch):
    # Bitwise: callers may chunk or reorder their pairs (relu_covariance does) without changing any value.
    # Small blocks exercise the blocked path (and the thread pool when torch has several threads).
    monkeypatch.setattr(sp, "_BLOCK_ELEMENTS_CPU", 7000)
    gen = torch.Generator().manual_seed(5)
    n = 20000
    h, k = 1.5 * torch.randn(n, generator=gen, **f64), 1.5 * torch.randn(n, generator=gen, **f64)
    rho = 2 * torch.rand(n, generator=gen, **f64) - 1
    rho[::40], rho[1::40] = 1.0, -1.0
    full = bivariate_normal_cdf(h, k, rho)
    for offset in (1, 3, 7, 1001):
        assert torch.equal(bivariate_normal_cdf(h[offset:], k[offset:], rho[offset:]), full[offset:])
    perm = torch.randperm(n, generator=gen)
    assert torch.equal(bivariate_normal_cdf(h[perm], k[perm], rho[perm]), full[perm])
    for i in range(0, n, 251):
        assert torch.equal(bivariate_normal_cdf(h[i:i + 1], k[i:i + 1], rho[i:i + 1]), full[i:i + 1])


def test_phi2_matches_scipy_multivariate_normal():
    rng = np.random.default_rng(3)
    for _ in range(6):
        h, k = rng.normal(0, 1.5, 2)
        rho = rng.uniform(-0.95, 0.95)
        ref = stats.multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]], abseps=1e-12, releps=1e-12).cdf([h, k])
        assert abs(bivariate_normal_cdf(t(h), t(k), t(rho)).item() - ref) <= 1e-10


def test_phi2_at_origin_is_quarter_plus_arcsin():
    rho = np.linspace(-1, 1, 81)
    got = bivariate_normal_cdf(t(0.0), t(0.0), t(rho)).numpy()
    np.testing.assert_allclose(got, 0.25 + np.arcsin(rho) / (2 * np.pi), rtol=0, atol=EXACT_TOL)


@pytest.mark.numerics
def test_phi2_degenerate_and_infinite_limits_are_exact():
    values = [-INF, -40.0, -3.0, -0.5, 0.0, 0.5, 3.0, 40.0, INF]
    cases = [(h, k, r) for h in values for k in values for r in (-1.0, -0.4, 0.0, 0.6, 1.0)
             if math.isinf(h) or math.isinf(k) or abs(r) == 1]
    h, k, r = (t([c[i] for c in cases]) for i in range(3))
    got = bivariate_normal_cdf(h, k, r).numpy()
    ref = np.array([limit_phi2(*c) for c in cases])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15)


def test_phi2_near_one_approaches_the_limit_continuously():
    h, k = t([-0.3, 0.4, 1.0]), t([0.2, 0.4, -1.0])
    for rho in (1.0, -1.0):
        limit = bivariate_normal_cdf(h, k, t(rho))
        near = bivariate_normal_cdf(h, k, t(rho * (1 - 1e-14)))
        # The gap is int phi2 over |rho| in [1 - 1e-14, 1]: at most ~ sqrt(2e-14)/pi on the support line.
        assert (near - limit).abs().max().item() <= 1e-7


def test_rho_roundoff_beyond_one_is_clamped():
    got = bivariate_normal_cdf(t([0.3]), t([0.5]), t([1.0 + 1e-13]))
    assert got.item() == pytest.approx(special.ndtr(0.3), rel=1e-15)


# ------------------------------------------------------------------------------------------ properties
finite = st.floats(-12, 12, allow_nan=False)
corr = st.floats(-1, 1, allow_nan=False)


@given(h=finite, k=finite, rho=corr)
def test_phi2_symmetry_bounds_and_reflection(h, k, rho):
    p = bivariate_normal_cdf(t(h), t(k), t(rho)).item()
    q = bivariate_normal_cdf(t(k), t(h), t(rho)).item()
    assert abs(p - q) <= 1e-15
    ph, pk = special.ndtr(h), special.ndtr(k)
    assert max(0.0, ph + pk - 1) - 1e-15 <= p <= min(ph, pk) + 1e-15
    # Phi2(h, k; rho) + Phi2(h, -k; -rho) = Phi(h)
    assert abs(p + bivariate_normal_cdf(t(h), t(-k), t(-rho)).item() - ph) <= 1e-14


@given(h=finite, k=finite, rho=corr, dh=st.floats(0, 3), dk=st.floats(0, 3), dr=st.floats(0, 0.5))
def test_phi2_is_monotone_in_each_argument(h, k, rho, dh, dk, dr):
    base = bivariate_normal_cdf(t(h), t(k), t(rho)).item()
    assert bivariate_normal_cdf(t(h + dh), t(k), t(rho)).item() >= base - 1e-15
    assert bivariate_normal_cdf(t(h), t(k + dk), t(rho)).item() >= base - 1e-15
    assert bivariate_normal_cdf(t(h), t(k), t(min(1.0, rho + dr))).item() >= base - 1e-15


@given(h=finite, k=finite, rho=st.floats(-0.999, 0.999))
def test_pdf_is_the_rho_derivative_and_symmetric(h, k, rho):
    # Plackett's identity dPhi2/drho = phi2, checked by a central difference of the exact Phi2.
    eps = 1e-5
    diff = (bivariate_normal_cdf(t(h), t(k), t(rho + eps)) - bivariate_normal_cdf(t(h), t(k), t(rho - eps))).item() / (2 * eps)
    pdf = bivariate_normal_pdf(t(h), t(k), t(rho)).item()
    assert pdf == pytest.approx(bivariate_normal_pdf(t(k), t(h), t(rho)).item(), rel=1e-14, abs=1e-300)
    assert abs(diff - pdf) <= 1e-6 * (1 + pdf) / (1 - abs(rho)) ** 1.5


# ------------------------------------------------------------------------------------------ pdf
def test_pdf_matches_scipy_and_limits():
    rng = np.random.default_rng(1)
    h, k = rng.normal(0, 2, 200), rng.normal(0, 2, 200)
    rho = rng.uniform(-0.999, 0.999, 200)
    ref = [stats.multivariate_normal(cov=[[1, r], [r, 1]]).pdf([a, b]) for a, b, r in zip(h, k, rho)]
    # In log space: a density of 1e-82 has an exponent of ~-190 whose last bits both codes round differently.
    log_got = np.log(bivariate_normal_pdf(t(h), t(k), t(rho)).numpy())
    np.testing.assert_allclose(log_got, np.log(ref), rtol=1e-13, atol=1e-13)
    got = bivariate_normal_pdf(t([1.0, 1.0, 1.0, -2.0, INF, 0.3]), t([1.0, 2.0, -1.0, 2.0, 0.0, -INF]),
                               t([1.0, 1.0, -1.0, 1.0, 0.5, 0.5]))
    assert got.tolist() == [INF, 0.0, INF, 0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------ gradients
def _leaf(x, shape=None):
    x = t(x)
    return (x if shape is None else x.reshape(shape)).requires_grad_()


@pytest.mark.parametrize("rho", [0.0, 0.29, -0.6, 0.8, 0.93, -0.97, 0.999, -0.9999])
def test_phi2_gradcheck_with_broadcasting(rho):
    h = _leaf([0.3, -1.2, 2.0, 0.0], (1, 4))
    k = _leaf([0.5, -0.7, 1.9], (3, 1))
    r = _leaf(rho)
    assert torch.autograd.gradcheck(bivariate_normal_cdf, (h, k, r))
    assert torch.autograd.gradgradcheck(bivariate_normal_cdf, (h, k, r))


@pytest.mark.numerics
def test_phi2_gradients_match_closed_forms():
    h, k, r = _leaf([0.4, -1.0]), _leaf([1.2, 0.3]), _leaf([0.6, -0.95])
    bivariate_normal_cdf(h, k, r).sum().backward()
    hn, kn, rn = (x.detach().numpy() for x in (h, k, r))
    s = np.sqrt(1 - rn**2)
    np.testing.assert_allclose(h.grad.numpy(), stats.norm.pdf(hn) * special.ndtr((kn - rn * hn) / s), rtol=1e-13)
    np.testing.assert_allclose(k.grad.numpy(), stats.norm.pdf(kn) * special.ndtr((hn - rn * kn) / s), rtol=1e-13)
    pdf = [stats.multivariate_normal(cov=[[1, c], [c, 1]]).pdf([a, b]) for a, b, c in zip(hn, kn, rn)]
    np.testing.assert_allclose(r.grad.numpy(), pdf, rtol=1e-12)


def test_phi2_gradients_at_degenerate_rho_are_the_exact_limits():
    h = _leaf([-0.5, 0.7, 0.2, 1.0, -0.3, INF])
    k = _leaf([0.5, 0.1, 0.2, -1.0, 0.8, 0.4])
    r = _leaf([1.0, 1.0, 1.0, -1.0, -1.0, 1.0])
    bivariate_normal_cdf(h, k, r).sum().backward()
    hn, kn = h.detach().numpy(), k.detach().numpy()
    # rho = 1: d/dh Phi(min(h,k)) = phi(h) [h < k], 1/2 on the tie; rho = -1: phi(h) [h + k > 0], 1/2 on the tie.
    step_h = np.array([1.0, 0.0, 0.5, 0.5, 1.0, 0.0])
    step_k = np.array([0.0, 1.0, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(h.grad.numpy(), stats.norm.pdf(hn) * step_h, rtol=1e-14, atol=0)
    np.testing.assert_allclose(k.grad.numpy(), stats.norm.pdf(kn) * step_k, rtol=1e-14, atol=0)
    assert r.grad.tolist() == [0.0] * 6  # 0 off the line by the limit, 0 on it by convention (finite)


def test_phi2_masked_gradient_is_not_nan():
    # A relu-covariance style use: the diagonal (rho = 1, h = k) is replaced by another formula via where.
    h = _leaf([0.3, 0.3])
    r = _leaf([1.0, 0.5])
    value = torch.where(torch.tensor([False, True]), bivariate_normal_cdf(h, h, r), torch.zeros(2, **f64))
    value.sum().backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(r.grad).all()


def test_phi2_gradients_with_infinite_arguments_are_finite():
    h = _leaf([INF, -INF, 0.4, 0.0])
    k = _leaf([0.3, 0.3, -INF, INF])
    r = _leaf([0.0, 0.5, -0.7, 0.0])
    bivariate_normal_cdf(h, k, r).sum().backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(r.grad).all()
    # d/dk Phi2(inf, k) = phi(k); d/dh Phi2(h, inf) = phi(h)
    assert k.grad[0].item() == pytest.approx(stats.norm.pdf(0.3), rel=1e-14)
    assert h.grad[3].item() == pytest.approx(stats.norm.pdf(0.0), rel=1e-14)


@pytest.mark.parametrize("rho", [0.2, -0.7, 0.999])
def test_pdf_gradcheck(rho):
    h, k, r = _leaf([0.3, -1.2, 2.0]), _leaf([0.5, -0.7, 1.9]), _leaf(rho)
    assert torch.autograd.gradcheck(bivariate_normal_pdf, (h, k, r))
    if abs(rho) < 0.99:
        # Near |rho| = 1 the fourth derivative reaches ~1e12, so gradgradcheck's finite differences (eps 1e-6)
        # are off by ~0.1 for some random grad_outputs; the mpmath test below checks that regime exactly.
        assert torch.autograd.gradgradcheck(bivariate_normal_pdf, (h, k, r))


@pytest.mark.parametrize("h, k", [(0.3, 0.5), (2.0, 1.9), (-1.2, 0.4)])
def test_pdf_hessian_matches_mpmath_near_unit_correlation(h, k):
    mpmath = pytest.importorskip("mpmath")
    rho = 0.999

    def pdf(x):
        return bivariate_normal_pdf(x[0], x[1], x[2])

    hessian = torch.autograd.functional.hessian(pdf, t([h, k, rho])).numpy()
    with mpmath.workdps(40):
        def exact(a, b, r):
            q = (a * a - 2 * r * a * b + b * b) / (2 * (1 - r * r))
            return mpmath.exp(-q) / (2 * mpmath.pi * mpmath.sqrt(1 - r * r))

        point = [mpmath.mpf(h), mpmath.mpf(k), mpmath.mpf(rho)]
        for i in range(3):
            for j in range(3):
                order = [0, 0, 0]
                order[i] += 1
                order[j] += 1
                want = float(mpmath.diff(exact, point, order))
                assert hessian[i, j] == pytest.approx(want, rel=1e-11, abs=1e-300), (i, j)


# ------------------------------------------------------------------------------------------ dtype / shape
def test_float32_matches_float64_and_dtype_device_follow_inputs():
    rng = np.random.default_rng(2)
    h, k, rho = rng.normal(0, 1.5, 5000), rng.normal(0, 1.5, 5000), rng.uniform(-1, 1, 5000)
    h32, k32, r32 = (t(x, torch.float32) for x in (h, k, rho))
    got = bivariate_normal_cdf(h32, k32, r32)
    assert got.dtype == torch.float32 and got.device == h32.device
    ref = bivariate_normal_cdf(h32.double(), k32.double(), r32.double())
    assert (got.double() - ref).abs().max().item() <= 6e-8  # only the final rounding to float32
    series = bivariate_normal_cdf_series(h32, k32, r32)
    assert series.dtype == torch.float32
    ref_series = bivariate_normal_cdf_series(h32.double(), k32.double(), r32.double())
    assert (series.double() - ref_series).abs().max().item() <= 1e-5
    assert bivariate_normal_pdf(h32, k32, r32).dtype == torch.float32


def test_broadcasting_shapes_and_empty_inputs():
    h = torch.zeros(2, 1, 3, **f64)
    k = torch.zeros(4, 1, **f64)
    r = torch.full((), 0.3, **f64)
    for fn in (bivariate_normal_cdf, bivariate_normal_pdf, bivariate_normal_cdf_series):
        assert fn(h, k, r).shape == (2, 4, 3)
        assert fn(torch.zeros(0, **f64), torch.zeros(0, **f64), r).shape == (0,)
    assert series_integral(h, k, r, terms=3).shape == (2, 4, 3)
    assert bivariate_normal_cdf(t(0.0), t(0.0), t(0.0)).shape == ()


# ------------------------------------------------------------------------------------------ bad input
BIVARIATE = [bivariate_normal_cdf, bivariate_normal_pdf, bivariate_normal_cdf_series]


@pytest.mark.parametrize("fn", BIVARIATE)
def test_bad_inputs_raise_naming_the_argument(fn):
    good = t([0.1, 0.2])
    with pytest.raises(TypeError, match="h must be a torch.Tensor"):
        fn(0.1, good, good)
    with pytest.raises(TypeError, match="rho must be a torch.Tensor"):
        fn(good, good, 0.5)
    with pytest.raises(TypeError, match="k must have a floating-point dtype"):
        fn(good, torch.tensor([1, 2]), good)
    with pytest.raises(TypeError, match="k has dtype torch.float32"):
        fn(good, good.float(), good)
    with pytest.raises(ValueError, match="k is on device meta"):
        fn(good, torch.empty(2, device="meta", **f64), good)
    with pytest.raises(ValueError, match="h contains NaN"):
        fn(t([0.1, math.nan]), good, good)
    with pytest.raises(ValueError, match="rho contains NaN"):
        fn(good, good, t([math.nan, 0.0]))
    with pytest.raises(ValueError, match=r"rho must lie in \[-1, 1\]"):
        fn(good, good, t([0.5, 1.001]))
    with pytest.raises(ValueError, match="do not broadcast"):
        fn(t([0.1, 0.2, 0.3]), good, good)


def test_bad_terms_and_series_integral_inputs():
    good = t([0.1, 0.2])
    for bad in (0, -1):
        with pytest.raises(ValueError, match="terms must be >= 1"):
            bivariate_normal_cdf_series(good, good, good, terms=bad)
    for bad in (2.5, True, "5"):
        with pytest.raises(TypeError, match="terms must be a positive int"):
            series_integral(good, good, good, terms=bad)
    with pytest.raises(ValueError, match="c contains NaN"):
        series_integral(good, good, t([0.0, math.nan]))
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        series_integral([0.5], good, good)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        normal_cdf(0.3)


# ------------------------------------------------------------------------------------------ spec 8 values
@pytest.mark.parametrize("rho,expected", [(-0.9, 0.004769199422336), (0.0, 0.159154943091895),
                                          (0.5, 0.304498890522115)])
def test_zero_mean_kernel_from_phi2_matches_spec(rho, expected):
    # Spec 3b at mu = 0, sigma = 1: c(rho) = rho Phi2(0,0;rho) + (1 - rho^2) phi2(0,0;rho).
    zero = t(0.0)
    value = rho * bivariate_normal_cdf(zero, zero, t(rho)) + (1 - rho**2) * bivariate_normal_pdf(zero, zero, t(rho))
    assert abs(value.item() - expected) <= 1e-14
    assert abs(expected - (rho * math.acos(-rho) + math.sqrt(1 - rho**2)) / (2 * math.pi)) <= 1e-14


@pytest.mark.parametrize("mi,mj,si,sj,rho,expected", [(0.7, -0.3, 1.3, 0.8, 0.6, 0.359227391170802),
                                                      (2.0, 1.5, 1.0, 0.3, 0.9, 3.276593518299237)])
@pytest.mark.numerics
def test_general_mean_cross_moment_from_phi2_matches_spec(mi, mj, si, sj, rho, expected):
    hi, hj, s = t(mi / si), t(mj / sj), math.sqrt(1 - rho**2)
    r = t(rho)
    value = ((mi * mj + rho * si * sj) * bivariate_normal_cdf(hi, hj, r)
             + mi * sj * normal_pdf(hj) * normal_cdf((hi - rho * hj) / s)
             + mj * si * normal_pdf(hi) * normal_cdf((hj - rho * hi) / s)
             + si * sj * (1 - rho**2) * bivariate_normal_pdf(hi, hj, r))
    assert abs(value.item() - expected) <= 1e-14


SPEC_I = [((0.5, 0.3, -0.2), 0.5586344329, 0.5693296694, 0.5586297682),
          ((2.0, -0.4, 0.7), 0.2730523209, 0.2630246068, 0.2730472661),
          ((0.0, 0.5, 0.1), 0.4094039993, 0.4094039993, 0.4094039993)]


@pytest.mark.parametrize("abc,exact,i1,i5", SPEC_I)
def test_series_integral_matches_spec_values(abc, exact, i1, i5):
    a, b, c = (t(x) for x in abc)
    assert abs(series_integral(a, b, c).item() - exact) <= 5e-11
    assert abs(series_integral(a, b, c, terms=1).item() - i1) <= 5e-11
    assert abs(series_integral(a, b, c, terms=5).item() - i5) <= 5e-11
    assert abs(series_integral(a, b, c).item() - integral_quad(*abc)) <= 1e-12


# ------------------------------------------------------------------------------------------ NM20 series
@pytest.mark.numerics
def test_series_integral_matches_literal_scipy_series():
    rng = np.random.default_rng(4)
    a = np.concatenate([rng.uniform(-0.99, 0.99, 40), rng.uniform(1.0, 6.0, 20) * rng.choice([-1, 1], 20)])
    b, c = rng.uniform(-2.5, 2.5, 60), rng.uniform(-2.5, 2.5, 60)
    for n_terms in (1, 3, 5, 8):
        got = series_integral(t(a), t(b), t(c), terms=n_terms).numpy()
        ref = np.array([series_reference(*abc, n_terms) for abc in zip(a, b, c)])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_exact_series_integral_matches_quadrature_both_sides_of_the_reflection():
    for abc in [(0.3, -1.0, 0.4), (-0.8, 0.2, -1.5), (1.0, 0.5, 0.0), (-3.0, 1.2, 0.3), (25.0, -0.1, -0.2)]:
        assert abs(series_integral(*(t(x) for x in abc)).item() - integral_quad(*abc)) <= 1e-12


def test_series_integral_limits():
    a, b = t([0.4, 2.0, -0.5, 3.0]), t([0.3, -INF, INF, 1.0])
    c = t([INF, 0.2, -0.1, INF])
    for terms in (None, 5):
        got = series_integral(a, b, c, terms=terms).numpy()
        expected = [0.0, -math.sqrt(math.pi) / 2 * special.erfc(0.2), math.sqrt(math.pi) / 2 * special.erfc(-0.1), 0.0]
        np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-300)
    # a = +-inf (rho = +-1): erf(a t + b) -> sign(a t), always computed exactly.
    got = series_integral(t([INF, -INF]), t([0.4, 0.4]), t([0.5, -0.3]), terms=5).numpy()
    # int_c^inf sign(a t) e^{-t^2} dt: c = 0.5 > 0 gives sqrt(pi)/2 erfc(0.5); a < 0, c = -0.3 gives -sqrt(pi)/2 erfc(0.3).
    expected = [math.sqrt(math.pi) / 2 * special.erfc(0.5), -math.sqrt(math.pi) / 2 * special.erfc(0.3)]
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)


def test_series_phi2_error_envelope():
    # Measured max |error| on h, k in [-3,3]^2, |rho| <= 0.99 (step 0.01): N=1 4.2e-2, 2 2.6e-2, 3 1.8e-2,
    # 5 9.8e-3, 10 4.6e-3, worst at |rho| = 0.71 (|a| = 1, where the reflected series converges slowest).
    grid = t(np.linspace(-3, 3, 25))
    h, k = torch.meshgrid(grid, grid, indexing="ij")
    rho = t(np.concatenate([np.linspace(-0.99, 0.99, 45), [-0.71, 0.71]])).reshape(-1, 1, 1)
    exact = bivariate_normal_cdf(h, k, rho)
    previous = INF
    for n_terms, bound in [(1, 4.5e-2), (2, 2.7e-2), (3, 1.9e-2), (5, 1.1e-2), (10, 5e-3)]:
        err = (bivariate_normal_cdf_series(h, k, rho, terms=n_terms) - exact).abs()
        worst = err.max().item()
        assert 0.3 * bound <= worst <= bound and worst < previous
        previous = worst
        # The error vanishes at rho = 0 and is small near |rho| = 1 (the expansion is in rho/s or s/rho).
        assert err[22].max().item() <= 1e-15
        assert err[[0, 44]].max().item() <= 1e-2 * bound


def test_series_converges_to_exact_for_small_correlation():
    h, k = t(np.linspace(-3, 3, 13)), t(np.linspace(-2, 2.5, 13))
    exact = bivariate_normal_cdf(h, k, t(0.4))
    errors = [(bivariate_normal_cdf_series(h, k, t(0.4), terms=n) - exact).abs().max().item() for n in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 1e-10


def test_series_cdf_limits_and_exact_option():
    h = t([0.3, -0.2, INF, 0.5, -INF, 0.4])
    k = t([0.1, 0.6, 0.2, INF, 0.3, -INF])
    r = t([1.0, -1.0, 0.5, 0.5, 0.2, 0.7])
    exact = bivariate_normal_cdf(h, k, r)
    assert torch.equal(bivariate_normal_cdf_series(h, k, r), exact)
    h2, k2, r2 = t([0.3, -1.0]), t([0.2, 0.5]), t([0.6, -0.3])
    assert torch.equal(bivariate_normal_cdf_series(h2, k2, r2, terms=None), bivariate_normal_cdf(h2, k2, r2))


@pytest.mark.parametrize("rho", [0.3, -0.72, 0.9, 0.999])
def test_series_gradcheck(rho):
    h, k, r = _leaf([0.3, -1.2, 2.0]), _leaf([0.5, -0.7, 1.9]), _leaf(rho)
    fn = lambda h, k, r: bivariate_normal_cdf_series(h, k, r, terms=5)
    assert torch.autograd.gradcheck(fn, (h, k, r))
    assert torch.autograd.gradgradcheck(fn, (h, k, r))


def test_series_integral_gradcheck_both_branches_and_exact():
    a, b, c = _leaf([0.4, -0.9, 1.7, -3.0]), _leaf([0.3, -1.0, 0.5, 0.2]), _leaf([-0.2, 0.6, 1.1, -0.8])
    for terms in (1, 5, None):
        assert torch.autograd.gradcheck(lambda a, b, c: series_integral(a, b, c, terms=terms), (a, b, c))


def test_series_gradients_with_degenerate_inputs_are_finite():
    h, k, r = _leaf([0.3, INF, 0.2]), _leaf([0.1, 0.4, -INF]), _leaf([1.0, 0.3, -0.5])
    bivariate_normal_cdf_series(h, k, r).sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (h, k, r))


def _mpmath_series(a, b, c, n_terms, mpmath):
    """NM20's I_N for |a| < 1 (no reflection), term by term in 50-digit arithmetic (no overflow at any N)."""
    a, b, c = (mpmath.mpf(x) for x in (a, b, c))
    acc = mpmath.mpf(0)
    for u in range(n_terms):
        acc += ((a / 2) ** (2 * u + 1) * mpmath.hermite(2 * u, b)
                * mpmath.gammainc(u + 1, c * c, regularized=True) / mpmath.gamma(u + 1.5))
        acc -= ((a / 2) ** (2 * u + 2) * mpmath.hermite(2 * u + 1, b)
                * (1 - mpmath.sign(c) * mpmath.gammainc(u + 1.5, 0, c * c, regularized=True)) / mpmath.gamma(u + 2))
    return float(mpmath.sqrt(mpmath.pi) / 2 * mpmath.erf(b) * mpmath.erfc(c) + mpmath.exp(-b * b) * acc)


# Before the scaled recurrences, H_n(b), Gamma(u + 3/2) and the Poisson partial sums overflowed: NaN from about
# 135 terms, OverflowError from 171 (float32: NaN from a few dozen terms).
@pytest.mark.numerics
@pytest.mark.parametrize("n_terms", [150, 171, 300])
def test_series_integral_many_terms_matches_mpmath(n_terms):
    mpmath = pytest.importorskip("mpmath")
    points = [(0.9, 0.7, -0.4), (0.999, -1.5, 0.8), (0.5, 3.0, 2.0), (-0.99, 0.2, -2.5), (0.999, 0.0, 0.0), (0.97, 6.0, -5.0)]
    with mpmath.workdps(50):
        ref = np.array([_mpmath_series(*abc, n_terms, mpmath) for abc in points])
    a, b, c = (t([p[i] for p in points]) for i in range(3))
    got = series_integral(a, b, c, terms=n_terms)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-14)
    got32 = series_integral(a.float(), b.float(), c.float(), terms=n_terms)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), ref, rtol=0, atol=1e-6)


def test_series_phi2_any_number_of_terms_is_finite_and_converges():
    grid = t(np.linspace(-4, 4, 9))
    h, k = torch.meshgrid(grid, grid, indexing="ij")
    rho = t([-0.7, 0.3, 0.7071, 0.95]).reshape(-1, 1, 1)
    exact = bivariate_normal_cdf(h, k, rho)
    errors = []
    for n_terms in (5, 200, 2000):
        for dtype in (torch.float32, torch.float64):
            value = bivariate_normal_cdf_series(h.to(dtype), k.to(dtype), rho.to(dtype), terms=n_terms)
            assert torch.isfinite(value).all()
        errors.append((bivariate_normal_cdf_series(h, k, rho, terms=n_terms) - exact).abs().max().item())
    # slowest at |a| = 1 (|rho| = 1/sqrt2): there the error still falls roughly like 1/N
    assert errors[0] > 10 * errors[1] > 100 * errors[2]
    assert errors[2] < 5e-5
    # extreme arguments, where the unscaled exponentials and Hermite polynomials over- or underflow
    hx, kx, rx = t([40.0, -39.0, 60.0, 0.0]), t([-38.0, 45.0, 0.1, -50.0]), t([0.6, -0.69, 0.2, 0.75])
    np.testing.assert_allclose(bivariate_normal_cdf_series(hx, kx, rx, terms=1000).numpy(),
                               bivariate_normal_cdf(hx, kx, rx).numpy(), rtol=0, atol=1e-15)


def test_series_many_terms_gradients():
    h, k, r = _leaf([0.3, -1.2, 2.0, 0.0]), _leaf([0.5, -0.7, 1.9, 0.0]), _leaf([0.3, -0.72, 0.69, 0.5])
    assert torch.autograd.gradcheck(lambda h, k, r: bivariate_normal_cdf_series(h, k, r, terms=180), (h, k, r))
    bivariate_normal_cdf_series(h, k, r, terms=3000).sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (h, k, r))
