"""The layer-wise experiment: it scores closures on the tightness run's own covariances, and its records add up."""
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import netmoments as nm
from netmoments.experiments import layerwise

DATA = Path(__file__).resolve().parents[1] / "book" / "data"


def _tightness_row(image, sigma, cov):
    with gzip.open(DATA / "tightness_scale.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            if row["point"] == "input" and row["image"] == image and row["sigma"] == sigma and row["cov"] == cov:
                return row
    raise LookupError((image, sigma, cov))


@pytest.fixture(scope="module")
def ctx():
    return layerwise.build_layerwise_context(layerwise.LayerwiseConfig(), n_images=3)


@pytest.mark.parametrize("cov", ["dense", "sparse", "blur"])
def test_tasks_rebuild_the_tightness_runs_covariance(ctx, cov):
    """The committed run's closed form at the digit, recomputed on the rebuilt covariance, is what it stored."""
    image, sigma = 1, 0.05
    row = _tightness_row(image, sigma, cov)
    x, _, covariance = layerwise.task_input(ctx, image, sigma, cov)
    net = nm.linearize.two_stage_linearize(ctx.model, x.float()).to(torch.float64)
    with torch.no_grad():
        mean, var = net.moments(x.reshape(1, -1), covariance, output="var")
    np.testing.assert_allclose(var[0].numpy(), row["var_exact"], rtol=2e-5)
    np.testing.assert_allclose(mean[0].numpy(), row["mean"], rtol=2e-5, atol=1e-5)


def test_a_task_row_is_complete_and_its_numbers_are_the_closure(ctx):
    (row,) = layerwise.layerwise_task((0, 0.05, "dense", "diag"), ctx)
    assert row["method"] == "diag" and len(row["mean"]) == 10 and len(row["var"]) == 10
    x, _, covariance = layerwise.task_input(ctx, 0, 0.05, "dense")
    with torch.no_grad():
        mean, var = nm.propagate.moments(ctx.model64, x, covariance, closure="diag", output="var")
    np.testing.assert_allclose(row["var"], var[0].numpy(), rtol=1e-8)
    assert row["cpu_s"] > 0 and row["draw_cpu_s"] > 0
    # the stored times are rounded (4 decimals, 4 significant digits); the draw count was taken before rounding
    assert abs(row["draws_equal_cost"] - row["cpu_s"] / row["draw_cpu_s"]) <= 1 + 1e-3 * row["draws_equal_cost"]


def test_metrics_against_a_known_truth_and_the_equal_cost_formula():
    truth = [{"point": "input", "image": 0, "sigma": 0.05, "cov": "dense", "mc_samples": 10_000,
              "mc_mean": [0.0, 1.0], "mc_var": [1.0, 4.0], "mc_var_se": [0.014, 0.056]}]  # fmt: skip
    rows = [{"image": 0, "sigma": 0.05, "cov": "dense", "method": "lowrank", "mean": [0.1, 1.0], "var": [1.0, 3.0],
             "cpu_s": 1.0, "draws_equal_cost": 1000}]  # fmt: skip
    m = layerwise.image_metrics(rows, truth, 0.05, "dense", "lowrank")
    assert m["zmu"][0] == pytest.approx(np.median([0.1, 0.0]))
    assert m["var_err"][0] == pytest.approx(np.mean([0.0, 2 * 1.0 / 7.0]))
    assert m["bias_low"][0] == 0.5
    var_err, zmu = layerwise.equal_cost_mc_errors([1000], [0.014], [10_000])
    assert zmu[0] == pytest.approx(0.6745 * math.sqrt(1e-3 + 1e-4))
    assert var_err[0] == pytest.approx(math.sqrt(2 / math.pi) * 0.014 * math.sqrt(11))
    # more draws, smaller expected errors, floored by the truth's own noise
    more = layerwise.equal_cost_mc_errors([10**6], [0.014], [10_000])
    assert more[1][0] < zmu[0] and more[1][0] > 0.6745 * 0.01


def test_task_list_rejects_unknown_methods():
    with pytest.raises(ValueError, match="method"):
        layerwise.task_list([0], [0.05], ["dense"], ["exact"])


def test_control_variate_errors_follow_the_paired_spread():
    row = {"mc_samples": 10_000, "mc_var": [1.0], "mc_var_se": [0.014], "l_dmean_se": [0.002], "l_dvar_se": [0.003]}
    # 1,000 passes of budget, 100 of them for the linearization: 900 / 1.05 draws
    var_err, zmu, n = layerwise.control_variate_errors(1000, 100, row, g_cost=0.05)
    assert n == int(900 / 1.05)
    n = 900 / 1.05
    mean_se = 0.002 * math.sqrt(10_000 / n)
    assert zmu == pytest.approx(0.6745 * math.sqrt(mean_se**2 + 1e-4))
    assert var_err == pytest.approx(math.sqrt(2 / math.pi) * math.sqrt((0.003 * math.sqrt(10_000 / n)) ** 2 + 0.014**2))
    # a budget that does not cover the linearization buys nothing
    assert math.isnan(layerwise.control_variate_errors(50, 100, row, g_cost=0.05)[0])


def test_summary_table_puts_every_method_and_the_equal_cost_baselines_side_by_side():
    truth = [{"point": "input", "image": i, "sigma": 0.05, "cov": "dense", "mc_samples": 10_000, "mc_mean": [0.0],
              "mc_var": [1.0], "mc_var_se": [0.014], "l_dmean_se": [0.002], "l_dvar_se": [0.003]} for i in range(5)]
    rows = [{"image": i, "sigma": 0.05, "cov": "dense", "method": m, "mean": [0.01], "var": [0.97],
             "cpu_s": 1.0, "draws_equal_cost": d} for i in range(5) for m, d in (("lowrank32", 2000), ("tsl", 500))]
    lines = layerwise.summary_table(rows, truth, 0.05)
    names = [line["method"] for line in lines]
    assert names == ["lowrank32", "tsl", "Monte Carlo at lowrank32's cost", "control-variate MC at lowrank32's cost"]
    assert lines[0]["var_err"][0] == pytest.approx(2 * 0.03 / 1.97)
    assert lines[0]["below"] == 1.0
    assert "| lowrank32 | 5 |" in layerwise.format_summary(lines)


def test_the_samplers_are_seeded_from_their_key_and_apart_from_the_truth(ctx):
    (mc,) = layerwise.layerwise_task((0, 0.05, "dense", "mc"), ctx)
    (again,) = layerwise.layerwise_task((0, 0.05, "dense", "mc"), ctx)
    assert mc["mean"] == again["mean"] and mc["var"] == again["var"]
    (cv,) = layerwise.layerwise_task((0, 0.05, "dense", "cv"), ctx)
    truth = _tightness_row(0, 0.05, "dense")
    # both estimate the same moments as the 10^4-draw truth: within 6 combined standard errors of it
    mc_var = np.asarray(truth["mc_var"])
    for row, n in ((mc, ctx.layerwise.mc_draws), (cv, ctx.layerwise.cv_draws)):
        se = np.sqrt(mc_var / n + mc_var / truth["mc_samples"])
        assert (np.abs(np.asarray(row["mean"]) - truth["mc_mean"]) < 6 * se).all()
    # the control variate's mean is closer to the truth than plain sampling would be with its draws, on average
    assert np.median(np.abs(np.asarray(cv["mean"]) - truth["mc_mean"]) / np.sqrt(mc_var)) < 0.6745 * math.sqrt(
        1 / ctx.layerwise.cv_draws + 1e-4
    ) * 3


def test_the_truth_method_runs_alone_and_reports_its_noise():
    with pytest.raises(ValueError, match="truth"):
        layerwise.task_list([0], [0.05], ["dense"], ["truth", "diag"])
    ctx = layerwise.build_layerwise_context(layerwise.LayerwiseConfig(), n_images=1, model="mlp", truth_draws=4000)
    (row,) = layerwise.layerwise_task((0, 0.05, "dense", "truth"), ctx)
    assert row["n"] == 4000 and len(row["var_se"]) == 10
    # the one-hidden-layer network's exact moments ("full" is exact there) lie within z * SE of the sampled truth
    (exact,) = layerwise.layerwise_task((0, 0.05, "dense", "full"), ctx)
    var, se = np.asarray(row["var"]), np.asarray(row["var_se"])
    assert np.all(np.abs(np.asarray(exact["var"]) - var) < 5 * se)
    mean_se = np.sqrt(var / row["n"])
    assert np.all(np.abs(np.asarray(exact["mean"]) - np.asarray(row["mean"])) < 5 * mean_se)
    # and scoring against these rows reads them as a truth with their own noise
    m = layerwise.image_metrics([exact], [row], 0.05, "dense", "full")
    assert m["truth_n"].tolist() == [4000] and m["zmu"][0] < 0.1


def test_other_networks_and_bad_settings():
    with pytest.raises(ValueError, match="model"):
        layerwise.build_layerwise_context(layerwise.LayerwiseConfig(), n_images=1, model="resnet")
    with pytest.raises(ValueError, match="truth_draws"):
        layerwise.build_layerwise_context(layerwise.LayerwiseConfig(), n_images=1, truth_draws=1)
    ctx = layerwise.build_layerwise_context(layerwise.LayerwiseConfig(), n_images=1, model="deep_cnn")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in ctx.model) == 5
    (row,) = layerwise.layerwise_task((0, 0.05, "dense", "lowrank"), ctx)
    assert np.all(np.isfinite(row["var"])) and min(row["var"]) > 0


