"""Chapter 1, Gaussians through affine layers: the widget."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .. import viz
from ..affine import affine_moments
from ..gaussian import sample_gaussian
from ._frames import FrameWidget, _on_grid, precomputed_widget

__all__ = ["affine_gaussian_summary", "affine_gaussian_widget", "AFFINE_GRID"]

#: The input Gaussian of the chapter 1 widget: means and standard deviations of the two coordinates.
AFFINE_INPUT_MEAN = (1.0, 0.5)
AFFINE_INPUT_STD = (1.0, 0.6)
AFFINE_BIAS = (0.5, -1.0)

#: The chapter 1 widget's grid, every entry of ``A`` and the input correlation (180 frames). Rows ``(1, 1)`` and
#: ``(1, 1)`` make ``A`` singular, as does ``a11 = 0`` with ``a12 = 0``; ``a11 < 0`` (or ``a12 = a21 = 1`` with
#: ``a11 = a22 = 0.5``) flips orientation (``det A < 0``). ``a11`` has the finest steps; the others' products
#: already make the frames most of the page, whose 5 MB limit the grid has to respect.
AFFINE_GRID = {
    "a11": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a12": (-1.0, 0.0, 1.0),
    "a21": (-1.0, 0.0, 1.0),
    "a22": (0.5, 1.0),
    "rho": (0.0, 0.6),
}
#: Frame resolution of the chapter 1 widget, a little under :data:`FRAME_DPI`: its 2000 dots per panel make its
#: frames the largest of the book, and 180 of them must fit the page.
AFFINE_DPI = 60
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
                           dpi: int = AFFINE_DPI) -> FrameWidget:
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
        compute, plot, grid, dpi=dpi, initial=_on_grid(AFFINE_INITIAL, grid), title="the affine map's Gaussians",
        descriptions={"a11": "A[0,0]", "a12": "A[0,1]", "a21": "A[1,0]", "a22": "A[1,1]",
                      "rho": "input correlation ρ"},
    )
