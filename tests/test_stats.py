"""netmoments.stats (bootstrap intervals, quantiles, the Bonferroni threshold, Wilson intervals) and the one CPU
description (netmoments.provenance.cpu_model) that every run record uses."""
import importlib.util
import io
import platform
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from netmoments import provenance, stats


def _resampled_means(values, n_boot, seed):
    """The bootstrap distribution of the mean, written out resample by resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return np.array([np.mean(values[row]) for row in idx])


def test_bootstrap_interval_is_the_percentile_interval_of_the_resampled_statistic():
    values = np.random.default_rng(3).exponential(1.0, 30)
    means = _resampled_means(values, 400, seed=5)
    est, lo, hi = stats.bootstrap_ci(values, np.mean, n_boot=400, level=0.9, seed=5)
    assert est == values.mean()
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])), rel=1e-12)
    # the named statistic and the callable give the same interval (same resamples, same rule)
    assert stats.bootstrap_ci(values, "mean", 400, 0.9, 5) == pytest.approx((est, lo, hi), rel=1e-12)


def test_lower_method_gives_attained_end_points_and_handles_infinite_sizes():
    values = np.array([0.0, 1.0, 2.0, 10.0])
    means = set(_resampled_means(values, 50, seed=0).round(12))
    _, lo, hi = stats.bootstrap_ci(values, "mean", n_boot=50, level=0.5, seed=0, method="lower")
    assert round(lo, 12) in means and round(hi, 12) in means
    _, lo_lin, hi_lin = stats.bootstrap_ci(values, "mean", n_boot=50, level=0.5, seed=0)
    assert (lo, hi) != (lo_lin, hi_lin)  # interpolation moves at least one end point off the attained values
    sizes = np.array([3.0, 4.0, 5.0, np.inf, np.inf])
    est, lo, hi = stats.bootstrap_ci(sizes, "median", n_boot=300, method="lower")
    assert est == 5.0 and lo <= est <= hi and np.isfinite(lo)


def test_bootstrap_is_reproducible_from_its_seed_and_exact_on_constant_values():
    values = np.random.default_rng(0).normal(size=25)
    assert stats.bootstrap_ci(values, seed=4) == stats.bootstrap_ci(values, seed=4)
    assert stats.bootstrap_ci(values, seed=4) != stats.bootstrap_ci(values, seed=5)
    assert stats.bootstrap_ci(np.full(7, 0.25), 0.1) == (0.25, 0.25, 0.25)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((np.ones((2, 2)),), {}, "1-D array of per-image"),
        (([],), {}, "at least one image"),
        (([1.0, np.inf], "mean"), {}, "finite"),
        (([1.0, 2.0], "mode"), {}, "statistic"),
        (([1.0, 2.0], 1.5), {}, "statistic"),
        (([1.0, 2.0],), {"n_boot": 0}, "n_boot"),
        (([1.0, 2.0],), {"level": 1.0}, "level"),
    ],
)
def test_bootstrap_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stats.bootstrap_ci(*args, **kwargs)


def test_quantile_is_the_lower_empirical_quantile_by_default():
    assert stats.quantile([4, 1, 3, 2], 0.5) == 2.0
    assert stats.quantile([4, 1, 3, 2], 0.5, method="linear") == 2.5
    assert stats.quantile([1.0, np.inf, np.inf], 0.5) == np.inf


def test_bonferroni_z_is_the_normal_quantile_at_alpha_over_2n():
    for n, alpha in ((1, 0.01), (7, 0.05), (300, 0.001)):
        assert stats.bonferroni_z(n, alpha) == pytest.approx(scipy_stats.norm.ppf(1 - alpha / (2 * n)), rel=1e-12)
    assert stats.bonferroni_z(1) == pytest.approx(2.5758, abs=1e-4)
    assert stats.bonferroni_z(np.int64(3)) == stats.bonferroni_z(3)
    with pytest.raises(ValueError, match="n_tests"):
        stats.bonferroni_z(0)
    with pytest.raises(TypeError, match="n_tests"):
        stats.bonferroni_z(2.0)
    with pytest.raises(ValueError, match="alpha"):
        stats.bonferroni_z(2, 0.0)


def test_wilson_interval_reference_values():
    # 8 of 10 at 95 %: (0.490, 0.943) by hand from the score formula
    low, high = stats.wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_old_names_are_the_stats_functions():
    from netmoments.attacks import _ops, metrics
    from netmoments.experiments import tightness

    assert tightness.bootstrap_ci is stats.bootstrap_ci and tightness.bonferroni_z is stats.bonferroni_z
    assert metrics.quantile is stats.quantile and _ops.wilson_interval is stats.wilson_interval
    # the attack tables' interval is the lower-quantile rule of the same function
    values = np.random.default_rng(2).normal(size=20)
    assert metrics.bootstrap_ci(values, "median", 300) == stats.bootstrap_ci(values, "median", 300, method="lower")


# ----------------------------------------------------------------------------------------------- the machine


def _benchmarks_common():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"
    spec = importlib.util.spec_from_file_location("bench_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_machine_description_takes_the_cpu_from_cpu_model(monkeypatch):
    from netmoments.experiments import tightness

    fake = "processor : 0\nmodel name : Test CPU 9000\nprocessor : 1\nmodel name : Test CPU 9000\n"
    monkeypatch.setattr(provenance, "open", lambda *a, **k: io.StringIO(fake), raising=False)
    assert provenance.cpu_model() == ("Test CPU 9000", 2)
    assert provenance.machine_description()["cpu"] == "Test CPU 9000"
    assert ", Test CPU 9000, " in tightness._machine()
    assert _benchmarks_common().machine("cpu").startswith("Test CPU 9000 x2; torch ")


def test_cpu_model_without_proc_cpuinfo(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("no /proc/cpuinfo here")

    monkeypatch.setattr(provenance, "open", missing, raising=False)
    assert provenance.cpu_model() == (platform.processor() or platform.machine(), 0)
    assert _benchmarks_common().machine("cpu").startswith(f"{platform.processor() or platform.machine()}; torch ")
