"""Chapter 6, linearizing deep networks: the figures."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import INPUT_COLOR, MC_COLOR, OUTPUT_COLOR, _new_axes, to_numpy

__all__ = ["plot_linear_regions", "plot_linearization_error", "plot_noise_sensitivity", "plot_digits",
           "plot_two_stage_diagram", "plot_exact_sets"]

STAGE1_COLOR = "#9ecae1"
KEPT_COLOR = "#fdae6b"
STAGE2_COLOR = "#a1d99b"


def plot_linear_regions(model, xlim=(-3.0, 3.0), ylim=(-3.0, 3.0), resolution: int = 300, points=None,
                        ax: Axes | None = None) -> Figure:
    """The linear regions of a piecewise-linear network on 2-D inputs: one colour per activation pattern.

    Args:
        model: ``nn.Sequential`` taking ``(N, 2)`` inputs (see :func:`netmoments.linearize.activation_pattern`).
        xlim, ylim: the plotted square; resolution: grid points per side.
        points: optional ``(K, 2)`` points to mark (e.g. linearization points).
    """
    from ..linearize import activation_pattern

    fig, ax = _new_axes(ax, (5.0, 4.6))
    xs = np.linspace(*xlim, resolution)
    ys = np.linspace(*ylim, resolution)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2), dtype=next(model.parameters()).dtype)
    pattern = torch.cat([p.reshape(grid.shape[0], -1).to(torch.int64) for p in activation_pattern(model, grid)], 1)
    _, region = torch.unique(pattern, dim=0, return_inverse=True)
    # Shuffle region ids so neighbouring regions rarely share similar colours.
    perm = np.random.default_rng(0).permutation(int(region.max()) + 1)
    ids = perm[region.numpy()].reshape(resolution, resolution)
    ax.imshow(ids % 20, origin="lower", extent=(*xlim, *ylim), cmap="tab20", interpolation="nearest", aspect="auto")
    if points is not None:
        pts = to_numpy(points).reshape(-1, 2)
        ax.plot(pts[:, 0], pts[:, 1], "k*", ms=12, mec="w", label="linearization point")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(f"{int(region.max()) + 1} linear regions in view", fontsize=10)
    return fig


def plot_linearization_error(steps, errors: dict, ax: Axes | None = None) -> Figure:
    """Error of linearizations along a ray ``x + t d`` against ``t``, log-log.

    Args:
        steps: ``(T,)`` positive step sizes ``t``.
        errors: ``{label: (T,) max |linearized - network|}``; zeros are drawn at the bottom of the axis.
    """
    fig, ax = _new_axes(ax, (5.6, 3.8))
    t = to_numpy(steps)
    floor = min([to_numpy(e)[to_numpy(e) > 0].min() for e in errors.values() if (to_numpy(e) > 0).any()] + [1e-16])
    for (label, err), color in zip(errors.items(), (OUTPUT_COLOR, INPUT_COLOR, MC_COLOR, "#31a354")):
        err = to_numpy(err)
        ax.loglog(t, np.maximum(err, floor / 10), "o-", ms=3, color=color, label=label)
    ax.set_xlabel("step size $t$ along a random unit direction")
    ax.set_ylabel("max |linearized − network| over logits")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_noise_sensitivity(image, maps: dict, title: str | None = None) -> Figure:
    """A digit and, beside it, per-pixel maps (e.g. each pixel's share of a logit's variance).

    Args:
        image: ``(H, W)`` (or ``(1, H, W)``) pixel values.
        maps: ``{panel title: (H, W) map}``; each map gets its own symmetric colour scale (shares can be < 0).
    """
    image = to_numpy(image).reshape(to_numpy(image).shape[-2:])
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(2.9 * (1 + len(maps)) + 0.4, 3.2), layout="constrained")
    axes = np.atleast_1d(axes)
    axes[0].imshow(image, cmap="gray_r", vmin=0, vmax=1)
    axes[0].set_title("input digit", fontsize=9)
    for ax, (label, values) in zip(axes[1:], maps.items()):
        values = to_numpy(values).reshape(image.shape)
        limit = float(np.abs(values).max()) or 1.0
        shown = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.contour(image, levels=[0.5], colors="k", linewidths=0.6)
        ax.set_title(label, fontsize=9)
        fig.colorbar(shown, ax=ax, shrink=0.8, format="%.0e")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_digits(images, labels=None, predictions=None, n_cols: int = 10) -> Figure:
    """A grid of digits ``(N, 1, H, W)`` titled with their labels (and predictions, red when wrong)."""
    images = to_numpy(images)
    n = images.shape[0]
    rows = math.ceil(n / n_cols)
    fig, axes = plt.subplots(rows, n_cols, figsize=(1.2 * n_cols, 1.35 * rows), layout="constrained")
    axes = np.atleast_1d(axes).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_visible(False)
            continue
        ax.imshow(images[i].reshape(images.shape[-2:]), cmap="gray_r", vmin=0, vmax=1)
        parts = []
        if labels is not None:
            parts.append(f"label {int(labels[i])}")
        if predictions is not None:
            parts.append(f"pred {int(predictions[i])}")
        wrong = labels is not None and predictions is not None and int(labels[i]) != int(predictions[i])
        ax.set_title("\n".join(parts), fontsize=7, color="#de2d26" if wrong else "black")
    return fig


def plot_two_stage_diagram(layers, kept: int, ax: Axes | None = None) -> Figure:
    """A block diagram of the two-stage linearization of a sequential network.

    Args:
        layers: short names of the layers, in order (e.g. ``["conv1", "pool", "ReLU", ...]``).
        kept: index into ``layers`` of the kept ReLU. Layers before it form stage 1 (replaced by ``A x + c1``,
            linearized at ``p``), layers after it stage 2 (``B h + c2``, linearized at the kept ReLU's output).
    """
    layers = list(layers)
    if not 0 <= kept < len(layers):
        raise ValueError(f"kept must index layers (0..{len(layers) - 1}), got {kept}")
    fig, ax = _new_axes(ax, (max(6.0, 0.95 * len(layers) + 1.5), 2.6))
    width, gap = 0.8, 0.15
    for i, name in enumerate(layers):
        color = STAGE1_COLOR if i < kept else KEPT_COLOR if i == kept else STAGE2_COLOR
        x0 = i * (width + gap)
        ax.add_patch(plt.Rectangle((x0, 0.0), width, 1.0, facecolor=color, edgecolor="#333333", linewidth=1))
        ax.text(x0 + width / 2, 0.5, name, ha="center", va="center", fontsize=8, rotation=90 if len(name) > 6 else 0)
        if i:
            ax.annotate("", xy=(x0, 0.5), xytext=(x0 - gap, 0.5), arrowprops=dict(arrowstyle="->", lw=0.8))

    def brace(i0, i1, text, y=-0.15):
        x0, x1 = i0 * (width + gap), i1 * (width + gap) + width
        ax.plot([x0, x0, x1, x1], [y + 0.08, y, y, y + 0.08], color="#333333", lw=1)
        ax.text((x0 + x1) / 2, y - 0.08, text, ha="center", va="top", fontsize=9)

    if kept > 0:
        brace(0, kept - 1, "stage 1: $A x + c_1$\n(Jacobian at $p$)")
    brace(kept, kept, "kept ReLU\n(exact)")
    if kept < len(layers) - 1:
        brace(kept + 1, len(layers) - 1, "stage 2: $B h + c_2$\n(Jacobian at $q_p$)")
    ax.set_xlim(-0.2, len(layers) * (width + gap))
    ax.set_ylim(-0.85, 1.15)
    ax.set_axis_off()
    ax.set_title(r"$f(x) \approx g(x) = B\,\max(Ax + c_1, 0) + c_2$", fontsize=10)
    return fig


def plot_exact_sets(xs, ys, tsl_exact, affine_exact, point=None, ax: Axes | None = None) -> Figure:
    """Where the TSL and the affine linearization at ``point`` reproduce a 2-D network exactly.

    Args:
        xs, ys: grid coordinates ``(nx,)``, ``(ny,)``.
        tsl_exact, affine_exact: boolean ``(ny, nx)`` grids (``|error| <`` a tolerance at each grid point).
        point: the linearization point ``(2,)``, drawn as a star.
    """
    from matplotlib.colors import ListedColormap

    tsl_exact, affine_exact = np.asarray(tsl_exact, bool), np.asarray(affine_exact, bool)
    if tsl_exact.shape != affine_exact.shape or tsl_exact.shape != (len(ys), len(xs)):
        raise ValueError(f"grids must have shape (len(ys), len(xs)) = {(len(ys), len(xs))}")
    # 0: neither, 1: TSL only, 2: both, 3: affine only (should not happen: it would contradict the theory)
    code = np.where(affine_exact, np.where(tsl_exact, 2, 3), np.where(tsl_exact, 1, 0))
    fig, ax = _new_axes(ax, (4.6, 4.2))
    cmap = ListedColormap(["#f0f0f0", KEPT_COLOR, STAGE1_COLOR, "#d62728"])
    ax.imshow(code, origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), cmap=cmap, vmin=-0.5, vmax=3.5,
              interpolation="nearest", aspect="auto")
    if point is not None:
        p = to_numpy(point).reshape(-1)
        ax.plot(p[0], p[1], "k*", markersize=12)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (STAGE1_COLOR, KEPT_COLOR, "#f0f0f0")]
    ax.legend(handles, ["both exact (affine ⊆ TSL)", "only the TSL exact", "neither"], loc="upper right", fontsize=8)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    return fig
