"""Widgets and figures of Part I, chapters 3-5: the pure functions behind each widget against independent
NumPy/SciPy references (never the package's own output), every precomputed widget frame checked at the grid
values its readouts show, and the plotting helpers.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("agg", force=False)  # tests only: headless; the book itself never touches the backend

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from scipy import integrate, special, stats

from netmoments import viz, widgets
from widget_checks import check_frames

ALPHA = 1e-3


def z_crit(k: int, alpha: float = ALPHA) -> float:
    """Two-sided normal quantile for ``k`` comparisons at family-wise level ``alpha`` (Bonferroni)."""
    return float(stats.norm.isf(alpha / (2 * k)))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- independent references


def relu_mean_ref(mu, sigma):
    """E[max(y, 0)], y ~ N(mu, sigma^2), from SciPy's normal distribution (sigma = 0: max(mu, 0))."""
    if sigma == 0:
        return max(mu, 0.0)
    h = mu / sigma
    return mu * stats.norm.cdf(h) + sigma * stats.norm.pdf(h)


def phi2_ref(h, k, rho):
    """Phi2 by SciPy's bivariate normal distribution function."""
    return float(stats.multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, rho], [rho, 1.0]]).cdf([h, k]))


def cross_moment_ref(mi, mj, si, sj, rho):
    """E[max(y_i, 0) max(y_j, 0)] by adaptive quadrature over y_i > 0 of y_i E[max(y_j, 0) | y_i]."""
    s = math.sqrt(1.0 - rho * rho)

    def integrand(t):
        m = mj + rho * sj * (t - mi) / si
        return t * relu_mean_ref(m, s * sj) * stats.norm.pdf(t, loc=mi, scale=si)

    return integrate.quad(integrand, 0.0, np.inf, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


def arccos_kernel_ref(rho):
    return (rho * math.acos(-rho) + math.sqrt(1.0 - rho * rho)) / (2.0 * math.pi)


def phi2_owen_ref(h, k, rho):
    """Phi2 from Owen's T function (SciPy), arrays with hk != 0 and |rho| < 1."""
    h, k, rho = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (h, k, rho)))
    s = np.sqrt((1 - rho) * (1 + rho))
    beta = np.where(h * k < 0, 0.5, 0.0)
    return (0.5 * (special.ndtr(h) + special.ndtr(k)) - special.owens_t(h, (k - rho * h) / (h * s))
            - special.owens_t(k, (h - rho * k) / (k * s)) - beta)


def series_integral_ref(a, b, c, terms):
    """NM20's truncated series I_N(a, b, c) transcribed from the maths contract, with the |a| >= 1 reflection."""

    def raw(a, b, c):
        total = np.zeros(np.shape(a))
        for u in range(terms):
            total = total + ((a / 2) ** (2 * u + 1) * special.eval_hermite(2 * u, b)
                             * special.gammaincc(u + 1, c * c) / special.gamma(u + 1.5)
                             - (a / 2) ** (2 * u + 2) * special.eval_hermite(2 * u + 1, b)
                             * (1 - np.sign(c) * special.gammainc(u + 1.5, c * c)) / special.gamma(u + 2))
        return math.sqrt(math.pi) / 2 * special.erf(b) * special.erfc(c) + np.exp(-b * b) * total

    a, b, c = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, c)))
    reflect = np.abs(a) >= 1
    a_safe = np.where(reflect, a, 1.0)
    inner = raw(np.where(reflect, 1 / np.abs(a_safe), a), np.where(reflect, -b / a_safe, b),
                np.where(reflect, np.sign(a) * (a * c + b), c))
    reflected = (np.sign(a) * (math.sqrt(math.pi) / 2 - inner)
                 - math.sqrt(math.pi) / 2 * special.erf(a * c + b) * special.erf(c))
    return np.where(reflect, reflected, inner)


def phi2_series_ref(h, k, rho, terms):
    s = np.sqrt((1 - rho) * (1 + rho))
    return 0.5 * special.ndtr(k) + series_integral_ref(rho / s, h / (math.sqrt(2) * s), -k / math.sqrt(2),
                                                       terms) / (2 * math.sqrt(math.pi))


