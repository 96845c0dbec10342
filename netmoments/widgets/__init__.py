"""Interactive widgets for the book, organised by chapter, that stay live in the static HTML book.

Each widget is two functions and one call:

- a *pure* function of the control values that returns a ``dict`` of numbers and arrays (closed-form moments,
  Monte Carlo estimates with standard errors, samples), computed with the core; it draws nothing, so tests
  check it directly;
- a *builder* that hands the pure function, a plot function and a grid of control values to
  :func:`precomputed_widget`.

:func:`precomputed_widget` computes and draws every point of the grid once, when the notebook runs, and wraps the
PNG frames in nested :class:`ipywidgets.Stack` widgets whose ``selected_index`` is tied to the sliders' ``index``
by :func:`ipywidgets.jslink`. The link lives in the browser, so the built HTML book (saved widget state, no kernel,
no network) swaps frames as the reader drags a slider, exactly as JupyterLab does. The price is a finite grid:
each slider offers the grid's values only, and its readout shows the value its frame was computed at.

ipywidgets (like matplotlib) is imported here and in :mod:`netmoments.viz` only; the core never imports it.
"""
from __future__ import annotations

import html
import io
import math
from collections.abc import Callable, Mapping, Sequence

import ipywidgets
import matplotlib.pyplot as plt
import torch
from ipywidgets.widgets.widget_string import HTMLStyle
from matplotlib.figure import Figure

from .. import viz
from ..affine import affine_moments
from ..gaussian import sample_gaussian
from ..montecarlo import monte_carlo_moments
from ..relu import relu_moments
# chapters 3-5
from ..affine import AffineReLUAffine
from ..relu import relu_cross_moment, zero_mean_relu_kernel
from ..special import bivariate_normal_cdf, bivariate_normal_cdf_series

__all__ = [
    # all chapters
    "FrameWidget",
    "precomputed_widget",
    "png_frame",
    "FRAME_DPI",
    # chapter 1
    "affine_gaussian_summary",
    "affine_gaussian_widget",
    "AFFINE_GRID",
    # chapter 2
    "relu_gaussian_summary",
    "relu_gaussian_widget",
    "RELU_GRID",
    # chapter 6: deep networks
    "noise_sensitivity_summary",
    "noise_sensitivity_widget",
]

#: Resolution of widget frames. Every frame is stored in the page (base64 PNG), so this and the grid sizes set
#: the page size: about 15-25 kB a frame at 65 dpi after the 256-colour palette of :func:`png_frame`.
FRAME_DPI = 65

_SLIDER_LAYOUT = ipywidgets.Layout(width="460px")
_SLIDER_STYLE = {"description_width": "170px"}


# ----------------------------------------------------------------------------- precomputed widgets (all chapters)


def png_frame(fig: Figure, dpi: int = FRAME_DPI, colors: int | None = 256) -> bytes:
    """Render ``fig`` to PNG bytes and close it.

    Args:
        fig: a matplotlib figure (closed afterwards, so a loop of frames does not pile up figures).
        dpi: resolution.
        colors: reduce to an adaptive palette of this many colours (line plots, scatter plots and colour maps
            look the same and the file is about four times smaller); ``None`` keeps full RGBA.

    Returns:
        the PNG file's bytes; the same figure gives the same bytes (no time stamp is written).
    """
    buffer = io.BytesIO()
    try:
        # No bbox_inches="tight": it draws the figure twice (ticks dominate the cost), and the book's figures
        # already fit their canvas (constrained or tight layout).
        fig.savefig(buffer, format="png", dpi=dpi, facecolor="white", metadata={"Software": None})
    finally:
        plt.close(fig)
    if colors is None:
        return buffer.getvalue()
    from PIL import Image

    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    image = image.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def _decimals(values: Sequence[float], most: int = 6) -> int:
    """Fewest decimals (at least 2, at most ``most``) that write every value exactly (``float(text) == v``)."""
    for d in range(2, most + 1):
        if all(float(f"{v:.{d}f}") == v for v in values):
            return d
    return most


def _grid_labels(name: str, values: tuple, fmt) -> list[str]:
    """Readout labels of one control: ``fmt(v)`` / ``fmt.format(v)`` if given; else ints as ints and floats with
    the fewest common decimals that write each value exactly. Labels must be distinct (they identify frames)."""
    if fmt is None:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            labels = [str(v) for v in values]
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            d = _decimals([float(v) for v in values])
            labels = [f"{float(v):.{d}f}" for v in values]
        else:
            labels = [str(v) for v in values]
    elif callable(fmt):
        labels = [fmt(v) for v in values]
    else:
        labels = [fmt.format(v) for v in values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"grid[{name!r}]: readout labels must be distinct, got {labels}")
    return labels


