"""Conceptual diagrams: pictures of a derivation rather than plots of data (chapters 3, 5 and 6).

- :func:`polar_derivation_diagram` (chapter 3): the whitening map from the correlated pair ``(u, v)`` to the
  independent pair ``(u, w)``, and the wedge of opening ``pi - arccos(rho)`` on which both ReLUs are on, in polar
  coordinates ``(r, theta)``;
- :func:`phi2_quadrant_diagram` (chapter 5): ``Phi2(h, k; rho)`` as the probability of a quadrant, and the strip
  that moving its corner adds, ``phi(h) dh`` times a conditional probability;
- :func:`linear_regions_diagram` (chapter 6): the linear regions of a small hand-set ReLU network
  (:func:`diagram_network`), a Gaussian around the linearization point ``p``, and where the affine and the
  two-stage linearizations at ``p`` reproduce the network.

Each function is deterministic, reads no data and returns a new ``Figure``. Artists that carry the geometry have a
``gid`` (``"both-on wedge"``, ``"quadrant"``, ``"strip"``, ``"regions"``, ...) so that tests can find them.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import patches
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from scipy import stats
from torch import nn

from ._common import INPUT_COLOR, MC_COLOR, OUTPUT_COLOR, gaussian_ellipse, to_numpy

__all__ = ["polar_derivation_diagram", "phi2_quadrant_diagram", "diagram_network", "linear_regions_diagram"]

# the set a diagram is about (both units on, the quadrant) in light blue; a strip added by a derivative in orange
_REGION_FILL = "#c6dbef"
_STRIP_FILL = "#fdd0a2"


def _check_rho(rho: float, name: str = "rho") -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(rho).__name__}")
    if not -1.0 < rho < 1.0:
        raise ValueError(f"{name} must lie strictly between -1 and 1, got {rho}")
    return float(rho)


def _check_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _angle_arc(ax, start: float, stop: float, radius: float, **kw) -> None:
    t = np.linspace(start, stop, 60)
    ax.plot(radius * np.cos(t), radius * np.sin(t), **kw)


def polar_derivation_diagram(rho: float = 0.5, r: float = 2.0, theta: float = 0.75) -> Figure:
    """Chapter 3's zero-mean cross moment in pictures: whitening, the both-on wedge and polar coordinates.

    Left: the standard pair ``(u, v)`` with correlation ``rho`` (its 1- and 2-sd ellipses) and the quadrant
    ``u > 0, v > 0`` where both units are on. Right: the independent pair ``(u, w)``, ``w = (v - rho u)/s`` with
    ``s = sqrt(1 - rho^2)``, where ``v = r cos(theta - alpha)`` with ``alpha = arccos(rho)``; the quadrant becomes
    the wedge ``alpha - pi/2 < theta < pi/2`` of opening ``pi - alpha`` (a ``matplotlib.patches.Wedge`` with gid
    ``"both-on wedge"``, angles in degrees). One point at polar coordinates ``(r, theta)`` is drawn in both panels.

    Args:
        rho: correlation, ``-1 < rho < 1``.
        r, theta: polar coordinates of the example point in the ``(u, w)`` plane (``r > 0``, ``theta`` in
            radians); it is drawn inside the wedge when ``alpha - pi/2 < theta < pi/2``.

    Returns:
        The figure: ``fig.axes[0]`` is the ``(u, v)`` plane, ``fig.axes[2]`` the ``(u, w)`` plane and ``fig.axes[1]``,
        between them, carries only the arrow of the whitening map.
    """
    rho = _check_rho(rho)
    r, theta = _check_real(r, "r"), _check_real(theta, "theta")
    if r <= 0:
        raise ValueError(f"r must be positive, got {r}")
    alpha = math.acos(rho)
    lim, big = 3.2, 10.0
    fig, (ax_uv, ax_mid, ax_uw) = plt.subplots(1, 3, figsize=(10.6, 4.8), layout="constrained",
                                               width_ratios=(1, 0.2, 1))

    # left: the correlated pair and the quadrant where both units are on
    ax_uv.add_patch(patches.Rectangle((0, 0), big, big, facecolor=_REGION_FILL, edgecolor=INPUT_COLOR, hatch="//",
                                      lw=0, gid="both-on quadrant"))
    for k, style in ((1, "-"), (2, "--")):
        pts = gaussian_ellipse(np.zeros(2), np.array([[1.0, rho], [rho, 1.0]]), k)
        ax_uv.plot(pts[:, 0], pts[:, 1], color=MC_COLOR, ls=style, lw=1.2, label=f"{k} sd")
    u_pt, v_pt = r * math.cos(theta), r * math.cos(theta - alpha)
    ax_uv.plot(u_pt, v_pt, "o", color=OUTPUT_COLOR, ms=7, mec="k")
    ax_uv.annotate(r"$(u, v)$", (u_pt, v_pt), xytext=(6, 6), textcoords="offset points", fontsize=11)
    ax_uv.text(1.55, 2.55, "both on\n$u > 0,\\ v > 0$", fontsize=10, ha="center",
               bbox=dict(fc="w", ec="none", alpha=0.85))
    ax_uv.set_xlabel("$u$")
    ax_uv.set_ylabel("$v$")
    ax_uv.set_title(f"correlated pair, $\\rho = {rho:g}$", fontsize=11)
    ax_uv.legend(loc="lower right", fontsize=9, title="ellipses", title_fontsize=9)

    # right: the whitened pair, the wedge and the polar coordinates of the example point
    lo, hi = alpha - math.pi / 2, math.pi / 2
    ax_uw.add_patch(patches.Wedge((0, 0), big, math.degrees(lo), math.degrees(hi), facecolor=_REGION_FILL,
                                  edgecolor=INPUT_COLOR, hatch="//", lw=0, gid="both-on wedge"))
    for k, style in ((1, "-"), (2, "--")):
        _angle_arc(ax_uw, 0, 2 * math.pi, k, color=MC_COLOR, ls=style, lw=1.2)
    # the two boundaries: u = 0 (theta = pi/2) and v = 0 (theta = alpha - pi/2)
    for angle, label in ((hi, "$u = 0$"), (lo, "$v = 0$")):
        ax_uw.plot([-big * math.cos(angle), big * math.cos(angle)], [-big * math.sin(angle), big * math.sin(angle)],
                   color=INPUT_COLOR, lw=1.6, ls="-" if label == "$u = 0$" else "-.")
        ax_uw.annotate(label, (2.9 * math.cos(angle), 2.9 * math.sin(angle)), xytext=(4, -14),
                       textcoords="offset points", fontsize=10, color=INPUT_COLOR)
    # the direction onto which v projects: v = r cos(theta - alpha)
    ax_uw.annotate("", (1.6 * math.cos(alpha), 1.6 * math.sin(alpha)), (0, 0),
                   arrowprops=dict(arrowstyle="->", color=MC_COLOR, lw=1.4))
    _angle_arc(ax_uw, 0, alpha, 0.55, color=MC_COLOR, lw=1)
    ax_uw.text(0.72 * math.cos(alpha / 2), 0.72 * math.sin(alpha / 2), r"$\alpha$", fontsize=11,
               ha="center", va="center")
    ax_uw.annotate(r"$v$ grows", (1.6 * math.cos(alpha), 1.6 * math.sin(alpha)), xytext=(4, 2),
                   textcoords="offset points", fontsize=9)
    # the opening angle of the wedge
    _angle_arc(ax_uw, lo, hi, 2.45, color=OUTPUT_COLOR, lw=1.4, ls=":")
    mid = (lo + hi) / 2
    ax_uw.text(2.55 * math.cos(mid) + 0.15, 2.55 * math.sin(mid), r"$\pi - \alpha$", fontsize=11,
               color=OUTPUT_COLOR, bbox=dict(fc="w", ec="none", alpha=0.85))
    # the example point in polar coordinates
    x_pt, y_pt = r * math.cos(theta), r * math.sin(theta)
    ax_uw.plot([0, x_pt], [0, y_pt], color=OUTPUT_COLOR, lw=1.4)
    ax_uw.plot(x_pt, y_pt, "o", color=OUTPUT_COLOR, ms=7, mec="k")
    ax_uw.text(0.5 * x_pt - 0.1 * math.sin(theta), 0.5 * y_pt + 0.25 * math.cos(theta), "$r$", fontsize=11,
               color=OUTPUT_COLOR)
    _angle_arc(ax_uw, 0, theta, 1.05, color=OUTPUT_COLOR, lw=1)
    ax_uw.text(1.25 * math.cos(theta / 2), 1.25 * math.sin(theta / 2), r"$\theta$", fontsize=11,
               color=OUTPUT_COLOR, ha="center", va="center")
    ax_uw.annotate(r"$(u, w) = (r\cos\theta,\ r\sin\theta)$", (x_pt, y_pt), xytext=(-175, 26),
                   textcoords="offset points", fontsize=10, bbox=dict(fc="w", ec="none", alpha=0.85))
    ax_uw.text(-3.0, -2.95, f"$\\alpha = \\arccos\\rho = {math.degrees(alpha):.0f}^\\circ$\n"
               f"opening $\\pi - \\alpha = {math.degrees(math.pi - alpha):.0f}^\\circ$",
               fontsize=9, va="bottom", bbox=dict(fc="w", ec="none", alpha=0.85))
    ax_uw.set_xlabel("$u$")
    ax_uw.set_ylabel("$w = (v - \\rho u)/s$")
    ax_uw.set_title("independent pair: $v = r\\cos(\\theta - \\alpha)$", fontsize=11)

    for ax in (ax_uv, ax_uw):
        ax.axhline(0, color="0.6", lw=0.6, zorder=0)
        ax.axvline(0, color="0.6", lw=0.6, zorder=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    # the middle axes only carries the map from left to right
    ax_mid.axis("off")
    ax_mid.annotate("", (1.0, 0.5), (0.0, 0.5), xycoords="axes fraction",
                    arrowprops=dict(arrowstyle="-|>", color=MC_COLOR, lw=1.6))
    ax_mid.text(0.5, 0.58, "whiten", ha="center", va="bottom", fontsize=10, transform=ax_mid.transAxes)
    ax_mid.text(0.5, 0.42, "$w = \\frac{v - \\rho u}{s}$", ha="center", va="top", fontsize=11,
                transform=ax_mid.transAxes)
    return fig


def phi2_quadrant_diagram(h: float = 0.4, k: float = 0.7, rho: float = 0.5, dh: float = 0.3) -> Figure:
    """Chapter 5's ``Phi2(h, k; rho)`` as the probability of a quadrant, and the strip behind its derivative in h.

    The main axes show the standard pair ``(X, Y)`` with correlation ``rho`` (1-, 2- and 3-sd ellipses), the
    quadrant ``{X <= h, Y <= k}`` (a ``Rectangle`` with gid ``"quadrant"`` whose upper right corner is
    ``(h, k)``) and the strip ``{h < X <= h + dh, Y <= k}`` that moving the corner to the right adds (gid
    ``"strip"``). Beside the strip, the conditional density of ``Y`` given ``X = h``, ``N(rho h, s^2)``, is shaded
    below ``k``: its area is ``Phi((k - rho h)/s)``. The axes above show the marginal density ``phi`` of ``X``
    with the area ``phi(h) dh`` of the strip's base. Together:
    ``d Phi2 / dh = phi(h) Phi((k - rho h)/s)``.

    Args:
        h, k: the corner of the quadrant, each in ``[-2.5, 2.5]`` so that the picture shows it.
        rho: correlation, ``-1 < rho < 1``.
        dh: width of the strip, ``0 < dh <= 1``.

    Returns:
        The figure; ``fig.axes[0]`` is the plane, ``fig.axes[1]`` the marginal density above it.
    """
    h, k = _check_real(h, "h"), _check_real(k, "k")
    rho, dh = _check_rho(rho), _check_real(dh, "dh")
    for value, name in ((h, "h"), (k, "k")):
        if abs(value) > 2.5:
            raise ValueError(f"{name} must lie in [-2.5, 2.5] to be in the picture, got {value}")
    if not 0.0 < dh <= 1.0:
        raise ValueError(f"dh must lie in (0, 1], got {dh}")
    s = math.sqrt(1.0 - rho * rho)
    lim = 3.5
    fig = plt.figure(figsize=(6.4, 6.6), layout="constrained")
    rows = fig.add_gridspec(2, 1, height_ratios=(1, 3.6))
    ax = fig.add_subplot(rows[1])  # added first, so fig.axes[0] is the plane the caption describes
    ax_top = fig.add_subplot(rows[0], sharex=ax)
    floor = -lim - 1.0  # the quadrant runs to -infinity; start it below the axes

    ax.add_patch(patches.Rectangle((floor, floor), h - floor, k - floor, facecolor=_REGION_FILL,
                                   edgecolor=INPUT_COLOR, hatch="//", lw=1.5, gid="quadrant",
                                   label=r"quadrant $X \leq h,\ Y \leq k$"))
    ax.add_patch(patches.Rectangle((h, floor), dh, k - floor, facecolor=_STRIP_FILL, edgecolor=OUTPUT_COLOR,
                                   hatch="\\\\", lw=1.5, gid="strip", label=r"strip $h < X \leq h + dh$"))
    for n_sd, style in ((1, "-"), (2, "--"), (3, ":")):
        pts = gaussian_ellipse(np.zeros(2), np.array([[1.0, rho], [rho, 1.0]]), n_sd)
        ax.plot(pts[:, 0], pts[:, 1], color=MC_COLOR, ls=style, lw=1.1)
    ax.plot(h, k, "o", color=MC_COLOR, ms=7, mec="w", zorder=5)
    ax.annotate("$(h, k)$", (h, k), xytext=(-44, 8), textcoords="offset points", fontsize=11)

    # the conditional density of Y given X = h, laid on its side to the right of the strip
    y = np.linspace(-lim, lim, 400)
    dens = stats.norm.pdf(y, loc=rho * h, scale=s)
    scale = 1.1 / dens.max()
    base = h + dh
    ax.plot(base + scale * dens, y, color=OUTPUT_COLOR, lw=1.5,
            label=r"density of $Y \mid X = h$: $\mathcal{N}(\rho h, s^2)$")
    y_below = np.linspace(-lim, k, 300)  # ends exactly at k, so the shaded area is the probability
    ax.fill_betweenx(y_below, base, base + scale * stats.norm.pdf(y_below, loc=rho * h, scale=s),
                     facecolor=OUTPUT_COLOR, alpha=0.35, lw=0, gid="conditional below k")
    cond = stats.norm.cdf((k - rho * h) / s)
    ax.annotate(f"area $\\Phi\\left(\\frac{{k - \\rho h}}{{s}}\\right) = {cond:.2f}$",
                (base + 0.5 * scale * stats.norm.pdf(k - 0.6 * s, rho * h, s), k - 0.6 * s),
                xytext=(24, -40), textcoords="offset points", fontsize=10,
                arrowprops=dict(arrowstyle="->", color=OUTPUT_COLOR),
                bbox=dict(fc="w", ec="none", alpha=0.85))
    ax.text(-lim + 0.15, lim - 0.2,
            "$\\partial_h \\Phi_2(h, k; \\rho) = \\varphi(h)\\,\\Phi\\left(\\frac{k - \\rho h}{s}\\right)$\n"
            f"$\\rho = {rho:g},\\ s = \\sqrt{{1 - \\rho^2}}$",
            fontsize=10, va="top", bbox=dict(fc="w", ec="0.7", alpha=0.95))
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("$X$")
    ax.set_ylabel("$Y$")
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.95)

    # the marginal density of X and the strip's base, phi(h) dh
    x = np.linspace(-lim, lim, 400)
    ax_top.plot(x, stats.norm.pdf(x), color=MC_COLOR, lw=1.3)
    band = np.linspace(h, h + dh, 60)
    ax_top.fill_between(band, 0, stats.norm.pdf(band), facecolor=_STRIP_FILL, edgecolor=OUTPUT_COLOR,
                        hatch="\\\\", gid="strip base")
    ax_top.annotate(r"$\approx \varphi(h)\,dh$", (h + dh / 2, 0.5 * stats.norm.pdf(h)), xytext=(40, 6),
                    textcoords="offset points", fontsize=10, arrowprops=dict(arrowstyle="->", color=OUTPUT_COLOR))
    ax_top.set_ylim(0, 0.46)
    ax_top.set_ylabel(r"$\varphi(x)$")
    ax_top.set_title("density of $X$", fontsize=10, loc="left")
    ax_top.tick_params(labelbottom=False)
    return fig


def diagram_network() -> nn.Sequential:
    """The small ReLU network of :func:`linear_regions_diagram`: 2 inputs, two hidden layers (4 and 3 units), 1 output.

    The weights are set by hand (no randomness) so that the plane ``[-3, 3]^2`` holds a few dozen linear regions
    of clearly different sizes. float64 throughout.

    Returns:
        ``nn.Sequential(Linear(2, 4), ReLU(), Linear(4, 3), ReLU(), Linear(3, 1))``, float64, in eval mode.
    """
    weights = [
        ([[1.0, 0.35], [-0.45, 1.0], [0.8, -1.0], [-0.6, -0.75]], [0.3, -0.2, 1.1, 0.6]),
        ([[1.0, -0.9, 0.7, 0.5], [-0.8, 1.0, 0.9, -0.6], [0.6, 0.7, -1.0, 0.9]], [-0.5, 0.2, -0.1]),
        ([[1.0, -0.9, 0.8]], [0.1]),
    ]
    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(weights):
        lin = nn.Linear(len(w[0]), len(w)).double()
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w, dtype=torch.float64))
            lin.bias.copy_(torch.tensor(b, dtype=torch.float64))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def linear_regions_diagram(point=(-0.35, -1.1), cov=((0.12, 0.04), (0.04, 0.08)), resolution: int = 401) -> Figure:
    """Chapter 6's linear regions, a Gaussian around the linearization point, and where each linearization is exact.

    Left: the plane ``[-3, 3]^2`` coloured by the activation pattern of :func:`diagram_network` (one colour per
    linear region; an ``AxesImage`` with gid ``"regions"`` whose array holds a region id per grid point). The
    first hidden layer's boundaries are solid lines, the second's dashed. Hatched: the region of the layers
    before the kept (last) ReLU that contains ``p`` (gid ``"tsl exact"``), where the two-stage linearization
    (TSL) at ``p`` equals the network, and inside it the network's own region of ``p`` (gid ``"affine exact"``),
    where the affine (tangent) linearization does too. Around ``p`` = the Gaussian's mean: its 1- and 2-sd
    ellipses. Right: the network, its tangent and its TSL along the horizontal line through ``p``, with the
    stretches where each is exact.

    Args:
        point: ``p`` (= the Gaussian's mean), two numbers inside ``[-2.5, 2.5]^2``.
        cov: the Gaussian's ``(2, 2)`` covariance, symmetric positive definite.
        resolution: grid points per side of the plane, at least 51.

    Returns:
        The figure; ``fig.axes[0]`` is the plane, ``fig.axes[1]`` the slice.
    """
    from ..linearize import activation_pattern

    p = to_numpy(point)
    cov_np = to_numpy(cov)
    if p.shape != (2,) or not np.all(np.abs(p) <= 2.5):
        raise ValueError(f"point must be two numbers in [-2.5, 2.5], got {point!r}")
    if cov_np.shape != (2, 2) or not np.allclose(cov_np, cov_np.T) or np.linalg.eigvalsh(cov_np).min() <= 0:
        raise ValueError(f"cov must be a symmetric positive definite (2, 2) matrix, got {cov!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise TypeError(f"resolution must be an int, got {type(resolution).__name__}")
    if resolution < 51:
        raise ValueError(f"resolution must be at least 51, got {resolution}")

    net = diagram_network()
    lim = 3.0
    xs = np.linspace(-lim, lim, resolution)
    grid = torch.tensor(np.stack(np.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2))
    p_t = torch.tensor(p)
    with torch.no_grad():
        first, second = (m.to(torch.int64) for m in activation_pattern(net, grid))
        first_p, second_p = (m.to(torch.int64) for m in activation_pattern(net, p_t[None]))
        pre1 = net[0](grid)
        pre2 = net[2](net[1](pre1))
    _, region = torch.unique(torch.cat([first, second], 1), dim=0, return_inverse=True)
    n_regions = int(region.max()) + 1
    # Neighbouring regions get distant colours from a light qualitative palette, so the hatching stays visible.
    palette = plt.get_cmap("Pastel1").colors + plt.get_cmap("Pastel2").colors
    perm = np.random.default_rng(3).permutation(n_regions)
    ids = region.numpy().reshape(resolution, resolution)
    cmap = ListedColormap([palette[perm[i] % len(palette)] for i in range(n_regions)])
    tsl_set = (first == first_p).all(1).numpy().reshape(resolution, resolution)
    affine_set = tsl_set & (second == second_p).all(1).numpy().reshape(resolution, resolution)

    fig, (ax, ax_line) = plt.subplots(1, 2, figsize=(10.6, 4.7), layout="constrained", width_ratios=(1.05, 1))
    ax.imshow(ids, origin="lower", extent=(-lim, lim, -lim, lim), cmap=cmap, vmin=-0.5, vmax=n_regions - 0.5,
              interpolation="nearest", gid="regions")
    ax.contourf(xs, xs, tsl_set.astype(float), levels=[0.5, 1.5], colors="none", hatches=["//"]).set_gid("tsl exact")
    ax.contourf(xs, xs, affine_set.astype(float), levels=[0.5, 1.5], colors="none",
                hatches=["\\\\\\"]).set_gid("affine exact")
    ax.contour(xs, xs, tsl_set.astype(float), levels=[0.5], colors=[MC_COLOR], linewidths=2.2)
    for j in range(pre1.shape[1]):
        ax.contour(xs, xs, pre1[:, j].numpy().reshape(resolution, resolution), levels=[0.0], colors=["0.25"],
                   linewidths=1.0, linestyles="solid")
    for j in range(pre2.shape[1]):
        ax.contour(xs, xs, pre2[:, j].numpy().reshape(resolution, resolution), levels=[0.0], colors=["0.25"],
                   linewidths=1.0, linestyles="dashed")
    for n_sd, style in ((1, "-"), (2, "--")):
        pts = gaussian_ellipse(p, cov_np, n_sd)
        ax.plot(pts[:, 0], pts[:, 1], color=INPUT_COLOR, lw=2.0, ls=style, gid=f"{n_sd} sd",
                label=f"{n_sd}-sd ellipse of $\\mathcal{{N}}(\\mu, \\Sigma)$")
    ax.plot(*p, "*", color=OUTPUT_COLOR, ms=15, mec="k", gid="p", label="$p = \\mu$")
    ax.axhline(p[1], color=OUTPUT_COLOR, lw=1.0, ls=":")
    handles, _ = ax.get_legend_handles_labels()
    handles += [patches.Patch(facecolor="w", edgecolor=MC_COLOR, hatch="//", label="TSL exact (layer 1 as at $p$)"),
                patches.Patch(facecolor="w", edgecolor=MC_COLOR, hatch="xx", label="tangent exact too (all as at $p$)")]
    # below the figure: inside the plane it would hide the regions next to p
    fig.legend(handles=handles, loc="outside lower left", ncols=5, fontsize=8, frameon=False)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(f"{n_regions} linear regions (solid: layer 1, dashed: layer 2)", fontsize=10)

    _draw_tsl_slice(ax_line, net, p, xs, first_p, second_p, lim)
    return fig


def _draw_tsl_slice(ax_line, net, p, xs, first_p, second_p, lim) -> None:
    """The right panel of :func:`linear_regions_diagram`: the network, its tangent and its TSL at ``p`` along the
    horizontal line through ``p``, with the stretches where each is exact (``first_p``, ``second_p``: ``p``'s
    activation pattern)."""
    from ..linearize import activation_pattern, affine_linearize, two_stage_linearize

    p_t = torch.tensor(p)
    t = torch.tensor(xs)
    line = torch.stack([t, torch.full_like(t, float(p[1]))], 1)
    W, b = affine_linearize(net, p_t)
    tsl = two_stage_linearize(net, p_t)
    with torch.no_grad():
        f_line = net(line)[:, 0].numpy()
        tangent = (line @ W.T + b)[:, 0].numpy()
        tsl_line = tsl(line)[:, 0].numpy()
    with torch.no_grad():
        first_l, second_l = (m.to(torch.int64) for m in activation_pattern(net, line))
    tsl_on_line = (first_l == first_p).all(1).numpy()
    affine_on_line = tsl_on_line & (second_l == second_p).all(1).numpy()
    for mask, color, hatch, gid, label in ((tsl_on_line, "0.85", "//", "tsl exact span", "TSL exact"),
                                           (affine_on_line, "0.7", "\\\\", "affine exact span", "tangent exact")):
        inside = np.flatnonzero(mask)
        if inside.size:
            ax_line.axvspan(xs[inside[0]], xs[inside[-1]], facecolor=color, edgecolor="0.4", hatch=hatch, alpha=0.5,
                            lw=0, gid=gid, label=label)
    ax_line.plot(xs, f_line, color=MC_COLOR, lw=2.4, gid="network", label="network $f$")
    ax_line.plot(xs, tsl_line, color=INPUT_COLOR, lw=1.8, ls="--", gid="tsl",
                 label="TSL $B\\max(Ax + c_1, 0) + c_2$")
    ax_line.plot(xs, tangent, color=OUTPUT_COLOR, lw=1.6, ls="-.", gid="tangent", label="tangent at $p$")
    ax_line.plot(p[0], float(net(p_t[None]).detach()[0, 0]), "*", color=OUTPUT_COLOR, ms=14, mec="k")
    span = f_line.max() - f_line.min()
    ax_line.set_ylim(f_line.min() - 0.35 * span, f_line.max() + 0.35 * span)
    ax_line.set_xlim(-lim, lim)
    ax_line.set_xlabel(f"$x_1$ (with $x_2 = {p[1]:g}$, the dotted line)")
    ax_line.set_ylabel("output")
    ax_line.set_title("along the line through $p$", fontsize=10)
    ax_line.legend(loc="upper left", fontsize=8, framealpha=0.95)