# ----------------------------------------------------------------------------- chapter 3: the cross moment

PAIRS = [(0.7, -0.3, 1.3, 0.8, 0.6), (2.0, 1.5, 1.0, 0.3, 0.9), (-1.0, 0.3, 0.7, 1.2, -0.5), (0.5, -0.5, 1.0, 1.0, 0.0)]


@pytest.mark.parametrize("params", PAIRS)
def test_relu_pair_summary_matches_quadrature(params):
    mi, mj, si, sj, rho = params
    s = widgets.relu_pair_summary(*params, n_samples=200, seed=1)
    cross = cross_moment_ref(*params)
    assert s["cross_exact"] == pytest.approx(cross, rel=1e-9, abs=1e-12)
    cov = cross - relu_mean_ref(mi, si) * relu_mean_ref(mj, sj)
    assert s["cov_exact"] == pytest.approx(cov, rel=1e-9, abs=1e-12)
    assert s["cross_zero_mean"] == pytest.approx(si * sj * arccos_kernel_ref(rho), rel=1e-13, abs=1e-15)
    assert s["cov_zero_mean"] == pytest.approx(si * sj * (arccos_kernel_ref(rho) - 1 / (2 * math.pi)), abs=1e-14)
    assert s["cov_error"] == pytest.approx(s["cov_zero_mean"] - cov, abs=1e-9)
    assert s["p_both_on"] == pytest.approx(phi2_ref(mi / si, mj / sj, rho), abs=1e-12)


def test_relu_pair_reference_values():
    # the maths contract's reference values (spec section 8)
    assert widgets.relu_pair_summary(0.7, -0.3, 1.3, 0.8, 0.6, n_samples=10)["cross_exact"] == pytest.approx(
        0.359227391170802, abs=1e-13)
    assert widgets.relu_pair_summary(2.0, 1.5, 1.0, 0.3, 0.9, n_samples=10)["cross_exact"] == pytest.approx(
        3.276593518299237, abs=1e-13)