def test_cost_accuracy_places_points_and_curves_against_one_truth():
    truth = [{"point": "input", "image": i, "sigma": 0.05, "cov": "dense", "mc_samples": 10_000, "mc_mean": [0.0],
              "mc_var": [1.0], "mc_var_se": [0.014], "l_dmean_se": [0.002], "l_dvar_se": [0.003]} for i in range(5)]
    rows = [{"image": i, "sigma": 0.05, "cov": "dense", "method": m, "mean": [0.01], "var": [0.97],
             "cpu_s": 1.0, "draws_equal_cost": d} for i in range(5) for m, d in (("lowrank32", 2000), ("tsl", 500))]
    budgets = [100, 1000, 10_000, 100_000]
    data = layerwise.cost_accuracy(rows, truth, 0.05, budgets=budgets, tightness_rows=truth, g_cost=0.05)
    assert set(data["points"]) == {"lowrank32", "tsl"} and data["n"] == 5
    assert data["points"]["lowrank32"]["draws"] == 2000
    assert data["points"]["lowrank32"]["var_err"][0] == pytest.approx(2 * 0.03 / 1.97)
    mc = data["curves"]["Monte Carlo"]
    expected = layerwise.equal_cost_mc_errors(budgets, [0.014] * 4, [10_000] * 4)
    np.testing.assert_allclose(mc["var_err"], expected[0])
    np.testing.assert_allclose(mc["zmu"], expected[1])
    # every curve falls with the budget towards the truth's own noise, never below it
    assert np.all(np.diff(mc["var_err"]) < 0) and mc["var_err"][-1] > data["floor"]["var_err"]
    assert data["floor"]["zmu"] == pytest.approx(0.6745 * 0.01)
    cv = data["curves"]["control variate"]
    assert math.isnan(cv["zmu"][0])  # 100 passes do not pay for the 500-pass linearization
    assert cv["zmu"][1] == pytest.approx(layerwise.control_variate_errors(1000, 500, truth[0], 0.05)[1])
    assert np.all(cv["zmu"][1:] < mc["zmu"][1:])  # the paired spread 0.002 is far below the plain 0.01
    with pytest.raises(ValueError, match="no rows"):
        layerwise.cost_accuracy(rows, truth, 0.2)