class FrameWidget(ipywidgets.VBox):
    """Sliders over a grid and the precomputed frame of the selected grid point (see :func:`precomputed_widget`).

    A :class:`ipywidgets.VBox` holding one :class:`ipywidgets.SelectionSlider` per control and then the outermost
    :class:`ipywidgets.Stack`. Python-side attributes (set by :func:`precomputed_widget`):

    - ``names``: the controls, outermost first; ``grid``: ``{name: tuple of values}``;
    - ``sliders``: ``{name: SelectionSlider}`` whose options are ``(readout label, grid value)`` pairs;
    - ``stacks``: one list per control: the Stacks that control switches (``1, n_1, n_1 n_2, ...`` of them);
    - ``links``: the :func:`ipywidgets.jslink` objects, ``(slider, "index") -> (stack, "selected_index")``;
    - ``results``, ``frames``, ``images``: ``{key: ...}`` with ``key`` the tuple of grid values in ``names``
      order: the pure function's dict, the frame widget, and its :class:`ipywidgets.Image`.
    """

    @property
    def values(self) -> dict:
        """The sliders' current values, ``{name: grid value}``."""
        return {name: self.sliders[name].value for name in self.names}

    @property
    def key(self) -> tuple:
        return tuple(self.sliders[name].value for name in self.names)

    @property
    def result(self) -> dict:
        """The pure function's result at the sliders' current values (what the shown frame was drawn from)."""
        return self.results[self.key]

    @property
    def image(self) -> ipywidgets.Image:
        """The frame image at the sliders' current values."""
        return self.images[self.key]


