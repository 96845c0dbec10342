"""The statistics the experiments report with: bootstrap intervals over images, lower quantiles, the Bonferroni
threshold and the Wilson interval of a proportion.

Every interval here resamples *images* (one number per image), never pooled draws or logits: draws of one image
are correlated, images are the independent units. Only numpy (and scipy for the normal quantile) is needed.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["bootstrap_ci", "quantile", "bonferroni_z", "wilson_interval"]


def quantile(values, q: float, method: str = "lower") -> float:
    """Empirical ``q``-quantile of ``values`` ``(n,)``.

    The default ``method="lower"`` (numpy's name) returns an attained value, so it stays well defined when some
    values are ``inf`` (an image never fooled); any other numpy quantile method may be named.
    """
    arr = np.asarray(values, dtype=np.float64)
    return float(np.quantile(arr, q, method=method))


def _statistic(statistic, method: str):
    """The function ``(..., n) -> (...)`` that ``bootstrap_ci`` applies along the last axis."""
    if callable(statistic):
        # an arbitrary function of a 1-D array need not take an axis argument: apply it row by row
        return lambda a: np.apply_along_axis(statistic, -1, a) if a.ndim > 1 else statistic(a)
    if isinstance(statistic, str) and statistic == "mean":
        return lambda a: a.mean(-1)
    if isinstance(statistic, str) and statistic == "median":
        return lambda a: np.quantile(a, 0.5, axis=-1, method=method)
    if isinstance(statistic, float) and 0 < statistic < 1:
        return lambda a: np.quantile(a, statistic, axis=-1, method=method)
    raise ValueError(f"statistic must be 'mean', 'median', a quantile level in (0, 1) or a callable, "
                     f"got {statistic!r}")


def bootstrap_ci(values, statistic=np.mean, n_boot: int = 2000, level: float = 0.95, seed: int = 0, *,
                 method: str = "linear") -> tuple[float, float, float]:
    """Percentile-bootstrap interval of a statistic of per-image ``values``, resampling the images.

    Args:
        values: ``(n,)`` one number per image, ``n >= 1``. ``inf`` is allowed for medians and quantiles (with
            ``method="lower"``), not for ``statistic="mean"``.
        statistic: a callable of a 1-D array (e.g. ``np.mean``, ``np.median``), or ``"mean"``, ``"median"`` or a
            quantile level in ``(0, 1)``; the named quantiles use ``method``.
        n_boot: bootstrap resamples (of the images, with replacement); level: two-sided coverage in ``(0, 1)``;
            seed: the resampling's ``numpy`` generator seed (the same seed gives the same resamples).
        method: numpy's quantile method for the interval's end points and the named quantile statistics.
            ``"linear"`` (numpy's default) interpolates; ``"lower"`` returns attained values, so intervals of
            medians with infinite entries stay defined (the attack tables use it).

    Returns:
        ``(estimate, low, high)`` floats; the estimate is the statistic of ``values`` itself.

    Raises:
        ValueError: ``values`` is not a non-empty 1-D array, ``statistic="mean"`` of non-finite values, or a bad
            ``statistic``, ``n_boot`` or ``level``.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array of per-image numbers (at least one image), got "
                         f"shape {arr.shape}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    stat = _statistic(statistic, method)
    if isinstance(statistic, str) and statistic == "mean" and not np.isfinite(arr).all():
        raise ValueError("values must be finite for statistic='mean'")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    boots = stat(arr[idx])
    tail = (1.0 - level) / 2
    low, high = np.quantile(boots, [tail, 1 - tail], method=method)
    return float(stat(arr)), float(low), float(high)


def bonferroni_z(n_tests: int, alpha: float = 0.01) -> float:
    """Two-sided Bonferroni threshold ``z_{1 - alpha / (2 n)}`` for ``n = n_tests`` z-scores.

    An error counts as "within its standard error" when ``|Delta| / SE <= z``; a correct formula then fails any
    of the ``n`` comparisons with probability at most ``alpha``.

    Raises:
        TypeError: ``n_tests`` is not an int. ValueError: ``n_tests < 1`` or ``alpha`` outside ``(0, 1)``.
    """
    from scipy.stats import norm

    if isinstance(n_tests, bool) or not isinstance(n_tests, numbers.Integral):
        raise TypeError(f"n_tests must be an int, got {type(n_tests).__name__}")
    if n_tests < 1:
        raise ValueError(f"n_tests must be >= 1, got {n_tests}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(norm.isf(alpha / (2 * n_tests)))


def wilson_interval(successes: float, trials: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a binomial proportion (``z = 1.96``: 95 %); ``(0, 1)`` when
    there are no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
