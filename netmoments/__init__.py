"""netmoments: exact, batched, differentiable Gaussian moments through piecewise-linear networks.

Push x ~ N(mean, cov) through g(x) = B relu(A x + c1) + c2 and get E[g] and Cov[g] in closed form
(Bibi, Alfadly & Ghanem, CVPR 2018; Alfadly et al., arXiv 2006.11776).

The core (special functions, ReLU moments, affine moments, Monte Carlo) needs only torch and numpy.
The submodules ``data``, ``models``, ``linearize``, ``propagate``, ``experiments``, ``attacks``, ``viz`` and ``widgets``
are imported on first access because they pull in heavier, optional libraries.
"""
import importlib

from .special import (
    normal_pdf,
    normal_cdf,
    bivariate_normal_pdf,
    bivariate_normal_cdf,
    bivariate_normal_cdf_series,
    series_integral,
)
from .relu import relu_moments, relu_cross_moment, relu_covariance, zero_mean_relu_kernel
from .affine import affine_moments, AffineReLUAffine
from .montecarlo import monte_carlo_moments, MonteCarloResult
from .gaussian import random_spd, sample_gaussian

__version__ = "0.1.0"

_LAZY = {"data", "models", "linearize", "propagate", "experiments", "attacks", "viz", "widgets"}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'netmoments' has no attribute {name!r}")


__all__ = [
    "normal_pdf",
    "normal_cdf",
    "bivariate_normal_pdf",
    "bivariate_normal_cdf",
    "bivariate_normal_cdf_series",
    "series_integral",
    "relu_moments",
    "relu_cross_moment",
    "relu_covariance",
    "zero_mean_relu_kernel",
    "affine_moments",
    "AffineReLUAffine",
    "monte_carlo_moments",
    "MonteCarloResult",
    "random_spd",
    "sample_gaussian",
]
