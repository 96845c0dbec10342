"""Interactive widgets for the book, organised by chapter.

Each widget is two functions:

- a *pure* function of the slider values that returns a ``dict`` of numbers and arrays (closed-form moments,
  Monte Carlo estimates with standard errors, samples), computed with the core; it draws nothing, so tests
  check it directly;
- a *builder* that wraps it in :class:`ipywidgets.interactive`: the callback calls the pure function, draws
  with :mod:`netmoments.viz`, and returns the dict, which ``interactive`` keeps as ``.result``.

A test can therefore change a slider (``w.children[i].value = ...``) and read ``w.result``.
ipywidgets (like matplotlib) is imported here and in :mod:`netmoments.viz` only; the core never imports it.
"""
from __future__ import annotations

import math

import ipywidgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from . import viz
from .affine import affine_moments
from .gaussian import sample_gaussian
from .montecarlo import monte_carlo_moments
from .relu import relu_moments
# chapters 3-5
from .affine import AffineReLUAffine
from .relu import relu_cross_moment, zero_mean_relu_kernel
from .special import bivariate_normal_cdf, bivariate_normal_cdf_series

__all__ = [
    # chapter 1
    "affine_gaussian_summary",
    "affine_gaussian_widget",
    # chapter 2
    "relu_gaussian_summary",
    "relu_gaussian_widget",
    # chapter 6: deep networks
    "noise_sensitivity_summary",
    "noise_sensitivity_widget",
]

_SLIDER_LAYOUT = ipywidgets.Layout(width="420px")
_SLIDER_STYLE = {"description_width": "150px"}


def _slider(value, lo, hi, step, description) -> ipywidgets.FloatSlider:
    # continuous_update=False: redraw on release, not on every pixel of a drag (each redraw samples).
    return ipywidgets.FloatSlider(
        value=value, min=lo, max=hi, step=step, description=description, continuous_update=False,
        readout_format=".2f", layout=_SLIDER_LAYOUT, style=_SLIDER_STYLE,
    )


def _show(fig) -> None:
    # display + close (rather than plt.show) behaves the same under the inline backend, in the
    # widget's Output area, and headless in tests.
    display(fig)
    plt.close(fig)


# ----------------------------------------------------------------------------- chapter 1: affine layers

#: The input Gaussian of the chapter 1 widget: means and standard deviations of the two coordinates.
AFFINE_INPUT_MEAN = (1.0, 0.5)
AFFINE_INPUT_STD = (1.0, 0.6)
AFFINE_BIAS = (0.5, -1.0)


def affine_gaussian_summary(
    a11: float, a12: float, a21: float, a22: float, rho: float, n_samples: int = 2000, seed: int = 0,
) -> dict:
    """A 2-D Gaussian with correlation ``rho`` pushed through ``x -> A x + b``, ``A = [[a11, a12], [a21, a22]]``.

    The input has the fixed means :data:`AFFINE_INPUT_MEAN`, standard deviations :data:`AFFINE_INPUT_STD`, and
    the bias is :data:`AFFINE_BIAS`.

    Returns:
        dict of float64 tensors: ``mean_in (2,)``, ``cov_in (2, 2)``, ``weight (2, 2)``, ``bias (2,)``,
        ``mean_out (2,)``, ``cov_out (2, 2)`` (closed form, :func:`netmoments.affine_moments`),
        ``samples_in (N, 2)`` and ``samples_out (N, 2)`` (the same draws mapped), ``mc_mean_out (2,)`` and
        ``mc_cov_out (2, 2)`` (sample moments of ``samples_out``).
    """
    if not -1.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [-1, 1], got {rho}")
    dtype = torch.float64
    std = torch.tensor(AFFINE_INPUT_STD, dtype=dtype)
    corr = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=dtype)
    mean_in = torch.tensor(AFFINE_INPUT_MEAN, dtype=dtype)
    cov_in = std[:, None] * corr * std[None, :]
    weight = torch.tensor([[a11, a12], [a21, a22]], dtype=dtype)
    bias = torch.tensor(AFFINE_BIAS, dtype=dtype)
    mean_out, cov_out = affine_moments(mean_in, cov_in, weight, bias)
    generator = torch.Generator().manual_seed(seed)
    samples_in = sample_gaussian(mean_in, cov_in, n_samples, generator=generator)
    samples_out = samples_in @ weight.T + bias
    return {
        "mean_in": mean_in,
        "cov_in": cov_in,
        "weight": weight,
        "bias": bias,
        "mean_out": mean_out,
        "cov_out": cov_out,
        "samples_in": samples_in,
        "samples_out": samples_out,
        "mc_mean_out": samples_out.mean(0),
        "mc_cov_out": torch.cov(samples_out.T),
    }


