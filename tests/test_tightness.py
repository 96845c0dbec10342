"""NM20's tightness protocol on the real LeNet, its helpers and the experiments CLI."""
import math

import numpy as np
import pytest
import torch

from netmoments.data import load_mnist
from netmoments.experiments import build_parser
from netmoments.experiments.__main__ import main as cli_main
from netmoments.experiments.tightness import (
    CSV_FIELDS,
    TightnessResult,
    cluster_points,
    labelled_kmeans,
    run_tightness,
    scaled_cluster_counts,
    symmetric_relative_error,
)
from netmoments.models import load_lenet


def bonferroni_z(n_tests, alpha=1e-3):
    """Two-sided normal quantile for family-wise level alpha over n_tests comparisons."""
    from scipy.stats import norm

    return float(norm.isf(alpha / (2 * n_tests)))


@pytest.fixture(scope="module")
def lenet():
    return load_lenet()


@pytest.fixture(scope="module")
def test_digits():
    return load_mnist("test")


def test_symmetric_relative_error():
    a = torch.tensor([1.0, -1.0, 0.0, 3.0, 0.0])
    b = torch.tensor([3.0, 1.0, 0.0, 3.0, 2.0])
    expected = torch.tensor([2 * 2 / 4, 2.0, 0.0, 0.0, 2.0])
    assert torch.equal(symmetric_relative_error(a, b), expected)
    assert torch.equal(symmetric_relative_error(b, a), expected)


def test_scaled_cluster_counts():
    assert scaled_cluster_counts(10_000) == [250, 500, 1000, 2500, 5000]  # NM20's k
    assert scaled_cluster_counts(100) == [2, 5, 10, 25, 50]
    assert scaled_cluster_counts(4) == [1, 2]


def test_labelled_kmeans_round_robin_init():
    # Three well separated blobs, one per label, listed label-sorted: k = 3 must recover the labels (a random
    # init from the first three rows, all of label 0, would not start with one centre per blob).
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = np.repeat([0, 1, 2], 20)
    points = centres[labels] + 0.1 * rng.standard_normal((60, 2))
    assignment, centroids = labelled_kmeans(points, labels, 3)
    assert np.array_equal(assignment, labels)
    assert np.allclose(centroids, [points[labels == c].mean(0) for c in range(3)])
    with pytest.raises(ValueError, match="k"):
        labelled_kmeans(points, labels, 61)


def test_cluster_points_farthest_member():
    rng = np.random.default_rng(1)
    points = rng.standard_normal((30, 4))
    labels = rng.integers(0, 3, 30)
    centroids, ids = cluster_points(points, labels, 4, "centroid")
    farthest, ids_f = cluster_points(points, labels, 4, "farthest")
    assert np.array_equal(ids, ids_f)
    for c in np.unique(ids):
        members = points[ids == c]
        assert np.allclose(centroids[c], members.mean(0))
        dist = ((members - centroids[c]) ** 2).sum(1)
        assert np.allclose(farthest[c], members[np.argmax(dist)])
    with pytest.raises(ValueError, match="kind"):
        cluster_points(points, labels, 4, "medoid")


def test_analytic_moments_match_monte_carlo_on_real_lenet(lenet, test_digits):
    """On the real LeNet inside a linear region (tiny sigma, digits dithered so that no max-pool window ties),
    the closed-form mean and exact variance agree with Monte Carlo within z * SE; NM18's variance does not."""
    images, labels = test_digits
    gen = torch.Generator().manual_seed(0)
    dithered = (images[:2] + 0.05 * torch.rand(images[:2].shape, generator=gen)).clamp(0, 1)
    result = run_tightness(lenet, dithered, labels[:2], sigmas=[1e-4], n_images=2, mc_samples=2000,
                           methods=("exact", "hybrid"), progress=False, seed=3)
    assert len(result.rows) == 2 * 10
    z = bonferroni_z(len(result.rows))
    col = result.column
    assert np.all(np.abs(col("mean") - col("mc_mean")) <= z * col("mc_mean_se"))
    assert np.all(np.abs(col("var_exact") - col("mc_var")) <= z * col("mc_var_se"))
    # the test has power: the old (NM18 hybrid) variance is rejected
    assert np.mean(np.abs(col("var_hybrid") - col("mc_var")) > z * col("mc_var_se")) > 0.5
    # bookkeeping: the reported errors are the symmetric relative errors of the reported columns
    expected = 2 * np.abs(col("var_exact") - col("mc_var")) / (np.abs(col("var_exact")) + np.abs(col("mc_var")))
    assert np.allclose(col("err_var_exact"), expected, rtol=1e-12)
    assert np.isnan(col("var_series")).all()  # not asked for
    assert set(col("label").astype(int)) <= set(labels[:2].tolist())


def test_cli_help_and_tiny_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["--help"])
    assert info.value.code == 0
    assert "tightness" in capsys.readouterr().out
    out = tmp_path / "run.csv"
    figures = tmp_path / "figs"
    status = cli_main(["tightness", "--images", "2", "--sigma", "0.05", "--mc-samples", "64", "--point", "input",
                       "centroid", "farthest", "--clusters", "1", "--methods", "hybrid", "--cluster-methods",
                       "hybrid", "--out", str(out), "--figures", str(figures), "--no-progress", "--seed", "1"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "Table 2" in printed and "Table 3" in printed
    result = TightnessResult.from_csv(out)
    assert len(result.rows) == 2 * 1 * 3 * 10  # images x sigmas x (input, centroid k=1, farthest k=1) x logits
    assert list(result.rows[0]) == CSV_FIELDS
    assert result.point_specs == [("input", None), ("centroid", 1), ("farthest", 1)]
    # k = 1: every image shares one centroid, so the centroid rows' analytic means differ from p = x
    assert not np.allclose(result.column("mean", point="input"), result.column("mean", point="centroid"))
    assert out.with_suffix(".md").read_text().count("| quantity |") == 1
    meta = out.with_suffix(".json").read_text()
    assert '"mc_samples": 64' in meta and "tightness --images 2" in meta
    assert (figures / "tightness_hist_sigma0.05.png").is_file()


def test_cli_rejects_bad_arguments(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["tightness", "--point", "median"])
    with pytest.raises(ValueError, match="sigmas"):
        run_tightness(sigmas=[0.0], n_images=1, mc_samples=10, progress=False)
    with pytest.raises(ValueError, match="n_images"):
        run_tightness(sigmas=[0.1], n_images=0, mc_samples=10, progress=False)
    with pytest.raises(ValueError, match="methods"):
        run_tightness(sigmas=[0.1], n_images=1, mc_samples=10, methods=("magic",), progress=False)


def test_variance_histogram_figure():
    from netmoments.viz import plot_variance_histograms

    rng = np.random.default_rng(0)
    mc = rng.lognormal(size=(12, 10))
    fig = plot_variance_histograms(mc, mc * 1.1, mc * 0.5, sigma=0.1)
    assert sum(ax.get_visible() for ax in fig.axes) == 10
    with pytest.raises(ValueError, match="shape"):
        plot_variance_histograms(mc, mc[:, :5], mc)
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert math.isfinite(float(mc.sum()))