def test_sigterm_stops_a_run_after_whole_tasks_and_it_resumes(tmp_path):
    """kill (SIGTERM) ends a run cleanly: whole tasks on disk, no lock left behind, and --resume finishes it."""
    import signal
    import subprocess
    import sys
    import time

    from netmoments.experiments.runner import read_rows, scan_file

    out = tmp_path / "t.jsonl.gz"
    command = [sys.executable, "-m", "netmoments.experiments", "layerwise", "--model", "mlp", "--images", "0:8",
               "--sigmas", "0.05", "--methods", "truth", "--truth-draws", "20000", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and read_rows(out)):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err
    scan = scan_file(out)
    assert scan.damage is None and scan.torn_tail is None
    done = len(read_rows(out))
    assert 0 < done < 8
    assert not list(tmp_path.glob(".*.lock"))
    subprocess.run(command[:-1] + ["--resume", "--no-progress"], check=True, capture_output=True)
    assert sorted(r["image"] for r in read_rows(out)) == list(range(8))


def test_a_resumed_run_may_add_digits_but_not_change_anything_else(tmp_path):
    """--resume with more digits grows the run (its settings record the union); fewer digits or another setting
    is refused with a message naming what differs, and the file is left as it was."""
    import json
    import subprocess
    import sys

    from netmoments.experiments.runner import read_rows

    out = tmp_path / "g.jsonl.gz"
    base = [sys.executable, "-m", "netmoments.experiments", "layerwise", "--model", "mlp", "--sigmas", "0.05",
            "--methods", "diag", "--out", str(out), "--no-progress"]

    def run(*extra):
        return subprocess.run(base + list(extra), capture_output=True, text=True)

    assert run("--images", "0:2").returncode == 0
    assert run("--images", "0:4", "--resume").returncode == 0
    assert sorted(r["image"] for r in read_rows(out)) == [0, 1, 2, 3]
    meta = json.loads(out.with_suffix("").with_suffix(".json").read_text())
    assert meta["settings"]["images"] == [0, 1, 2, 3] and len(meta["sittings"]) == 2
    for extra, named in ((("--images", "0:3"), "images"), (("--images", "0:5", "--sigmas", "0.01"), "sigmas")):
        proc = run(*extra, "--resume")
        assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(r["image"] for r in read_rows(out)) == [0, 1, 2, 3]
    assert json.loads(out.with_suffix("").with_suffix(".json").read_text())["settings"]["images"] == [0, 1, 2, 3]