def affine_gaussian_widget(n_samples: int = 2000, seed: int = 0) -> ipywidgets.interactive:
    """Sliders for the four entries of ``A`` and the input correlation; draws both Gaussians' 1-, 2-, 3-sigma
    ellipses over the same draws before and after the map (see :func:`affine_gaussian_summary`)."""

    def draw(a11, a12, a21, a22, rho):
        summary = affine_gaussian_summary(a11, a12, a21, a22, rho, n_samples=n_samples, seed=seed)
        fig = viz.plot_affine_gaussian(
            summary["mean_in"], summary["cov_in"], summary["mean_out"], summary["cov_out"],
            summary["samples_in"], summary["samples_out"], weight=summary["weight"],
        )
        _show(fig)
        return summary

    return ipywidgets.interactive(
        draw,
        a11=_slider(1.0, -2.0, 2.0, 0.05, "A[0,0]"),
        a12=_slider(0.8, -2.0, 2.0, 0.05, "A[0,1]"),
        a21=_slider(-0.4, -2.0, 2.0, 0.05, "A[1,0]"),
        a22=_slider(1.2, -2.0, 2.0, 0.05, "A[1,1]"),
        rho=_slider(0.3, -0.99, 0.99, 0.01, "input correlation ρ"),
    )


# ----------------------------------------------------------------------------- chapter 2: one ReLU of one Gaussian


def relu_gaussian_summary(mu: float, sigma: float, n_samples: int = 20000, seed: int = 0) -> dict:
    """Closed-form and Monte Carlo moments of ``max(z, 0)``, ``z ~ N(mu, sigma^2)``.

    Returns:
        dict: ``mean``, ``var`` (closed form, :func:`netmoments.relu_moments`), ``p_zero`` (``P(q = 0) =
        Phi(-mu/sigma)``), ``mc_mean``, ``mc_mean_se``, ``mc_var``, ``mc_var_se`` (Monte Carlo with standard
        errors from the same draws), ``z_mean``, ``z_var`` (``|closed form - MC| / SE``), all Python floats,
        and ``samples`` (``(n_samples,)`` float64 tensor of draws of ``max(z, 0)``).
    """
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")
    dtype = torch.float64
    mean_t = torch.tensor([mu], dtype=dtype)
    var_t = torch.tensor([sigma**2], dtype=dtype)
    mean, var = relu_moments(mean_t, var_t)
    kept = []

    def relu_and_keep(x):
        # keep the draws too, so the histogram shows the very samples behind the estimates
        out = torch.relu(x)
        kept.append(out)
        return out

    generator = torch.Generator().manual_seed(seed)
    mc = monte_carlo_moments(relu_and_keep, mean_t, var_t.reshape(1, 1), n_samples, generator=generator)
    samples = torch.cat(kept).reshape(-1)
    z_mean, z_var = mc.z_scores(mean, var)
    p_zero = 0.5 * math.erfc(mu / (sigma * math.sqrt(2.0))) if sigma > 0 else float(mu <= 0)
    return {
        "mean": mean.item(),
        "var": var.item(),
        "p_zero": p_zero,
        "mc_mean": mc.mean.item(),
        "mc_mean_se": mc.mean_se.item(),
        "mc_var": mc.var.item(),
        "mc_var_se": mc.var_se.item(),
        "z_mean": z_mean.item(),
        "z_var": z_var.item(),
        "samples": samples,
    }