def precomputed_widget(
    compute: Callable[..., dict],
    plot: Callable[[dict], Figure],
    grid: Mapping[str, Sequence],
    *,
    initial: Mapping[str, object] | None = None,
    descriptions: Mapping[str, str] | None = None,
    formats: Mapping[str, object] | None = None,
    describe: Callable[[dict], str] | None = None,
    dpi: int = FRAME_DPI,
    colors: int | None = 256,
) -> FrameWidget:
    """A widget that answers its sliders with no kernel: every frame precomputed, switched in the browser.

    For every point of the grid (the Cartesian product of ``grid``'s value lists) it calls
    ``result = compute(**point)``, draws ``plot(result)`` to PNG (:func:`png_frame`) and, if ``describe`` is
    given, puts the text ``describe(result)`` under the picture. The frames sit in nested Stacks, one level per
    control; slider ``i``'s ``index`` is :func:`ipywidgets.jslink`-ed to the ``selected_index`` of every Stack of
    level ``i``. Links run in the browser: the saved widget state of an executed notebook is enough for the HTML
    page to swap frames, and in JupyterLab the same widget behaves the same.

    Args:
        compute: pure function of the controls (keyword arguments named as ``grid``'s keys) returning a dict.
        plot: ``plot(result) -> Figure``; the figure is closed after rendering.
        grid: ``{control name: values}``, outermost control first; each list non-empty and free of repeats.
        initial: ``{name: value}`` selected at first (each a grid value); default the first value of each list.
        descriptions: slider descriptions (default: the control names).
        formats: per control, a ``str.format`` pattern or a callable giving the readout label of a value;
            default: the value written exactly (floats with the fewest common decimals).
        describe: optional ``describe(result) -> str``, a few lines of numbers shown under each frame.
        dpi, colors: passed to :func:`png_frame`.

    Returns:
        a :class:`FrameWidget`.

    Raises:
        ValueError: empty grid, an empty or repeated value list, an initial value not on the grid, or a control
            name that is not a grid key.
    """
    if not grid:
        raise ValueError("grid must name at least one control")
    names = list(grid)
    values = {name: tuple(grid[name]) for name in names}
    for name, vals in values.items():
        if not vals:
            raise ValueError(f"grid[{name!r}] is empty")
        if len(set(vals)) != len(vals):
            raise ValueError(f"grid[{name!r}] repeats a value: {vals}")
    initial = dict(initial or {})
    descriptions = dict(descriptions or {})
    formats = dict(formats or {})
    for what, mapping in (("initial", initial), ("descriptions", descriptions), ("formats", formats)):
        unknown = set(mapping) - set(names)
        if unknown:
            raise ValueError(f"{what} names controls that are not in grid: {sorted(unknown)}")
    start = {}
    for name in names:
        value = initial.get(name, values[name][0])
        if value not in values[name]:
            raise ValueError(f"initial[{name!r}] = {value!r} is not one of grid[{name!r}] = {values[name]}")
        start[name] = values[name].index(value)

    # One Layout / style object shared by all frames and stacks: each would otherwise be a model of its own in
    # the saved widget state, ~1 kB apiece.
    frame_layout = ipywidgets.Layout()
    stack_layout = ipywidgets.Layout()
    text_style = HTMLStyle()
    sliders = {}
    for name in names:
        labels = _grid_labels(name, values[name], formats.get(name))
        sliders[name] = ipywidgets.SelectionSlider(
            options=list(zip(labels, values[name])), index=start[name], description=descriptions.get(name, name),
            continuous_update=True, layout=_SLIDER_LAYOUT, style=_SLIDER_STYLE,
        )

    results, frames, images = {}, {}, {}
    stacks: list[list[ipywidgets.Stack]] = [[] for _ in names]

    def leaf(key: tuple):
        point = dict(zip(names, key))
        result = compute(**point)
        # No tooltip: html-manager 1.0.6 (the vendored renderer of the HTML book) cannot draw an Image that has one.
        image = ipywidgets.Image(value=png_frame(plot(result), dpi=dpi, colors=colors), format="png",
                                 layout=frame_layout)
        frame = image
        if describe is not None:
            lines = html.escape(describe(result))
            text = ipywidgets.HTML(f"<pre style='margin:0; white-space:pre-wrap'>{lines}</pre>",
                                   layout=frame_layout, style=text_style)
            frame = ipywidgets.VBox([image, text], layout=frame_layout)
        results[key], frames[key], images[key] = result, frame, image
        return frame

    def level(depth: int, prefix: tuple):
        if depth == len(names):
            return leaf(prefix)
        children = [level(depth + 1, prefix + (v,)) for v in values[names[depth]]]
        stack = ipywidgets.Stack(children, selected_index=start[names[depth]], layout=stack_layout)
        stacks[depth].append(stack)
        return stack

    outer = level(0, ())
    links = [ipywidgets.jslink((sliders[name], "index"), (stack, "selected_index"))
             for name, level_stacks in zip(names, stacks) for stack in level_stacks]
    widget = FrameWidget([*sliders.values(), outer])
    widget.names, widget.grid, widget.sliders, widget.stacks, widget.links = names, values, sliders, stacks, links
    widget.results, widget.frames, widget.images = results, frames, images
    return widget


def _on_grid(initial: dict, grid: Mapping[str, Sequence]) -> dict:
    """The builders' preferred starting values, kept only where the (possibly caller-given) grid has them."""
    return {name: value for name, value in initial.items() if value in tuple(grid.get(name, ()))}


# ----------------------------------------------------------------------------- chapter 1: affine layers

#: The input Gaussian of the chapter 1 widget: means and standard deviations of the two coordinates.
AFFINE_INPUT_MEAN = (1.0, 0.5)
AFFINE_INPUT_STD = (1.0, 0.6)
AFFINE_BIAS = (0.5, -1.0)

#: The chapter 1 widget's grid: every entry of ``A`` and the input correlation (108 frames). Rows ``(1, 1)`` and
#: ``(1, 1)`` make ``A`` singular; ``a12 = a21 = 1`` with ``a11 = a22 = 0.5`` flips orientation (``det A < 0``).
AFFINE_GRID = {
    "a11": (0.5, 1.0),
    "a12": (-1.0, 0.0, 1.0),
    "a21": (-1.0, 0.0, 1.0),
    "a22": (0.5, 1.0),
    "rho": (-0.6, 0.0, 0.6),
}
AFFINE_INITIAL = {"a11": 1.0, "a12": 1.0, "a21": 0.0, "a22": 1.0, "rho": 0.6}


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


