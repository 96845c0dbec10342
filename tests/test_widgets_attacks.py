"""The chapter-8 attack browser: its pure selection function and the widget's precomputed frames."""
from pathlib import Path

import numpy as np
import pytest

from netmoments import widgets
from widget_checks import check_frames


def _data(n_img=2, n_tgt=2, n_w=3):
    rng = np.random.default_rng(0)
    clean = rng.random((n_img, 1, 28, 28)).astype(np.float32)
    mean = np.repeat(np.repeat(clean[:, None, None], n_tgt, 1), n_w, 2).copy()
    std = np.zeros_like(mean)
    # digit 1, target 1, weight 2: five pixels shifted and two other pixels noisy
    mean[1, 1, 2, 0, 0, :5] += 0.5
    std[1, 1, 2, 0, 3, :2] = 0.2
    return {
        "clean": clean,
        "labels": np.array([3, 7]),
        "targets": np.array([[4, 8], [8, 1]]),
        "weights": np.array([0.1, 0.3, 1.0]),
        "mean": mean,
        "noise_std": std,
        "draws": np.repeat(mean[:, :, :, None], 3, 3),
        "success": np.arange(n_img * n_tgt * n_w, dtype=float).reshape(n_img, n_tgt, n_w) / 12,
    }


def test_attack_browser_summary_selects_the_right_attack():
    data = _data()
    s = widgets.attack_browser_summary(data, image=1, target=1, weight=2)
    assert s["label"] == 7 and s["target"] == 1 and s["l1_weight"] == 1.0
    assert s["success"] == 11 / 12
    assert s["pixels_touched"] == 7
    assert s["clean"].shape == (1, 1, 28, 28) and s["draws"].shape == (1, 3, 1, 28, 28)
    assert np.array_equal(s["mean"][0], data["mean"][1, 1, 2])
    untouched = widgets.attack_browser_summary(data, image=0, target=0, weight=0)
    assert untouched["pixels_touched"] == 0


@pytest.mark.parametrize("kwargs", [dict(image=2, target=0, weight=0), dict(image=0, target=-1, weight=0),
                                    dict(image=0, target=0, weight=1.0)])
def test_attack_browser_summary_rejects_bad_indices(kwargs):
    with pytest.raises(ValueError, match="must be an int index"):
        widgets.attack_browser_summary(_data(), **kwargs)


def test_attack_browser_widget_has_one_frame_per_stored_attack():
    data = _data()
    w = widgets.attack_browser_widget(data)
    grid = {"image": (0, 1), "target": (0, 1), "weight": (0, 1, 2)}
    points = check_frames(w, grid, ["digit", "target", "L1 weight"])
    for point in points:
        expected = widgets.attack_browser_summary(data, *point)
        got = w.results[point]
        assert (got["label"], got["target"], got["l1_weight"]) == (expected["label"], expected["target"],
                                                                    expected["l1_weight"])
        assert np.array_equal(got["mean"][0], data["mean"][point])
    assert w.results[1, 1, 2]["pixels_touched"] == 7
    # the readouts name the digit's label and the weight itself, not only indices
    assert [label for label, _ in w.sliders["image"].options] == ["#0: a 3", "#1: a 7"]
    assert [label for label, _ in w.sliders["weight"].options] == ["#0: λ = 0.1", "#1: λ = 0.3", "#2: λ = 1"]
    # targets (4, 8) for a 3 and (8, 1) for a 7: the first column is label + 1 for both, the second is not shared
    assert [label for label, _ in w.sliders["target"].options] == ["#0: label + 1", "#1"]
    assert w.key == (0, 0, 1)


def test_committed_browser_data_is_consistent():
    path = Path(__file__).resolve().parents[1] / "book" / "data" / "attacks_widget.npz"
    if not path.exists():
        pytest.skip("book/data/attacks_widget.npz not generated")
    data = widgets.load_attack_browser_data(path)
    n_img, n_tgt, n_w = data["success"].shape
    assert data["mean"].shape[:3] == (n_img, n_tgt, n_w)
    assert (data["targets"] != data["labels"][:, None]).all()
    assert ((data["success"] >= 0) & (data["success"] <= 1)).all()
    assert data["mean"].min() >= 0 and data["mean"].max() <= 1
