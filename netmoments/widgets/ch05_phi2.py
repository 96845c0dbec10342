"""Chapter 5, computing Phi2: the widget."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .. import viz
from ..special import bivariate_normal_cdf, bivariate_normal_cdf_series
from ._frames import FRAME_DPI, FrameWidget, _on_grid, precomputed_widget

__all__ = ["series_slice_summary", "series_slice_widget", "SERIES_GRID"]

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
        descriptions={"h": "h", "k": "k", "terms": "terms N"}, title="the series' error on a slice",
    )
