"""The calibration of the Gaussian attack where its predictions spread (chapter 9).

* the metrics of :mod:`netmoments.attacks.report` on synthetic predictions whose answer is known: the Brier
  score of constant predictions against draws, a by-hand ECE, a calibrated predictor (ECE near 0, every bin's
  interval on the diagonal) and a shifted one (detected);
* the ``calibration`` suite on 2 digits with few draws: one row per digit, goal and variant, and the
  any-class rate read off the same draws as the ``k*`` rate;
* the committed ``book/data/attack_calibration.csv``: every digit has every goal and variant, predictions are
  probabilities, and the metadata records how, when and where the file was made.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from netmoments.attacks.report import (brier_score, expected_calibration_error, goal_calibration,
                                       reliability_edges, reliability_table)

DATA = Path(__file__).resolve().parents[1] / "book" / "data" / "attack_calibration.csv"


# ------------------------------------------------------------------------------------------- metrics


def test_brier_of_constant_predictions_matches_the_draws():
    rng = np.random.default_rng(1)
    rates = rng.uniform(0, 1, 50)
    draws = rng.uniform(size=(50, 400)) < rates[:, None]  # binary outcomes per digit
    observed = draws.mean(1)
    for c in (0.0, 0.3, 1.0):
        by_draws = np.mean(((c - draws.astype(float)) ** 2).mean(1))
        assert brier_score(np.full(50, c), observed) == pytest.approx(by_draws, abs=1e-12)
    # a constant 0 against digits that always fail scores 0; against digits that always succeed, 1
    assert brier_score([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert brier_score([0.0, 0.0], [1.0, 1.0]) == 1.0


def test_ece_by_hand():
    pred = np.array([0.1, 0.2, 0.8, 0.9])
    obs = np.array([0.0, 0.1, 1.0, 1.0])
    # bins [0, 0.5) and [0.5, 1]: |0.15 - 0.05| * 2/4 + |0.85 - 1.0| * 2/4
    assert expected_calibration_error(pred, obs, [0.0, 0.5, 1.0]) == pytest.approx(0.125)
    # one bin: signed errors cancel inside it
    assert expected_calibration_error([0.2, 0.8], [0.8, 0.2], [0.0, 1.0]) == pytest.approx(0.0)


def test_edges_hold_about_equal_counts():
    pred = np.random.default_rng(0).beta(5, 1, 1000)
    edges = reliability_edges(pred, 5)
    assert edges[0] == 0.0 and edges[-1] == 1.0 and len(edges) == 6
    counts = np.histogram(pred, edges)[0]
    assert counts.min() >= 190


def _synthetic(shift, n=600, draws=1000, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.05, 0.85, n)
    observed = rng.binomial(draws, truth) / draws
    return np.clip(truth + shift, 0, 1), observed


def test_a_calibrated_predictor_has_ece_near_zero_and_bins_on_the_diagonal():
    pred, obs = _synthetic(0.0)
    table = reliability_table(pred, obs, n_bins=5, n_boot=500)
    est, lo, hi = table["ece"]
    assert est < 0.01 and hi < 0.02 and lo <= est <= hi
    assert sum(b["n"] for b in table["bins"]) == len(pred)
    for b in table["bins"]:
        assert b["wilson"][0] <= b["pred"] <= b["wilson"][1]
        assert b["boot"][1] - 0.01 <= b["pred"] <= b["boot"][2] + 0.01


def test_a_shifted_predictor_is_detected():
    calibrated = reliability_table(*_synthetic(0.0), n_boot=500)
    shifted = reliability_table(*_synthetic(0.1), n_boot=500)
    assert shifted["ece"][1] > 0.08 > calibrated["ece"][2]
    assert shifted["brier"][1] > calibrated["brier"][2]
    for b in shifted["bins"]:
        assert b["boot"][2] < b["pred"]  # observed clearly below predicted in every bin


def test_metrics_refuse_bad_inputs():
    with pytest.raises(ValueError, match="pred"):
        brier_score([1.2], [0.5])
    with pytest.raises(ValueError, match="same length"):
        brier_score([0.5, 0.5], [0.5])
    with pytest.raises(ValueError, match="edges"):
        expected_calibration_error([0.5], [0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_edges([0.5], 0)
    rows = [dict(method="gauss-sparse", goal=0.5, pred_success=0.5, mc_success_kstar=0.4, mc_success_any=0.4)]
    with pytest.raises(ValueError, match="observed"):
        goal_calibration(rows, observed="success")
    with pytest.raises(ValueError, match="attack"):
        goal_calibration(rows, attack="fmn-l0")


# ------------------------------------------------------------------------------------------- the suite


def test_the_suite_on_two_digits():
    from netmoments.experiments import attack_suite
    from netmoments.experiments.attack_calibration import CAL_METHODS, calibration_suite, judged_check

    torch.set_num_threads(1)
    ctx = attack_suite.SuiteContext("test", 2, 2)
    chunk = attack_suite._Chunk(ctx, "calibration", 0, set(CAL_METHODS))  # a set of methods: no yardstick
    calibration_suite(chunk, goals=(0.5,), draws=64)
    rows = chunk.rows
    assert [(r["method"], r["image"]) for r in rows] == [(m, int(i)) for m in CAL_METHODS for i in ctx.index]
    for r in rows:
        assert 0.0 <= r["pred_success"] <= 1.0 and r["goal"] == 0.5 and r["draws"] == 64
        assert r["mc_success_kstar"] <= r["mc_success_any"] + 1e-6 <= 1.0 + 1e-6
    assert all(np.isnan(r["final_goal"]) for r in rows if r["method"] != "gauss-sparse")

    # the any-class rate is the rate on the very draws surrogate_check judged: recompute it by hand
    from netmoments.attacks import gaussian_attack

    images, labels, _ = ctx.batch(0)
    res = gaussian_attack(ctx.model, images, labels, goal=0.5, final_goal=0.5, seed=chunk.seed)
    chk = judged_check(ctx.model, res, labels, 64, seed=chunk.seed)
    draws = res.sample(64, generator=torch.Generator().manual_seed(chunk.seed))
    with torch.no_grad():
        pred = ctx.model(draws.flatten(0, 1)).argmax(-1).view(64, -1)
    assert np.allclose(chk["mc_success_any"], (pred != labels).double().mean(0).numpy())
    assert np.allclose(chk["mc_success_any"], [r["mc_success_any"] for r in rows[:2]])


# ------------------------------------------------------------------------------------------- the data


def _committed():
    if not DATA.exists():
        pytest.skip(f"{DATA.name} not committed")
    from netmoments.experiments.runner import read_rows

    return read_rows(DATA), json.loads(DATA.with_suffix(".json").read_text())


def test_the_committed_data_is_complete_and_has_provenance():
    rows, meta = _committed()
    settings = meta["settings"]
    assert settings["suite"] == "calibration" and settings["split"] == "test" and settings["draws"] >= 1000
    goals, methods = set(settings["goals"]), set(settings["methods"])
    cells: dict = {}
    for r in rows:
        cells.setdefault(r["image"], set()).add((float(r["goal"]), r["method"]))
        assert 0.0 <= float(r["pred_success"]) <= 1.0
        # the k* rate is averaged in float32, the any-class rate in float64
        assert 0.0 <= float(r["mc_success_kstar"]) <= float(r["mc_success_any"]) + 1e-6 <= 1.0 + 1e-6
        assert int(r["draws"]) == settings["draws"]
    assert cells, "no complete task in the file"
    assert all(c == {(g, m) for g in goals for m in methods} for c in cells.values())
    # one chunk per task: the digits done are the first chunks of the run
    assert len(cells) == meta["images_done"] or not meta["sittings"][-1].get("complete")
    assert len(cells) <= settings["images"]
    for sitting in meta["sittings"]:
        for key in ("command", "git_commit", "versions", "machine", "started"):
            assert sitting.get(key), key
        assert "--suite calibration" in sitting["command"]


def test_the_reliability_plot_draws_one_panel_per_goal():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from netmoments import viz

    tables = {g: dict(reliability_table(*_synthetic(s), n_bins=4, n_boot=50), goal=g)
              for g, s in ((0.5, 0.0), (0.9, 0.1))}
    fig = viz.plot_reliability(tables)
    assert len(fig.axes) == 2 and "goal 0.5" in fig.axes[0].get_title()
    # one point per bin, with its count written beside it
    assert len(fig.axes[1].texts) == len(tables[0.9]["bins"])
    plt.close(fig)
    _, axes = plt.subplots(1, 3)
    with pytest.raises(ValueError, match="one axes per table"):
        viz.plot_reliability(tables, ax=axes)
    plt.close("all")