def affine_gaussian_widget(n_samples: int = 2000, seed: int = 0, *, grid: Mapping[str, Sequence] | None = None,
                           dpi: int = FRAME_DPI) -> FrameWidget:
    """Sliders for the four entries of ``A`` and the input correlation; draws both Gaussians' 1-, 2-, 3-sigma
    ellipses over the same draws before and after the map (see :func:`affine_gaussian_summary`).

    ``grid`` (default :data:`AFFINE_GRID`) lists each control's values; see :func:`precomputed_widget`."""

    def compute(a11, a12, a21, a22, rho):
        return affine_gaussian_summary(a11, a12, a21, a22, rho, n_samples=n_samples, seed=seed)

    def plot(s):
        return viz.plot_affine_gaussian(s["mean_in"], s["cov_in"], s["mean_out"], s["cov_out"],
                                        s["samples_in"], s["samples_out"], weight=s["weight"])

    grid = AFFINE_GRID if grid is None else grid
    return precomputed_widget(
        compute, plot, grid, dpi=dpi, initial=_on_grid(AFFINE_INITIAL, grid),
        descriptions={"a11": "A[0,0]", "a12": "A[0,1]", "a21": "A[1,0]", "a22": "A[1,1]",
                      "rho": "input correlation ρ"},
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


#: The chapter 2 widget's grid (91 frames).
RELU_GRID = {
    "mu": tuple(x / 2 for x in range(-6, 7)),
    "sigma": (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
}


def relu_gaussian_widget(n_samples: int = 20000, seed: int = 0, *, grid: Mapping[str, Sequence] | None = None,
                         dpi: int = FRAME_DPI) -> FrameWidget:
    """Sliders for ``mu`` and ``sigma``; draws the law of ``max(z, 0)`` with its closed-form and Monte Carlo
    means, and prints both (see :func:`relu_gaussian_summary`). ``grid`` defaults to :data:`RELU_GRID`."""

    def compute(mu, sigma):
        return relu_gaussian_summary(mu, sigma, n_samples=n_samples, seed=seed) | {"mu": mu, "sigma": sigma}

    def plot(s):
        return viz.plot_rectified_gaussian(
            s["mu"], s["sigma"], samples=s["samples"], analytic=(s["mean"], s["var"]),
            monte_carlo=(s["mc_mean"], s["mc_mean_se"], s["mc_var"], s["mc_var_se"]),
        )

    def describe(s):
        return (f"closed form:               E[q] = {s['mean']:.4f}           Var[q] = {s['var']:.4f}\n"
                f"Monte Carlo ({n_samples} draws): E[q] = {s['mc_mean']:.4f} ± {s['mc_mean_se']:.4f}  "
                f"Var[q] = {s['mc_var']:.4f} ± {s['mc_var_se']:.4f}")

    grid = RELU_GRID if grid is None else grid
    return precomputed_widget(compute, plot, grid, initial=_on_grid({"mu": 0.5, "sigma": 1.0}, grid),
                              describe=describe, dpi=dpi,
                              descriptions={"mu": "mean μ", "sigma": "standard deviation σ"})


# ----------------------------------------------------------------------------- chapter 3: two ReLUs, the cross moment

__all__ += ["relu_pair_summary", "relu_pair_widget", "RELU_PAIR_GRID"]

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


#: The chapter 3 widget's grid (144 frames).
RELU_PAIR_GRID = {
    "mu_i": (-1.0, 0.0, 1.0),
    "mu_j": (-1.0, 0.0, 1.0),
    "sigma_i": (0.5, 1.0),
    "sigma_j": (1.0, 2.0),
    "rho": (-0.6, 0.0, 0.6, 0.9),
}


def relu_pair_widget(n_samples: int = 20000, seed: int = 0, *, grid: Mapping[str, Sequence] | None = None,
                     dpi: int = FRAME_DPI) -> FrameWidget:
    """Sliders for the means, standard deviations and correlation of a Gaussian pair; draws samples of
    ``(max(y_i, 0), max(y_j, 0))`` and compares the exact covariance, Monte Carlo and NM18's zero-mean formula
    (see :func:`relu_pair_summary`). ``grid`` defaults to :data:`RELU_PAIR_GRID`."""

    def compute(mu_i, mu_j, sigma_i, sigma_j, rho):
        return relu_pair_summary(mu_i, mu_j, sigma_i, sigma_j, rho, n_samples=n_samples, seed=seed)

    def describe(s):
        return (f"Cov[q_i, q_j]: exact = {s['cov_exact']:.4f}, Monte Carlo = {s['mc_cov']:.4f} ± "
                f"{s['mc_cov_se']:.4f}, 2018 zero-mean formula = {s['cov_zero_mean']:.4f} "
                f"(error {s['cov_error']:+.4f})")

    grid = RELU_PAIR_GRID if grid is None else grid
    initial = {"mu_i": 1.0, "mu_j": -1.0, "sigma_i": 1.0, "sigma_j": 1.0, "rho": 0.6}
    return precomputed_widget(
        compute, viz.plot_relu_pair, grid, describe=describe, dpi=dpi, initial=_on_grid(initial, grid),
        descriptions={"mu_i": "mean μ_i", "mu_j": "mean μ_j", "sigma_i": "std σ_i", "sigma_j": "std σ_j",
                      "rho": "correlation ρ"},
    )


# ----------------------------------------------------------------------------- chapter 4: network moments

__all__ += ["ar1_covariance", "chapter4_network", "network_covariance_summary", "network_covariance_widget",
            "NETWORK_GRID"]

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


#: The chapter 4 widget's grid (80 frames).
NETWORK_GRID = {
    "noise_scale": (0.25, 0.5, 1.0, 2.0),
    "ar_coefficient": (-0.5, 0.0, 0.5, 0.9),
    "bias_shift": (-2.0, -1.0, 0.0, 1.0, 2.0),
}


def network_covariance_widget(n_samples: int = 20000, seed: int = 0, *,
                              grid: Mapping[str, Sequence] | None = None, dpi: int = FRAME_DPI) -> FrameWidget:
    """Sliders for the input noise scale, the AR(1) correlation of the input noise and the bias shift of the
    pre-activation means; draws two outputs' samples with the exact and hybrid 2-sigma ellipses, and the exact
    output covariance beside the hybrid's error (see :func:`network_covariance_summary`). ``grid`` defaults to
    :data:`NETWORK_GRID`."""

    def compute(noise_scale, ar_coefficient, bias_shift):
        return network_covariance_summary(noise_scale, ar_coefficient, bias_shift, n_samples=n_samples, seed=seed)

    def describe(s):
        return (f"relative error of Cov[g] (Frobenius): hybrid {s['error_hybrid']:.3f}, Monte Carlo "
                f"{s['error_mc']:.3f}; diagonal-only variances: up to {s['error_diagonal_only']:.3f}; "
                f"largest |exact - MC|/SE = {s['max_z']:.2f}")

    grid = NETWORK_GRID if grid is None else grid
    initial = {"noise_scale": 0.5, "ar_coefficient": 0.5, "bias_shift": 1.0}
    return precomputed_widget(
        compute, viz.plot_network_covariance, grid, describe=describe, dpi=dpi, initial=_on_grid(initial, grid),
        descriptions={"noise_scale": "noise scale σ", "ar_coefficient": "AR(1) correlation φ",
                      "bias_shift": "bias shift t"},
    )


# ----------------------------------------------------------------------------- chapter 5: computing Phi2

__all__ += ["series_slice_summary", "series_slice_widget", "SERIES_GRID"]


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


#: The chapter 5 widget's grid (100 frames).
SERIES_GRID = {
    "h": (-2.0, -1.0, 0.0, 1.0, 2.0),
    "k": (-2.0, -1.0, 0.0, 1.0, 2.0),
    "terms": (1, 3, 5, 10),
}


def series_slice_widget(n_rho: int = 801, *, grid: Mapping[str, Sequence] | None = None,
                        dpi: int = FRAME_DPI) -> FrameWidget:
    """Sliders for ``h``, ``k`` and the number of series terms; draws the series and its error along ``rho``
    (see :func:`series_slice_summary`). ``grid`` defaults to :data:`SERIES_GRID`."""

    def compute(h, k, terms):
        return series_slice_summary(h, k, terms, n_rho=n_rho)

    grid = SERIES_GRID if grid is None else grid
    return precomputed_widget(
        compute, viz.plot_series_slice, grid, dpi=dpi, initial=_on_grid({"h": 0.0, "k": -1.0, "terms": 5}, grid),
        descriptions={"h": "h", "k": "k", "terms": "terms N"},
    )


# ----------------------------------------------------------------------------- chapter 9: Gaussian attacks

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


def attack_browser_widget(data: dict, *, dpi: int = FRAME_DPI) -> FrameWidget:
    """Browse precomputed targeted sparse Gaussian attacks: digit, target and L1 weight (see the summary).
    One frame per stored attack; the readouts name the digit's label, the target class and the weight."""
    n_img, n_tgt, n_w = data["success"].shape

    def compute(image, target, weight):
        return attack_browser_summary(data, image, target, weight)

    def plot(s):
        title = f"{s['label']} → {s['target']}, λ={s['l1_weight']:g}"
        return viz.plot_attack_grid(s["clean"], s["mean"], s["noise_std"], s["draws"], titles=[title],
                                    success=[s["success"]])

    def describe(s):
        return f"pixels touched {s['pixels_touched']}; success of the draws on the real LeNet {s['success']:.3f}"

    # Targets are per digit; when each column is the label shifted by a fixed amount, say so in the readout.
    shifts = (data["targets"] - data["labels"][:, None]) % 10

    def target_label(t):
        column = {int(v) for v in shifts[:, t]}
        return f"#{t}: label + {column.pop()}" if len(column) == 1 else f"#{t}"

    grid = {"image": range(n_img), "target": range(n_tgt), "weight": range(n_w)}
    return precomputed_widget(
        compute, plot, grid, describe=describe, dpi=dpi, initial={"weight": min(1, n_w - 1)},
        descriptions={"image": "digit", "target": "target", "weight": "L1 weight"},
        formats={"image": lambda i: f"#{i}: a {int(data['labels'][i])}", "target": target_label,
                 "weight": lambda w: f"#{w}: λ = {float(data['weights'][w]):g}"},
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
    from ..linearize import pixel_noise_sensitivity, two_stage_linearize

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


def noise_sensitivity_widget(model, images: torch.Tensor, labels: torch.Tensor, n_digits: int = 3,
                             method: str = "exact", *, logits: Sequence[int] = tuple(range(10)),
                             sigmas: Sequence[float] = (0.02, 0.1, 0.3), dpi: int = FRAME_DPI) -> FrameWidget:
    """Pick a digit, a logit and a noise level; shows the digit and which pixels' noise drives that logit's
    variance (see :func:`noise_sensitivity_summary`). Frames: ``n_digits x len(logits) x len(sigmas)``; one
    linearization per digit and one attribution pass per digit and noise level (all logits at once)."""
    from ..linearize import pixel_noise_sensitivity, two_stage_linearize

    n_digits = min(n_digits, images.shape[0])
    logits = tuple(int(k) for k in logits)
    cache = {}

    def compute(digit, logit, sigma):
        # What does not depend on the logit is computed once per digit (the TSL) or per (digit, sigma).
        if (digit, sigma) not in cache:
            if digit not in cache:
                cache[digit] = two_stage_linearize(model, images[digit], dtype=torch.float64)
            tsl = cache[digit]
            x = images[digit].to(torch.float64).reshape(-1)
            attribution, variance = pixel_noise_sensitivity(tsl, x, sigma**2, logits=list(logits), method=method)
            cache[digit, sigma] = (tsl, x, attribution, variance)
        tsl, x, attribution, variance = cache[digit, sigma]
        row = logits.index(logit)
        on = (tsl.A @ x + tsl.c1 > 0).to(x.dtype)
        w = tsl.A.mT @ (on * tsl.B[logit])
        shape = images[digit].shape[-2:]
        out = tsl(x)
        return {
            "attribution": attribution[row].reshape(shape),
            "linear": (w**2 * sigma**2).reshape(shape),
            "variance": float(variance[logit]),
            "attribution_sum": float(attribution[row].sum()),
            "linear_variance": float((w**2 * sigma**2).sum()),
            "logits": out,
            "prediction": int(out.argmax()),
            "digit": digit,
            "logit": logit,
            "sigma": sigma,
        }

    def plot(s):
        return viz.plot_noise_sensitivity(
            images[s["digit"]][0],
            {f"share of Var[logit {s['logit']}] (closed form)": s["attribution"],
             "first-order share $w_i^2\\sigma^2$": s["linear"]},
            title=(f"digit {int(labels[s['digit']])}, predicted {s['prediction']}; Var[logit {s['logit']}] = "
                   f"{s['variance']:.3e} (shares sum to {s['attribution_sum']:.3e})"),
        )

    grid = {"digit": range(n_digits), "logit": logits, "sigma": tuple(sigmas)}
    return precomputed_widget(
        compute, plot, grid, dpi=dpi, initial=_on_grid({"logit": int(labels[0])}, grid),
        descriptions={"digit": "digit", "logit": "logit", "sigma": "σ (noise)"},
        formats={"digit": lambda i: f"#{i}: a {int(labels[i])}", "sigma": "{:g}"},
    )

