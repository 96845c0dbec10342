"""The book's widgets and figures: the pure functions behind each widget against independent references, every
precomputed frame of the widgets checked at the grid values its readouts show, and the plotting helpers' geometry.

Independent references are NumPy/SciPy re-derivations, never the package's own output.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("agg", force=False)  # tests only: headless; the book itself never touches the backend

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from scipy import stats

from netmoments import viz, widgets
from widget_checks import check_frames



def z_crit(k: int, alpha: float = 1e-3) -> float:
    """Two-sided normal quantile for ``k`` comparisons at family-wise level ``alpha`` (Bonferroni)."""
    return float(stats.norm.isf(alpha / (2 * k)))


Z_TWO_SIDED = {k: z_crit(k) for k in (1, 2, 4)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_default_grids_fit_the_page_budget():
    """Each frame is ~15-25 kB in the page; a chapter page must stay under 5 MB (the browser test and
    scripts/check_book.py measure it). 200 frames of 25 kB leave the page's text and figures room below 5 MB."""
    import math as _math

    for grid in (widgets.AFFINE_GRID, widgets.RELU_GRID, widgets.RELU_PAIR_GRID, widgets.NETWORK_GRID,
                 widgets.SERIES_GRID):
        assert _math.prod(len(v) for v in grid.values()) <= 200


# ----------------------------------------------------------------------------- chapter 1


def _reference_affine(a11, a12, a21, a22, rho):
    std = np.array(widgets.AFFINE_INPUT_STD)
    cov_in = np.array([[std[0] ** 2, rho * std[0] * std[1]], [rho * std[0] * std[1], std[1] ** 2]])
    a = np.array([[a11, a12], [a21, a22]])
    b = np.array(widgets.AFFINE_BIAS)
    mean_in = np.array(widgets.AFFINE_INPUT_MEAN)
    return mean_in, cov_in, a @ mean_in + b, a @ cov_in @ a.T