@pytest.mark.parametrize("params", PAIRS[:3])
def test_relu_pair_summary_monte_carlo_is_consistent(params):
    n = 40_000
    s = widgets.relu_pair_summary(*params, n_samples=n, seed=7)
    z = z_crit(3)
    assert s["z_cross"] < z and s["z_cov"] < z
    p = s["p_both_on"]
    assert abs(s["mc_p_both_on"] - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-12
    samples = s["samples"].numpy()
    assert samples.shape == (n, 2) and (samples >= 0).all()
    # the reported estimates come from the very draws returned
    assert s["mc_cross"] == pytest.approx(float(np.mean(samples[:, 0] * samples[:, 1])), rel=1e-10)
    assert s["mc_cov"] == pytest.approx(float(np.cov(samples.T)[0, 1]), rel=1e-8, abs=1e-12)


def test_relu_pair_zero_means_make_the_2018_formula_exact():
    for rho in (-0.9, -0.3, 0.4, 0.95):
        s = widgets.relu_pair_summary(0.0, 0.0, 1.4, 0.6, rho, n_samples=10)
        assert abs(s["cov_error"]) < 1e-14


def test_relu_pair_zero_variance_unit_is_a_constant():
    s = widgets.relu_pair_summary(0.8, -0.2, 0.0, 1.5, 0.5, n_samples=1000, seed=2)
    assert s["cross_exact"] == pytest.approx(0.8 * relu_mean_ref(-0.2, 1.5), rel=1e-12)
    assert abs(s["cov_exact"]) < 1e-14
    assert s["p_both_on"] == pytest.approx(stats.norm.cdf(-0.2 / 1.5), abs=1e-14)
    off = widgets.relu_pair_summary(-0.5, 1.0, 0.0, 1.0, 0.5, n_samples=100)
    assert off["cross_exact"] == 0.0 and off["p_both_on"] == 0.0


@pytest.mark.parametrize("bad", [dict(sigma_i=-1.0), dict(rho=1.5)])
def test_relu_pair_rejects_bad_input(bad):
    params = dict(mu_i=0.0, mu_j=0.0, sigma_i=1.0, sigma_j=1.0, rho=0.0) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        widgets.relu_pair_summary(**params, n_samples=10)


def test_relu_pair_widget_frames_are_exact_at_their_grid_point():
    grid = {"mu_i": (1.2,), "mu_j": (-0.5, 0.0), "sigma_i": (1.0,), "sigma_j": (2.0,), "rho": (-0.4, 0.6)}
    w = widgets.relu_pair_widget(n_samples=500, seed=3, grid=grid)
    points = check_frames(w, grid, ["mean μ_i", "mean μ_j", "std σ_i", "std σ_j", "correlation ρ"])
    for point in points:
        assert w.results[point]["cross_exact"] == pytest.approx(cross_moment_ref(*point), rel=1e-9)
        assert w.results[point]["samples"].shape == (500, 2)
        assert f"exact = {w.results[point]['cov_exact']:.4f}" in w.frames[point].children[1].value
    assert w.key == (1.2, -0.5, 1.0, 2.0, 0.6)


def test_relu_pair_widget_on_the_default_controls_holds_the_spreads_at_one():
    # The default grid has no spread sliders (the book's widget): the frames are computed at sigma_i = sigma_j = 1.
    grid = {"mu_i": (1.5,), "mu_j": (-0.5, 0.5), "rho": (0.9,)}
    assert set(grid) == set(widgets.RELU_PAIR_GRID)
    w = widgets.relu_pair_widget(n_samples=300, seed=1, grid=grid)
    points = check_frames(w, grid, ["mean μ_i", "mean μ_j", "correlation ρ"])
    for mu_i, mu_j, rho in points:
        expected = cross_moment_ref(mu_i, mu_j, 1.0, 1.0, rho)
        assert w.results[(mu_i, mu_j, rho)]["cross_exact"] == pytest.approx(expected, rel=1e-9)


def test_relu_pair_plots():
    s = widgets.relu_pair_summary(0.5, -0.5, 1.0, 1.0, 0.6, n_samples=300)
    assert len(viz.plot_relu_pair(s).axes) == 2
    h = torch.linspace(-2, 2, 21, dtype=torch.float64)
    errors = torch.stack([torch.outer(h, h) * r for r in (0.0, 0.5)])
    fig = viz.plot_zero_mean_error_maps(h, (0.0, 0.5), errors)
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # two maps and a colour bar
    fig = viz.plot_cross_covariance_profiles(h, (0.5,), h[None] * 0.1, torch.tensor([0.1]))
    assert isinstance(fig, Figure)


# ----------------------------------------------------------------------------- chapter 4: network moments


def test_ar1_covariance_matches_numpy():
    for phi in (-0.7, 0.0, 0.5):
        cov = widgets.ar1_covariance(6, phi, 0.3).numpy()
        lag = np.abs(np.subtract.outer(np.arange(6), np.arange(6)))
        np.testing.assert_allclose(cov, 0.09 * phi ** lag, rtol=1e-14, atol=1e-16)
        assert np.linalg.eigvalsh(cov).min() > 0
    with pytest.raises(ValueError, match="coefficient"):
        widgets.ar1_covariance(4, 1.0, 1.0)


def _network_reference(noise_scale, ar_coefficient, bias_shift):
    """Output mean, covariance and NM18 estimates of the chapter 4 network, from SciPy, pair by pair."""
    net = {k: v.numpy() for k, v in widgets.chapter4_network().items()}
    a, b, mean = net["A"], net["B"], net["mean"]
    lag = np.abs(np.subtract.outer(np.arange(a.shape[1]), np.arange(a.shape[1])))
    sigma = noise_scale**2 * ar_coefficient**lag
    y_mean = bias_shift * net["direction"]  # = A mean + c1 by construction
    y_cov = a @ sigma @ a.T
    sd = np.sqrt(np.diag(y_cov))
    first = np.array([relu_mean_ref(m, s) for m, s in zip(y_mean, sd)])
    m = len(y_mean)
    c = np.zeros((m, m))
    hybrid = np.zeros((m, m))
    for i in range(m):
        hi = y_mean[i] / sd[i]
        second = (y_mean[i] ** 2 + sd[i] ** 2) * stats.norm.cdf(hi) + y_mean[i] * sd[i] * stats.norm.pdf(hi)
        c[i, i] = hybrid[i, i] = second - first[i] ** 2
        for j in range(i + 1, m):
            rho = y_cov[i, j] / (sd[i] * sd[j])
            hj = y_mean[j] / sd[j]
            s = math.sqrt(1 - rho * rho)
            cross = ((y_mean[i] * y_mean[j] + rho * sd[i] * sd[j]) * phi2_ref(hi, hj, rho)
                     + y_mean[i] * sd[j] * stats.norm.pdf(hj) * stats.norm.cdf((hi - rho * hj) / s)
                     + y_mean[j] * sd[i] * stats.norm.pdf(hi) * stats.norm.cdf((hj - rho * hi) / s)
                     + sd[i] * sd[j] * s * stats.norm.pdf(hi) * stats.norm.pdf((hj - rho * hi) / s))
            c[i, j] = c[j, i] = cross - first[i] * first[j]
            hybrid[i, j] = hybrid[j, i] = sd[i] * sd[j] * (arccos_kernel_ref(rho) - 1 / (2 * math.pi))
    return b @ first, b @ c @ b.T, b @ hybrid @ b.T, (b * b) @ np.diag(c)


@pytest.mark.parametrize("params", [(0.5, 0.6, 1.0), (1.2, -0.4, -0.7)])
def test_network_summary_matches_scipy_reference(params):
    s = widgets.network_covariance_summary(*params, n_samples=100, seed=0)
    mean, cov, hybrid, diagonal_only = _network_reference(*params)
    np.testing.assert_allclose(s["mean"].numpy(), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s["cov_exact"].numpy(), cov, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(s["cov_hybrid"].numpy(), hybrid, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s["var_diagonal_only"].numpy(), diagonal_only, rtol=1e-10, atol=1e-12)
    scale = np.linalg.norm(cov)
    assert s["error_hybrid"] == pytest.approx(np.linalg.norm(hybrid - cov) / scale, rel=1e-6)
    v = np.diag(cov)
    assert s["error_diagonal_only"] == pytest.approx(np.max(np.abs(diagonal_only - v) / v), rel=1e-6)


def test_network_summary_agrees_with_its_monte_carlo():
    s = widgets.network_covariance_summary(0.8, 0.3, 0.8, n_samples=40_000, seed=11)
    p = s["mean"].shape[0]
    # p means and the p (p + 1) / 2 distinct covariance entries
    assert s["max_z"] < z_crit(p + p * (p + 1) // 2)
    assert s["samples"].shape == (40_000, p)
    np.testing.assert_allclose(s["mc_mean"].numpy(), s["samples"].numpy().mean(0), rtol=1e-10, atol=1e-12)


def test_network_summary_hybrid_is_exact_only_at_zero_shift():
    centred = widgets.network_covariance_summary(0.5, 0.6, 0.0, n_samples=100)
    assert centred["error_hybrid"] < 1e-12
    shifted = widgets.network_covariance_summary(0.5, 0.6, 1.5, n_samples=20_000, seed=4)
    # far outside what the Monte Carlo estimate of the same size can resolve
    assert shifted["error_hybrid"] > 10 * shifted["error_mc"]


def test_network_widget_frames_are_exact_at_their_grid_point():
    grid = {"noise_scale": (1.0,), "ar_coefficient": (0.0, 0.6), "bias_shift": (0.0, -0.7)}
    w = widgets.network_covariance_widget(n_samples=400, seed=1, grid=grid)
    points = check_frames(w, grid, ["noise scale σ", "AR(1) correlation φ", "bias shift t"])
    for point in points:
        _, cov, hybrid, _ = _network_reference(*point)
        np.testing.assert_allclose(w.results[point]["cov_exact"].numpy(), cov, rtol=1e-8, atol=1e-11)
        np.testing.assert_allclose(w.results[point]["cov_hybrid"].numpy(), hybrid, rtol=1e-10, atol=1e-12)
    assert w.results[1.0, 0.0, 0.0]["error_hybrid"] < 1e-12
    assert 0.0 in widgets.NETWORK_GRID["bias_shift"]  # where the hybrid is exact


def test_chapter4_plots():
    s = widgets.network_covariance_summary(0.5, 0.6, 1.0, n_samples=300)
    assert len(viz.plot_network_covariance(s).axes) == 5  # three panels and two colour bars
    fig = viz.plot_z_scores(["a", "b"], {"x": [0.5, 2.0], "y": [10.0, 0.0]}, 3.0)
    assert isinstance(fig, Figure)
    fig = viz.plot_relative_error_sweep([0, 1, 2], {"x": [0.0, 0.1, 0.2]}, [0.01, 0.02, 0.01], [0.03] * 3)
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == pytest.approx(1e-4)


# ----------------------------------------------------------------------------- chapter 5: computing Phi2


@pytest.mark.parametrize("h, k, terms", [(0.3, -0.4, 5), (1.5, 2.0, 1), (-2.2, 0.7, 10)])
def test_series_slice_summary_matches_references(h, k, terms):
    s = widgets.series_slice_summary(h, k, terms, n_rho=201)
    rho = s["rho"].numpy()
    assert rho.min() == pytest.approx(-0.999) and rho.max() == pytest.approx(0.999)
    np.testing.assert_allclose(s["exact"].numpy(), phi2_owen_ref(h, k, rho), rtol=0, atol=2e-14)
    series = phi2_series_ref(h, k, rho, terms)
    np.testing.assert_allclose(s["series"].numpy(), series, rtol=0, atol=1e-13)
    error = np.abs(series - phi2_owen_ref(h, k, rho))
    assert s["max_error"] == pytest.approx(error.max(), abs=1e-13)
    assert s["rho_of_max"] == pytest.approx(rho[np.argmax(s["error"].numpy())])


def test_series_error_peaks_where_the_series_converges_slowest():
    # |a| = |rho| / sqrt(1 - rho^2) = 1 at |rho| = 1/sqrt(2): neither side of the reflection converges fast
    s = widgets.series_slice_summary(0.3, -0.4, 5, n_rho=801)
    assert abs(abs(s["rho_of_max"]) - 2**-0.5) < 0.01


def test_series_slice_rejects_bad_terms():
    with pytest.raises(ValueError, match="terms"):
        widgets.series_slice_summary(0.0, 0.0, 0)


def test_series_slice_widget_frames_are_the_series_at_their_grid_point():
    grid = {"h": (-1.0, 0.3), "k": (-0.4,), "terms": (2, 5)}
    w = widgets.series_slice_widget(n_rho=101, grid=grid)
    points = check_frames(w, grid, ["h", "k", "terms N"])
    for h, k, terms in points:
        s = w.results[h, k, terms]
        assert (s["h"], s["k"], s["terms"]) == (h, k, terms)
        rho = s["rho"].numpy()
        np.testing.assert_allclose(s["series"].numpy(), phi2_series_ref(h, k, rho, terms), atol=1e-13)
    assert [label for label, _ in w.sliders["terms"].options] == ["2", "5"]


def test_chapter5_plots():
    n = np.arange(2, 6)
    assert isinstance(viz.plot_quadrature_convergence(n, {"a": 10.0 ** -n}), Figure)
    assert isinstance(viz.plot_series_partial_sums(n, {"a": 10.0 ** -n}), Figure)
    h, rho = np.linspace(-1, 1, 5), np.linspace(-0.9, 0.9, 7)
    maps = {t: np.full((5, 7), 10.0 ** -t) for t in (1, 2, 3, 5, 10)}
    fig = viz.plot_series_error_maps(h, rho, maps, range(1, 11), 10.0 ** -np.arange(1, 11), {1: 0.1})
    assert len(fig.axes) == 7  # five maps, the curve and a colour bar
    assert isinstance(viz.plot_speed_accuracy([("exact", 0.02, 1e-16), ("series N=5", 0.03, 1e-2)]), Figure)
    assert isinstance(viz.plot_series_slice(widgets.series_slice_summary(0.0, 0.0, 3, n_rho=51)), Figure)