def relu_gaussian_widget(n_samples: int = 20000, seed: int = 0) -> ipywidgets.interactive:
    """Sliders for ``mu`` and ``sigma``; draws the law of ``max(z, 0)`` with its closed-form and Monte Carlo
    means (see :func:`relu_gaussian_summary`)."""

    def draw(mu, sigma):
        s = relu_gaussian_summary(mu, sigma, n_samples=n_samples, seed=seed)
        fig = viz.plot_rectified_gaussian(
            mu, sigma, samples=s["samples"], analytic=(s["mean"], s["var"]),
            monte_carlo=(s["mc_mean"], s["mc_mean_se"], s["mc_var"], s["mc_var_se"]),
        )
        _show(fig)
        print(f"closed form:               E[q] = {s['mean']:.4f}           Var[q] = {s['var']:.4f}")
        print(
            f"Monte Carlo ({n_samples} draws): E[q] = {s['mc_mean']:.4f} ± {s['mc_mean_se']:.4f}  "
            f"Var[q] = {s['mc_var']:.4f} ± {s['mc_var_se']:.4f}"
        )
        return s

    return ipywidgets.interactive(
        draw,
        mu=_slider(0.5, -3.0, 3.0, 0.05, "mean μ"),
        sigma=_slider(1.0, 0.05, 3.0, 0.05, "standard deviation σ"),
    )


# ----------------------------------------------------------------------------- chapter 3: two ReLUs, the cross moment

__all__ += ["relu_pair_summary", "relu_pair_widget"]

_INV_2PI = 1.0 / (2.0 * math.pi)


def _standardized(mu: float, sigma: float) -> float:
    """h = mu / sigma; for sigma = 0 the unit is the constant max(mu, 0), on (h = +inf) only if mu > 0."""
    if sigma > 0:
        return mu / sigma
    return math.inf if mu > 0 else -math.inf