@pytest.mark.parametrize("params", [(1.0, 0.8, -0.4, 1.2, 0.3), (0.5, -1.5, 2.0, 0.1, -0.9), (1.0, 1.0, 1.0, 1.0, 0.0)])
def test_affine_summary_matches_numpy(params):
    s = widgets.affine_gaussian_summary(*params, n_samples=500, seed=3)
    mean_in, cov_in, mean_out, cov_out = _reference_affine(*params)
    np.testing.assert_allclose(s["mean_in"].numpy(), mean_in, rtol=0, atol=1e-15)
    np.testing.assert_allclose(s["cov_in"].numpy(), cov_in, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(s["mean_out"].numpy(), mean_out, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(s["cov_out"].numpy(), cov_out, rtol=1e-13, atol=1e-14)
    # the plotted output draws are the plotted input draws mapped
    a = s["weight"].numpy()
    np.testing.assert_allclose(s["samples_out"].numpy(), s["samples_in"].numpy() @ a.T + s["bias"].numpy(),
                               rtol=1e-13, atol=1e-13)
    assert s["samples_in"].shape == (500, 2) and s["samples_in"].dtype == torch.float64


def test_affine_summary_samples_follow_the_input_law():
    n = 40_000
    s = widgets.affine_gaussian_summary(1.0, 0.8, -0.4, 1.2, 0.6, n_samples=n, seed=5)
    x = s["samples_in"].numpy()
    mean_in, cov_in, mean_out, _ = _reference_affine(1.0, 0.8, -0.4, 1.2, 0.6)
    se = x.std(0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(x.mean(0) - mean_in) <= Z_TWO_SIDED[2] * se)
    y = s["samples_out"].numpy()
    se_out = y.std(0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(s["mc_mean_out"].numpy() - mean_out) <= Z_TWO_SIDED[2] * se_out)
    # correlation estimate: Fisher z has standard error 1/sqrt(n - 3)
    r = np.corrcoef(x.T)[0, 1]
    assert abs(math.atanh(r) - math.atanh(0.6)) <= Z_TWO_SIDED[1] / math.sqrt(n - 3)


def test_affine_summary_is_seeded():
    a = widgets.affine_gaussian_summary(1, 0, 0, 1, 0.2, n_samples=50, seed=1)
    b = widgets.affine_gaussian_summary(1, 0, 0, 1, 0.2, n_samples=50, seed=1)
    c = widgets.affine_gaussian_summary(1, 0, 0, 1, 0.2, n_samples=50, seed=2)
    assert torch.equal(a["samples_in"], b["samples_in"])
    assert not torch.equal(a["samples_in"], c["samples_in"])


def test_affine_summary_rejects_bad_correlation():
    with pytest.raises(ValueError, match="rho"):
        widgets.affine_gaussian_summary(1, 0, 0, 1, 1.5)


def test_affine_widget_frames_are_the_closed_form_at_their_grid_point():
    grid = {"a11": (1.0,), "a12": (-1.0, 1.0), "a21": (0.0, 1.0), "a22": (1.0,), "rho": (-0.5, 0.3)}
    w = widgets.affine_gaussian_widget(n_samples=300, seed=0, grid=grid)
    points = check_frames(w, grid, ["A[0,0]", "A[0,1]", "A[1,0]", "A[1,1]", "input correlation ρ"])
    for point in points:
        _, _, mean_out, cov_out = _reference_affine(*point)
        np.testing.assert_allclose(w.results[point]["mean_out"].numpy(), mean_out, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(w.results[point]["cov_out"].numpy(), cov_out, rtol=1e-13, atol=1e-14)
    # the preferred start (rows (1, 1) and (0, 1), rho = 0.6) where the grid has it, else each list's first value
    assert w.key == (1.0, 1.0, 0.0, 1.0, -0.5)
    assert all(-1 < rho < 1 for rho in widgets.AFFINE_GRID["rho"])
    # the singular example of the chapter's text is on the default grid
    assert all(1.0 in widgets.AFFINE_GRID[k] for k in ("a11", "a12", "a21", "a22"))


# ----------------------------------------------------------------------------- chapter 2


def _reference_relu(mu, sigma):
    """Moments of max(z, 0) by SciPy: the truncated-normal mean/variance mixed with the point mass."""
    if sigma == 0:
        return max(mu, 0.0), 0.0
    p_on = stats.norm.sf(0.0, loc=mu, scale=sigma)
    a = (0.0 - mu) / sigma
    tn = stats.truncnorm(a, np.inf, loc=mu, scale=sigma)
    mean = p_on * tn.mean()
    second = p_on * (tn.var() + tn.mean() ** 2)
    return mean, second - mean**2


@pytest.mark.parametrize("mu,sigma", [(0.5, 1.0), (-1.5, 0.7), (0.0, 2.0), (2.5, 0.3), (-3.0, 1.0)])
def test_relu_summary_matches_scipy(mu, sigma):
    s = widgets.relu_gaussian_summary(mu, sigma, n_samples=4000, seed=1)
    mean, var = _reference_relu(mu, sigma)
    assert s["mean"] == pytest.approx(mean, rel=1e-10, abs=1e-13)
    assert s["var"] == pytest.approx(var, rel=1e-9, abs=1e-13)
    assert s["p_zero"] == pytest.approx(stats.norm.cdf(-mu / sigma), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("mu,sigma", [(0.5, 1.0), (-0.8, 1.3)])
def test_relu_summary_monte_carlo_is_honest(mu, sigma):
    n = 30_000
    s = widgets.relu_gaussian_summary(mu, sigma, n_samples=n, seed=7)
    q = s["samples"].numpy()
    assert q.shape == (n,) and np.all(q >= 0)
    # the estimates come from exactly the returned draws
    assert s["mc_mean"] == pytest.approx(q.mean(), rel=1e-12)
    assert s["mc_var"] == pytest.approx(q.var(ddof=1), rel=1e-10)
    assert s["mc_mean_se"] == pytest.approx(q.std(ddof=1) / math.sqrt(n), rel=1e-10)
    # and they agree with the closed form within the sampling error (Bonferroni over mean, variance, mass at 0)
    mean, var = _reference_relu(mu, sigma)
    assert abs(s["mc_mean"] - mean) <= Z_TWO_SIDED[4] * s["mc_mean_se"]
    assert abs(s["mc_var"] - var) <= Z_TWO_SIDED[4] * s["mc_var_se"]
    p0 = stats.norm.cdf(-mu / sigma)
    assert abs(np.mean(q == 0) - p0) <= Z_TWO_SIDED[4] * math.sqrt(p0 * (1 - p0) / n)
    assert s["z_mean"] == pytest.approx(abs(s["mc_mean"] - s["mean"]) / s["mc_mean_se"], rel=1e-9)


def test_relu_summary_zero_noise_and_bad_sigma():
    s = widgets.relu_gaussian_summary(-0.5, 0.0, n_samples=10)
    assert (s["mean"], s["var"], s["p_zero"]) == (0.0, 0.0, 1.0)
    s = widgets.relu_gaussian_summary(1.5, 0.0, n_samples=10)
    assert (s["mean"], s["var"], s["p_zero"]) == (1.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        widgets.relu_gaussian_summary(0.0, -1.0)


def test_relu_widget_frames_are_the_closed_form_at_their_grid_point():
    grid = {"mu": (-1.5, 0.5), "sigma": (0.8, 2.0)}
    w = widgets.relu_gaussian_widget(n_samples=2000, seed=0, grid=grid)
    points = check_frames(w, grid, ["mean μ", "standard deviation σ"])
    for mu, sigma in points:
        mean, var = _reference_relu(mu, sigma)
        assert w.results[mu, sigma]["mean"] == pytest.approx(mean, rel=1e-10)
        assert w.results[mu, sigma]["var"] == pytest.approx(var, rel=1e-9)
        text = w.frames[mu, sigma].children[1].value  # the printed numbers under the picture
        assert f"E[q] = {w.results[mu, sigma]['mean']:.4f}" in text
    assert w.key == (0.5, 0.8)
    assert min(widgets.RELU_GRID["sigma"]) > 0  # the density plot needs sigma > 0


# ----------------------------------------------------------------------------- viz helpers


@pytest.mark.parametrize("k", [1.0, 2.0, 3.0])
def test_gaussian_ellipse_is_the_mahalanobis_level_set(k):
    mean = np.array([1.0, -2.0])
    cov = np.array([[2.0, 0.9], [0.9, 0.7]])
    pts = viz.gaussian_ellipse(mean, cov, k, n_points=101)
    d = pts - mean
    m2 = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
    np.testing.assert_allclose(m2, k**2, rtol=1e-12)
    np.testing.assert_allclose(pts[0], pts[-1], atol=1e-12)
    # its area is pi k^2 sqrt(det cov) (shoelace formula)
    area = 0.5 * abs(np.dot(pts[:-1, 0], pts[1:, 1]) - np.dot(pts[1:, 0], pts[:-1, 1]))
    assert area == pytest.approx(math.pi * k**2 * math.sqrt(np.linalg.det(cov)), rel=5e-3)


def test_gaussian_ellipse_of_a_singular_covariance_is_a_segment():
    cov = np.array([[1.0, 2.0], [2.0, 4.0]])  # rank 1, along (1, 2)
    pts = viz.gaussian_ellipse(torch.zeros(2, dtype=torch.float64), torch.tensor(cov), 2.0)
    np.testing.assert_allclose(pts[:, 1], 2 * pts[:, 0], atol=1e-12)
    assert np.abs(pts).max() == pytest.approx(2.0 * math.sqrt(4.0), rel=1e-3)  # k * sd of the second coordinate


def test_gaussian_ellipse_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="mean"):
        viz.gaussian_ellipse(np.zeros(3), np.eye(3))


def test_figures_are_built():
    s = widgets.affine_gaussian_summary(1.0, 0.8, -0.4, 1.2, 0.3, n_samples=100)
    fig = viz.plot_affine_gaussian(s["mean_in"], s["cov_in"], s["mean_out"], s["cov_out"],
                                   s["samples_in"], s["samples_out"], weight=s["weight"])
    assert len(fig.axes) == 2
    r = widgets.relu_gaussian_summary(0.5, 1.0, n_samples=500)
    assert len(viz.plot_relu_gaussian_check(0.5, 1.0, r).axes) == 2
    mus = torch.linspace(-1, 1, 5, dtype=torch.float64)
    ones = torch.ones(5, dtype=torch.float64)
    assert len(viz.plot_relu_moment_sweep(mus, 1.0, ones, ones, ones, 0.1 * ones, ones, 0.1 * ones).axes) == 2
    assert len(viz.plot_zero_mean_ratio(mus, ones, ones).axes) == 1
    with pytest.raises(ValueError, match="sigma"):
        viz.plot_rectified_gaussian(0.0, 0.0)


def test_rectified_density_point_mass_height():
    fig = viz.plot_rectified_gaussian(-0.7, 1.3)
    ax = fig.axes[0]
    # the point mass is drawn as a vertical line from 0 to Phi(-mu/sigma)
    heights = [seg[:, 1].max() for coll in ax.collections for seg in getattr(coll, "get_segments", lambda: [])()]
    assert any(h == pytest.approx(stats.norm.cdf(0.7 / 1.3), rel=1e-12) for h in heights)
