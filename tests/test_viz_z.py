"""netmoments.viz.plot_z_distribution: the z-score histograms of chapter 7."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import StepPatch  # noqa: E402

from netmoments import viz  # noqa: E402


def _stairs(ax):
    return [p for p in ax.patches if isinstance(p, StepPatch)]


def test_histograms_are_densities_that_follow_the_normal_for_noise():
    rng = np.random.default_rng(0)
    z = {"means": rng.standard_normal(200_000), "variances": rng.standard_normal((400, 250))}
    fig = viz.plot_z_distribution(z, threshold=4.0, limit=6.0, bins=48)
    ax = fig.axes[0]
    stairs = _stairs(ax)
    assert [s.get_label() for s in stairs] == ["means (200,000)", "variances (100,000)"]
    for s in stairs:
        data = s.get_data()
        heights, edges = np.nan_to_num(data.values), data.edges
        assert edges[0] == -6.0 and edges[-1] == 6.0 and len(heights) == 48
        assert np.sum(heights * np.diff(edges)) == pytest.approx(1.0, rel=1e-12)  # a density
        centre = np.argmin(np.abs(0.5 * (edges[1:] + edges[:-1])))
        assert heights[centre] == pytest.approx(np.exp(-0.5 * 0.125**2) / np.sqrt(2 * np.pi), rel=0.03)
    vertical = sorted(line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1])
    assert vertical == [-4.0, 4.0]
    plt.close(fig)


def test_far_values_land_in_the_outer_bins_and_empty_bins_are_not_drawn():
    z = np.concatenate([np.zeros(99), [100.0]])
    fig = viz.plot_z_distribution({"z": z}, limit=5.0, bins=10)
    heights = _stairs(fig.axes[0])[0].get_data().values
    assert heights[-1] == pytest.approx(1 / (100 * 1.0)) and heights[5] == pytest.approx(99 / 100)
    assert np.isnan(heights[0]) and np.isnan(heights[1:5]).all()
    plt.close(fig)
    fig = viz.plot_z_distribution({"z": [0.5, np.nan, -7.0]})  # the default range covers the largest |z| ...
    assert fig.axes[0].get_xlim()[1] == pytest.approx(7.0 * 1.05)
    plt.close(fig)
    fig = viz.plot_z_distribution({"z": [0.5, -3.0]}, threshold=6.0)  # ... and the threshold
    assert fig.axes[0].get_xlim()[1] == pytest.approx(6.0 * 1.05)
    plt.close(fig)


@pytest.mark.parametrize("bad", [{}, {"z": []}, {"z": [np.nan]}])
def test_empty_input_is_an_error(bad):
    with pytest.raises(ValueError, match="non-empty"):
        viz.plot_z_distribution(bad)