def relu_pair_summary(
    mu_i: float, mu_j: float, sigma_i: float, sigma_j: float, rho: float, n_samples: int = 20000, seed: int = 0,
) -> dict:
    """The cross moment and covariance of ``q_i = max(y_i, 0)``, ``q_j = max(y_j, 0)`` for a correlated Gaussian
    pair ``(y_i, y_j)``: exact (NM20), NM18's zero-mean formula, and Monte Carlo with standard errors.

    Args:
        mu_i, mu_j: pre-activation means.
        sigma_i, sigma_j: pre-activation standard deviations, ``>= 0``.
        rho: their correlation, in ``[-1, 1]``.
        n_samples: Monte Carlo draws.
        seed: seed of the draws.

    Returns:
        dict of Python floats: ``cross_exact`` (``E[q_i q_j]``, :func:`netmoments.relu_cross_moment`),
        ``cross_zero_mean`` (``sigma_i sigma_j c(rho)``), ``cov_exact``, ``cov_zero_mean`` (NM18's off-diagonal
        ``sigma_i sigma_j (c(rho) - 1/(2 pi))``), ``cov_error`` (``cov_zero_mean - cov_exact``), ``p_both_on``
        (``Phi2(h_i, h_j; rho)``, the probability that both units are on), the Monte Carlo ``mc_cross``,
        ``mc_cross_se``, ``mc_cov``, ``mc_cov_se``, ``mc_p_both_on``, the scores ``z_cross``, ``z_cov``
        (``|exact - MC| / SE``); and ``samples``, an ``(n_samples, 2)`` float64 tensor of draws of
        ``(q_i, q_j)``.
    """
    if sigma_i < 0 or sigma_j < 0:
        raise ValueError(f"sigma_i and sigma_j must be non-negative, got {sigma_i} and {sigma_j}")
    if not -1.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [-1, 1], got {rho}")
    dtype = torch.float64
    mi, mj, si, sj, r = (torch.tensor(float(v), dtype=dtype) for v in (mu_i, mu_j, sigma_i, sigma_j, rho))
    cross_exact = relu_cross_moment(mi, mj, si * si, sj * sj, r)
    cross_zero_mean = relu_cross_moment(mi, mj, si * si, sj * sj, r, method="zero_mean")
    first, _ = relu_moments(torch.stack([mi, mj]), torch.stack([si, sj]) ** 2)
    cov_exact = cross_exact - first[0] * first[1]
    cov_zero_mean = si * sj * (zero_mean_relu_kernel(r) - _INV_2PI)

    mean = torch.stack([mi, mj])
    cov = torch.stack([torch.stack([si * si, r * si * sj]), torch.stack([r * si * sj, sj * sj])])
    kept = []

    def rectify(x):
        # outputs: q_i, q_j, q_i q_j and 1[both on]; the last two give the cross moment and Phi2 with SEs
        q = torch.relu(x)
        kept.append(q)
        product = q[..., 0] * q[..., 1]
        both_on = ((x[..., 0] > 0) & (x[..., 1] > 0)).to(x.dtype)
        return torch.stack([q[..., 0], q[..., 1], product, both_on], dim=-1)

    generator = torch.Generator().manual_seed(seed)
    mc = monte_carlo_moments(rectify, mean, cov, n_samples, generator=generator, covariance=True)
    h = torch.tensor([_standardized(mu_i, sigma_i), _standardized(mu_j, sigma_j)], dtype=dtype)
    p_both_on = bivariate_normal_cdf(h[0], h[1], r)
    tiny = torch.finfo(dtype).tiny
    return {
        "cross_exact": cross_exact.item(),
        "cross_zero_mean": cross_zero_mean.item(),
        "cov_exact": cov_exact.item(),
        "cov_zero_mean": cov_zero_mean.item(),
        "cov_error": (cov_zero_mean - cov_exact).item(),
        "p_both_on": p_both_on.item(),
        "mc_cross": mc.mean[2].item(),
        "mc_cross_se": mc.mean_se[2].item(),
        "mc_cov": mc.cov[0, 1].item(),
        "mc_cov_se": mc.cov_se[0, 1].item(),
        "mc_p_both_on": mc.mean[3].item(),
        "z_cross": ((cross_exact - mc.mean[2]).abs() / mc.mean_se[2].clamp_min(tiny)).item(),
        "z_cov": ((cov_exact - mc.cov[0, 1]).abs() / mc.cov_se[0, 1].clamp_min(tiny)).item(),
        "samples": torch.cat(kept),
    }


def relu_pair_widget(n_samples: int = 20000, seed: int = 0) -> ipywidgets.interactive:
    """Sliders for the means, standard deviations and correlation of a Gaussian pair; draws samples of
    ``(max(y_i, 0), max(y_j, 0))`` and compares the exact covariance, Monte Carlo and NM18's zero-mean formula
    (see :func:`relu_pair_summary`)."""

    def draw(mu_i, mu_j, sigma_i, sigma_j, rho):
        s = relu_pair_summary(mu_i, mu_j, sigma_i, sigma_j, rho, n_samples=n_samples, seed=seed)
        fig = viz.plot_relu_pair(s)
        _show(fig)
        print(
            f"Cov[q_i, q_j]: exact = {s['cov_exact']:.4f}, Monte Carlo = {s['mc_cov']:.4f} ± {s['mc_cov_se']:.4f}, "
            f"2018 zero-mean formula = {s['cov_zero_mean']:.4f} (error {s['cov_error']:+.4f})"
        )
        return s

    return ipywidgets.interactive(
        draw,
        mu_i=_slider(0.5, -3.0, 3.0, 0.05, "mean μ_i"),
        mu_j=_slider(-0.5, -3.0, 3.0, 0.05, "mean μ_j"),
        sigma_i=_slider(1.0, 0.1, 3.0, 0.05, "std σ_i"),
        sigma_j=_slider(1.0, 0.1, 3.0, 0.05, "std σ_j"),
        rho=_slider(0.6, -0.99, 0.99, 0.01, "correlation ρ"),
    )


# ----------------------------------------------------------------------------- chapter 4: network moments

__all__ += ["ar1_covariance", "chapter4_network", "network_covariance_summary", "network_covariance_widget"]

