"""Interactive widgets for the book, one module per chapter, that stay live in the static HTML book.

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

Layout: ``_frames`` holds :func:`precomputed_widget`, :class:`FrameWidget` and :func:`png_frame` (all chapters);
``ch01_affine``, ``ch02_relu``, ``ch03_cross_moment``, ``ch04_network``, ``ch05_phi2``, ``ch06_linearize`` and
``ch09_attacks`` each hold one chapter's pure functions, grids and builders (chapters 7 and 8 build their widgets
in the notebook, with :func:`precomputed_widget`). Every name is importable from here, ``widgets.NAME``, as it was
when this package was one module.

ipywidgets (like matplotlib) is imported here and in :mod:`netmoments.viz` only; the core never imports it.
"""
from __future__ import annotations

from ._frames import FRAME_DPI, FrameWidget, png_frame, precomputed_widget
from .ch01_affine import AFFINE_GRID, affine_gaussian_summary, affine_gaussian_widget
from .ch02_relu import RELU_GRID, relu_gaussian_summary, relu_gaussian_widget
from .ch03_cross_moment import RELU_PAIR_GRID, relu_pair_summary, relu_pair_widget
from .ch04_network import (NETWORK_GRID, ar1_covariance, chapter4_network, network_covariance_summary,
                           network_covariance_widget)
from .ch05_phi2 import SERIES_GRID, series_slice_summary, series_slice_widget
from .ch06_linearize import noise_sensitivity_summary, noise_sensitivity_widget
from .ch09_attacks import attack_browser_summary, attack_browser_widget, load_attack_browser_data

# Outside __all__ but part of the interface, as before the split: the widgets' fixed inputs.
from .ch01_affine import AFFINE_BIAS, AFFINE_INITIAL, AFFINE_INPUT_MEAN, AFFINE_INPUT_STD  # noqa: F401
from .ch04_network import NETWORK_SEED, NETWORK_SIZES  # noqa: F401

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
    # chapter 3
    "relu_pair_summary",
    "relu_pair_widget",
    "RELU_PAIR_GRID",
    # chapter 4
    "ar1_covariance",
    "chapter4_network",
    "network_covariance_summary",
    "network_covariance_widget",
    "NETWORK_GRID",
    # chapter 5
    "series_slice_summary",
    "series_slice_widget",
    "SERIES_GRID",
    # chapter 6
    "noise_sensitivity_summary",
    "noise_sensitivity_widget",
    # chapter 9
    "load_attack_browser_data",
    "attack_browser_summary",
    "attack_browser_widget",
]
