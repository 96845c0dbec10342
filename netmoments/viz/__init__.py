"""Figures for the book, one module per chapter.

Every plot function takes plain numbers or tensors, draws with matplotlib and returns the ``Figure`` (or draws on
the ``ax`` it is given), so a chapter reads ``fig = viz.plot_...(...)`` and stays about the maths. Nothing here
computes a moment: the numbers come from the core (``netmoments.affine``, ``netmoments.relu``, ...) or from
the pure functions in :mod:`netmoments.widgets`.

- ``_common``: the colours, :func:`to_numpy`, the ellipses of a 2-D Gaussian, a fresh axes;
- ``ch01_affine``: chapter 1, Gaussians through affine layers;
- ``ch02_relu``: chapter 2, one ReLU of one Gaussian;
- ``ch03_cross_moment``: chapter 3, two ReLUs and the cross moment;
- ``ch04_network``: chapter 4, network moments;
- ``ch05_phi2``: chapter 5, computing Phi2 (and appendix A1, its quadrature);
- ``ch06_linearize``: chapter 6, linearizing deep networks;
- ``ch07_tightness``: chapter 7, how tight is it;
- ``ch08_layerwise``: chapter 8, moments layer by layer;
- ``ch09_attacks``: chapter 9, Gaussian attacks (its result plots draw what :mod:`netmoments.attacks.report`
  computes; ``report.plot_...`` still reaches them);
- ``diagrams``: conceptual diagrams of chapters 3, 5 and 6 (the polar derivation, the quadrant of Phi2, linear
  regions and the linearization point);
- ``tables``: chapters 1-4, closed forms against Monte Carlo: :func:`monte_carlo_comparison` computes the numbers,
  :func:`format_monte_carlo_table` writes them, :func:`monte_carlo_table` prints that.

Every name is importable from here, ``viz.NAME``, as it was when this package was one module.

matplotlib is imported here and in :mod:`netmoments.widgets` only; the core never imports it.
"""
from __future__ import annotations

from ._common import gaussian_ellipse, plot_gaussian_ellipses, to_numpy
from .ch01_affine import plot_affine_gaussian
from .ch02_relu import plot_rectified_gaussian, plot_relu_gaussian_check, plot_relu_moment_sweep, plot_zero_mean_ratio
from .ch03_cross_moment import plot_cross_covariance_profiles, plot_relu_pair, plot_zero_mean_error_maps
from .ch04_network import plot_network_covariance, plot_relative_error_sweep, plot_z_scores
from .ch05_phi2 import (plot_quadrature_convergence, plot_series_error_maps, plot_series_partial_sums,
                        plot_series_slice, plot_speed_accuracy)
from .ch06_linearize import (plot_digits, plot_exact_sets, plot_linear_regions, plot_linearization_error,
                             plot_noise_sensitivity, plot_two_stage_diagram)
from .ch07_tightness import plot_error_split, plot_intervals, plot_z_distribution
from .ch08_layerwise import format_formula_check, plot_clark_check, plot_cost_accuracy, plot_logit_moments
from .ch09_attacks import (plot_attack_grid, plot_budget_curves, plot_calibration, plot_draws_and_points,
                           plot_reliability)
from .diagrams import diagram_network, linear_regions_diagram, phi2_quadrant_diagram, polar_derivation_diagram

# Outside __all__ but part of the interface, as before the split: the colours (chapters use viz.INPUT_COLOR and
# viz.METHOD_COLORS) and the table helpers (viz.monte_carlo_table).
from ._common import HYBRID_COLOR, INPUT_COLOR, MC_COLOR, OUTPUT_COLOR, SERIES_COLOR  # noqa: F401
from .ch03_cross_moment import ZERO_MEAN_COLOR  # noqa: F401
from .ch05_phi2 import ROUND_OFF  # noqa: F401
from .ch06_linearize import KEPT_COLOR, STAGE1_COLOR, STAGE2_COLOR  # noqa: F401
from .ch08_layerwise import METHOD_COLORS, METHOD_LABELS  # noqa: F401
from .tables import (MonteCarloComparison, MonteCarloTable, bonferroni_threshold,  # noqa: F401
                     format_monte_carlo_table, monte_carlo_comparison, monte_carlo_table)

__all__ = [
    # shared
    "to_numpy",
    "gaussian_ellipse",
    "plot_gaussian_ellipses",
    # chapter 1
    "plot_affine_gaussian",
    # chapter 2
    "plot_rectified_gaussian",
    "plot_relu_gaussian_check",
    "plot_relu_moment_sweep",
    "plot_zero_mean_ratio",
    # chapter 3
    "plot_relu_pair",
    "plot_cross_covariance_profiles",
    "plot_zero_mean_error_maps",
    # chapter 4
    "plot_z_scores",
    "plot_relative_error_sweep",
    "plot_network_covariance",
    # chapter 5 and appendix A1
    "plot_quadrature_convergence",
    "plot_series_partial_sums",
    "plot_series_error_maps",
    "plot_speed_accuracy",
    "plot_series_slice",
    # chapter 6
    "plot_linear_regions",
    "plot_linearization_error",
    "plot_noise_sensitivity",
    "plot_digits",
    "plot_two_stage_diagram",
    "plot_exact_sets",
    # chapter 7
    "plot_intervals",
    "plot_error_split",
    "plot_z_distribution",
    # chapter 8
    "plot_clark_check",
    "plot_cost_accuracy",
    "format_formula_check",
    "plot_logit_moments",
    # chapter 9
    "plot_attack_grid",
    "plot_draws_and_points",
    "plot_budget_curves",
    "plot_calibration",
    "plot_reliability",
    # conceptual diagrams (chapters 3, 5 and 6)
    "polar_derivation_diagram",
    "phi2_quadrant_diagram",
    "diagram_network",
    "linear_regions_diagram",
]