#: The chapter 4 widget's network: input size n, hidden width m, output size p, and the seed of its weights.
NETWORK_SIZES = (8, 24, 4)
NETWORK_SEED = 2018


def ar1_covariance(dim: int, coefficient: float, scale: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The AR(1) covariance ``Sigma_kl = scale^2 coefficient^|k - l|``, ``(dim, dim)``: neighbouring coordinates
    (pixels, time steps) correlated by ``coefficient``, decaying with distance. Positive definite for
    ``|coefficient| < 1``."""
    if not -1.0 < coefficient < 1.0:
        raise ValueError(f"coefficient must lie in (-1, 1), got {coefficient}")
    if scale < 0:
        raise ValueError(f"scale must be non-negative, got {scale}")
    lag = torch.arange(dim)
    power = (lag[:, None] - lag[None, :]).abs().to(dtype)
    base = torch.tensor(coefficient, dtype=dtype)
    # 0 ** 0 = 1 on the diagonal, also for coefficient = 0
    return scale**2 * torch.where(power == 0, torch.ones_like(power), base.abs() ** power * base.sign() ** power)


def chapter4_network(dtype: torch.dtype = torch.float64) -> dict:
    """The fixed random network of the chapter 4 widget (sizes :data:`NETWORK_SIZES`, seed :data:`NETWORK_SEED`).

    Returns:
        dict of tensors: ``A (m, n)`` and ``B (p, m)`` with variance-preserving Gaussian entries, the input mean
        ``mean (n,)``, and ``direction (m,)``, the standard normal direction along which the bias shift moves
        the pre-activation means.
    """
    n, m, p = NETWORK_SIZES
    generator = torch.Generator().manual_seed(NETWORK_SEED)
    A = torch.randn(m, n, generator=generator, dtype=dtype) / math.sqrt(n)
    B = torch.randn(p, m, generator=generator, dtype=dtype) / math.sqrt(m)
    mean = torch.randn(n, generator=generator, dtype=dtype)
    direction = torch.randn(m, generator=generator, dtype=dtype)
    return {"A": A, "B": B, "mean": mean, "direction": direction}


def network_covariance_summary(
    noise_scale: float, ar_coefficient: float, bias_shift: float, n_samples: int = 20000, seed: int = 0,
) -> dict:
    """Output moments of the chapter 4 network ``g(x) = B relu(A x + c1)`` for ``x ~ N(mean, Sigma)``, with
    ``Sigma = noise_scale^2 AR(ar_coefficient)`` and ``c1 = -A mean + bias_shift * direction``, so that the
    pre-activation means are ``bias_shift * direction`` (all zero at ``bias_shift = 0``).

    Returns:
        dict of float64 tensors: ``mean (p,)`` and ``cov_exact (p, p)`` (:meth:`netmoments.AffineReLUAffine.moments`),
        ``cov_hybrid (p, p)`` (NM18's hybrid), ``var_diagonal_only (p,)`` (NM18's ``(B * B) Var[q]``, which drops
        every hidden covariance), ``hidden_h (m,)`` (standardised pre-activation means), Monte Carlo ``mc_mean``,
        ``mc_mean_se``, ``mc_cov``, ``mc_cov_se`` and ``samples (n_samples, p)`` (the draws of ``g``); and Python
        floats ``error_hybrid`` and ``error_mc`` (``||cov - cov_exact||_F / ||cov_exact||_F``),
        ``error_diagonal_only`` (largest relative error of an output variance) and ``max_z`` (largest
        ``|exact - MC| / SE`` over the output means and covariance entries).
    """
    if noise_scale <= 0:
        raise ValueError(f"noise_scale must be positive, got {noise_scale}")
    net = chapter4_network()
    A, B, mean = net["A"], net["B"], net["mean"]
    cov = ar1_covariance(A.shape[-1], ar_coefficient, noise_scale)
    c1 = -(A @ mean) + bias_shift * net["direction"]
    model = AffineReLUAffine(A, c1, B, torch.zeros(B.shape[0], dtype=A.dtype))
    out_mean, cov_exact = model.moments(mean, cov)
    _, cov_hybrid = model.moments(mean, cov, method="hybrid")
    y_mean, y_cov = model.hidden_moments(mean, cov)
    y_var = torch.diagonal(y_cov)
    _, q_var = relu_moments(y_mean, y_var)
    var_diagonal_only = (B * B) @ q_var
    kept = []

    def network(x):
        out = model(x)
        kept.append(out)
        return out

    generator = torch.Generator().manual_seed(seed)
    mc = monte_carlo_moments(network, mean, cov, n_samples, generator=generator, covariance=True)
    tiny = torch.finfo(A.dtype).tiny
    z = torch.cat([((out_mean - mc.mean) / mc.mean_se.clamp_min(tiny)).abs().reshape(-1),
                   ((cov_exact - mc.cov) / mc.cov_se.clamp_min(tiny)).abs().reshape(-1)])
    scale = torch.linalg.matrix_norm(cov_exact)
    exact_var = torch.diagonal(cov_exact)
    return {
        "mean": out_mean,
        "cov_exact": cov_exact,
        "cov_hybrid": cov_hybrid,
        "var_diagonal_only": var_diagonal_only,
        "hidden_h": y_mean / y_var.sqrt(),
        "mc_mean": mc.mean,
        "mc_mean_se": mc.mean_se,
        "mc_cov": mc.cov,
        "mc_cov_se": mc.cov_se,
        "samples": torch.cat(kept),
        "error_hybrid": (torch.linalg.matrix_norm(cov_hybrid - cov_exact) / scale).item(),
        "error_mc": (torch.linalg.matrix_norm(mc.cov - cov_exact) / scale).item(),
        "error_diagonal_only": ((var_diagonal_only - exact_var).abs() / exact_var).max().item(),
        "max_z": z.max().item(),
    }


def network_covariance_widget(n_samples: int = 20000, seed: int = 0) -> ipywidgets.interactive:
    """Sliders for the input noise scale, the AR(1) correlation of the input noise and the bias shift of the
    pre-activation means; draws two outputs' samples with the exact and hybrid 2-sigma ellipses, and the exact
    output covariance beside the hybrid's error (see :func:`network_covariance_summary`)."""

    def draw(noise_scale, ar_coefficient, bias_shift):
        s = network_covariance_summary(noise_scale, ar_coefficient, bias_shift, n_samples=n_samples, seed=seed)
        fig = viz.plot_network_covariance(s)
        _show(fig)
        print(
            f"relative error of Cov[g] (Frobenius): hybrid {s['error_hybrid']:.3f}, Monte Carlo {s['error_mc']:.3f}; "
            f"diagonal-only variances: up to {s['error_diagonal_only']:.3f}; largest |exact - MC|/SE = {s['max_z']:.2f}"
        )
        return s

    return ipywidgets.interactive(
        draw,
        noise_scale=_slider(0.5, 0.1, 2.0, 0.05, "noise scale σ"),
        ar_coefficient=_slider(0.6, -0.9, 0.95, 0.05, "AR(1) correlation φ"),
        bias_shift=_slider(1.0, -2.0, 2.0, 0.05, "bias shift t"),
    )


# ----------------------------------------------------------------------------- chapter 5: computing Phi2

__all__ += ["series_slice_summary", "series_slice_widget"]


def series_slice_summary(h: float, k: float, terms: int, n_rho: int = 801) -> dict:
    """NM20's ``terms``-term series for ``Phi2(h, k; rho)`` against the exact value along ``rho in (-1, 1)``.

    Returns:
        dict: float64 tensors ``rho (n_rho,)`` (from -0.999 to 0.999), ``exact``, ``series`` and ``error``
        (``|series - exact|``), and Python numbers ``h``, ``k``, ``terms``, ``max_error`` and ``rho_of_max``.
    """
    if isinstance(terms, bool) or not isinstance(terms, int) or terms < 1:
        raise ValueError(f"terms must be a positive int, got {terms!r}")
    dtype = torch.float64
    rho = torch.linspace(-0.999, 0.999, n_rho, dtype=dtype)
    hh = torch.full_like(rho, float(h))
    kk = torch.full_like(rho, float(k))
    exact = bivariate_normal_cdf(hh, kk, rho)
    series = bivariate_normal_cdf_series(hh, kk, rho, terms=terms)
    error = (series - exact).abs()
    worst = int(error.argmax())
    return {
        "rho": rho, "exact": exact, "series": series, "error": error,
        "h": float(h), "k": float(k), "terms": terms,
        "max_error": error[worst].item(), "rho_of_max": rho[worst].item(),
    }


def series_slice_widget(n_rho: int = 801) -> ipywidgets.interactive:
    """Sliders for ``h``, ``k`` and the number of series terms; draws the series and its error along ``rho``
    (see :func:`series_slice_summary`)."""

    def draw(h, k, terms):
        s = series_slice_summary(h, k, terms, n_rho=n_rho)
        _show(viz.plot_series_slice(s))
        return s

    return ipywidgets.interactive(
        draw,
        h=_slider(0.3, -3.0, 3.0, 0.05, "h"),
        k=_slider(-0.4, -3.0, 3.0, 0.05, "k"),
        terms=ipywidgets.IntSlider(value=5, min=1, max=10, description="terms N", continuous_update=False,
                                   layout=_SLIDER_LAYOUT, style=_SLIDER_STYLE),
    )


# ----------------------------------------------------------------------------- chapter 8: Gaussian attacks

__all__ += ["load_attack_browser_data", "attack_browser_summary", "attack_browser_widget"]


def load_attack_browser_data(path) -> dict:
    """The precomputed chapter-8 attacks (``book/data/attacks_widget.npz``) as a dict of numpy arrays.

    Arrays are indexed ``[image, target, weight, ...]``: ``mean``, ``noise_std`` ``(I, T, W, 1, H, W)``,
    ``draws`` ``(I, T, W, S, 1, H, W)``, ``success`` ``(I, T, W)``; plus ``clean``, ``labels``, ``targets``
    ``(I, T)`` and ``weights`` ``(W,)``.
    """
    import numpy as np

    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def attack_browser_summary(data: dict, image: int, target: int, weight: int) -> dict:
    """Pure selection for the attack browser: one precomputed attack and its numbers.

    ``image``, ``target``, ``weight`` are indices into the arrays of :func:`load_attack_browser_data`.
    Returns the panels (clean, mean, noise std, draws, each with a leading batch axis of 1), the label, the
    target class, the L1 weight, the MC success rate and the pixels touched (|δ| or noise std > 1e-3).
    """
    n_img, n_tgt, n_w = data["success"].shape
    for name, value, size in (("image", image, n_img), ("target", target, n_tgt), ("weight", weight, n_w)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise ValueError(f"{name} must be an int index in [0, {size - 1}], got {value!r}")
    clean = data["clean"][image]
    mean = data["mean"][image, target, weight]
    std = data["noise_std"][image, target, weight]
    touched = int(((abs(mean - clean) > 1e-3) | (std > 1e-3)).sum())
    return {
        "clean": clean[None],
        "mean": mean[None],
        "noise_std": std[None],
        "draws": data["draws"][image, target, weight][None],
        "label": int(data["labels"][image]),
        "target": int(data["targets"][image, target]),
        "l1_weight": float(data["weights"][weight]),
        "success": float(data["success"][image, target, weight]),
        "pixels_touched": touched,
    }


def attack_browser_widget(data: dict) -> ipywidgets.interactive:
    """Browse precomputed targeted sparse Gaussian attacks: digit, target and L1 weight (see the summary)."""
    n_img, n_tgt, n_w = data["success"].shape

    def draw(image, target, weight):
        s = attack_browser_summary(data, image, target, weight)
        title = f"{s['label']} → {s['target']}, λ={s['l1_weight']:g}"
        _show(viz.plot_attack_grid(s["clean"], s["mean"], s["noise_std"], s["draws"], titles=[title],
                                   success=[s["success"]]))
        print(f"pixels touched {s['pixels_touched']}; success of the draws on the real LeNet {s['success']:.3f}")
        return s

    return ipywidgets.interactive(
        draw,
        image=ipywidgets.IntSlider(value=0, min=0, max=n_img - 1, description="digit", continuous_update=False),
        target=ipywidgets.IntSlider(value=0, min=0, max=n_tgt - 1, description="target #", continuous_update=False),
        weight=ipywidgets.IntSlider(value=1, min=0, max=n_w - 1, description="L1 weight #", continuous_update=False),
    )


# ----------------------------------------------------------------------------- chapter 6: deep networks


def noise_sensitivity_summary(model, image: torch.Tensor, logit: int, sigma: float, method: str = "exact",
                              linearization=None) -> dict:
    """Which pixels' noise drives a logit's variance, for ``x ~ N(image, sigma^2 I)`` through ``model``'s TSL.

    Args:
        model: a piecewise-linear ``nn.Sequential`` classifier (e.g. the book's LeNet).
        image: ``(1, H, W)`` digit.
        logit: which output to explain.
        sigma: per-pixel noise standard deviation.
        linearization: optional precomputed float64 :func:`netmoments.linearize.two_stage_linearize` at ``image``.

    Returns:
        dict with ``attribution`` ``(H, W)`` (``v_i dVar/dv_i`` through the closed form), ``linear`` ``(H, W)``
        (the first-order share ``w_i^2 sigma^2``, ``w = A^T D b_logit``), ``variance`` (closed form),
        ``attribution_sum``, ``linear_variance``, ``logits`` ``(p,)`` and ``prediction``.
    """
    from .linearize import pixel_noise_sensitivity, two_stage_linearize

    tsl = linearization if linearization is not None else two_stage_linearize(model, image, dtype=torch.float64)
    x = image.to(torch.float64).reshape(-1)
    attribution, variance = pixel_noise_sensitivity(tsl, x, sigma**2, logits=[logit], method=method)
    on = (tsl.A @ x + tsl.c1 > 0).to(x.dtype)
    w = tsl.A.mT @ (on * tsl.B[logit])
    linear = w**2 * sigma**2
    logits = tsl(x)
    shape = image.shape[-2:]
    return {
        "attribution": attribution[0].reshape(shape),
        "linear": linear.reshape(shape),
        "variance": float(variance[logit]),
        "attribution_sum": float(attribution.sum()),
        "linear_variance": float(linear.sum()),
        "logits": logits,
        "prediction": int(logits.argmax()),
    }


def noise_sensitivity_widget(model, images: torch.Tensor, labels: torch.Tensor, n_digits: int = 12,
                             method: str = "exact") -> ipywidgets.interactive:
    """Pick a digit, a logit and a noise level; shows the digit and which pixels' noise drives that logit's
    variance (see :func:`noise_sensitivity_summary`). Linearizations are cached per digit."""
    cache = {}

    def draw(digit, logit, sigma):
        if digit not in cache:
            from .linearize import two_stage_linearize

            cache[digit] = two_stage_linearize(model, images[digit], dtype=torch.float64)
        summary = noise_sensitivity_summary(model, images[digit], logit, sigma, method, cache[digit])
        fig = viz.plot_noise_sensitivity(
            images[digit][0],
            {f"share of Var[logit {logit}] (closed form)": summary["attribution"],
             "first-order share $w_i^2\\sigma^2$": summary["linear"]},
            title=(f"digit {int(labels[digit])}, predicted {summary['prediction']}; Var[logit {logit}] = "
                   f"{summary['variance']:.3e} (shares sum to {summary['attribution_sum']:.3e})"),
        )
        _show(fig)
        return summary

    digits = [(f"#{i}: a {int(labels[i])}", i) for i in range(min(n_digits, images.shape[0]))]
    return ipywidgets.interactive(
        draw,
        digit=ipywidgets.Dropdown(options=digits, value=0, description="digit"),
        logit=ipywidgets.Dropdown(options=list(range(10)), value=int(labels[0]), description="logit"),
        sigma=ipywidgets.FloatLogSlider(value=0.1, base=10, min=-2, max=-0.5, step=0.25, description="σ (noise)",
                                        continuous_update=False),
    )
