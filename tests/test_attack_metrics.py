"""Tests of netmoments.attacks.metrics: bootstrap intervals over images, per-image metrics on known cases."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from netmoments.attacks import AttackResult
from netmoments.attacks.metrics import PassCounter, bootstrap_ci, image_metrics, quantile, summarize


def test_bootstrap_mean_interval_covers_at_its_level():
    # A known case: the mean of n normal values. Over many independent samples the 95 % percentile-bootstrap
    # interval must contain the true mean about 95 % of the time (the binomial SE of the coverage over 400
    # repetitions is 1.1 %, so [0.90, 0.985] is a wide but failable band), and its width must be near
    # 2 * 1.96 * sigma / sqrt(n).
    rng = np.random.default_rng(7)
    n, reps, mu, sigma = 50, 400, 0.3, 2.0
    hits, widths = 0, []
    for r in range(reps):
        x = rng.normal(mu, sigma, n)
        est, lo, hi = bootstrap_ci(x, "mean", n_boot=1000, seed=r)
        assert est == pytest.approx(x.mean())
        hits += lo <= mu <= hi
        widths.append(hi - lo)
    assert 0.90 <= hits / reps <= 0.985
    assert np.mean(widths) == pytest.approx(2 * 1.96 * sigma / math.sqrt(n), rel=0.08)


def test_bootstrap_median_with_infinite_values_and_bad_input():
    x = np.array([1.0, 2.0, 3.0, np.inf, np.inf])
    est, lo, hi = bootstrap_ci(x, "median", n_boot=500)
    assert est == 3.0 and lo <= est <= hi
    assert bootstrap_ci(np.full(10, 0.7), "mean") == pytest.approx((0.7, 0.7, 0.7))
    assert quantile([4, 1, 3, 2], 0.25) == 1.0
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci(x, "mean")
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci(x, "mode")
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(x, "median", n_boot=0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([], "mean")


def _pixel_model():
    """Two classes on 1x8x8 images: class 1 exactly when pixel 0 exceeds 0.5."""
    lin = nn.Linear(64, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1, 0] = 1.0
        lin.bias[1] = -0.5
    model = nn.Sequential(nn.Flatten(), lin)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.double()


def test_image_metrics_on_a_known_distribution():
    model = _pixel_model()
    clean = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    v = torch.zeros(2, 64, dtype=torch.float64)
    v[0, 0] = 0.5  # image 0: pixel 0 ~ N(0.5, 0.2^2), so success has probability 1/2
    v[1, 0] = 0.9  # image 1: N(0.9, 0.2^2): success probability Phi(2)
    w = torch.zeros_like(v)
    w[:, 0] = 0.04
    res = AttackResult(clean=clean, labels=torch.tensor([0, 0]), target=None, delta_param=v, noise_var=w,
                       blur_sigma=0.0, structure="sparse", time_s=2.0,
                       options=dict(seed=3, forward_passes=10.0, backward_passes=5.0))
    n = 1500
    m = image_metrics(model, res, torch.tensor([0, 0]), n_samples=n, ssim_draws=2)
    truth = np.array([0.5, 0.5 * (1 + math.erf(2 / math.sqrt(2)))])
    se = np.sqrt(truth * (1 - truth) / n)
    assert np.all(np.abs(m.success - truth) < 4 * se)
    # every successful draw changes exactly one pixel: success at L0 budget 5 equals success
    assert np.allclose(m.success_l0[:, 0], m.success)
    assert np.all(m.l0 == 1.0)
    # median L2 of the successful draws of image 0: the median of 0.5 + 0.2 Z given Z > 0
    median_truth = 0.5 + 0.2 * 0.6744897501960817
    se_median = 1.0 / (2 * (2 * 0.3177765727465 / 0.2) * math.sqrt(n / 2))  # 1 / (2 f(median) sqrt(count))
    assert abs(m.l2[0] - median_truth) < 4 * se_median
    # E|X - X'| = 2 sigma / sqrt(pi) for two independent N(., sigma^2) draws (clipping moves it by < 1e-3 here)
    assert m.diversity[0] == pytest.approx(2 * 0.2 / math.sqrt(math.pi), abs=0.012)
    assert m.time_s[0] == 1.0 and m.forward[1] == 10.0 and m.backward[0] == 5.0
    rows = m.rows()
    assert len(rows) == 2 and rows[0]["success_l0_5"] == m.success_l0[0, 0]
    table = summarize(rows, n_boot=200)
    assert table["n_images"] == 2 and table["success"][0] == pytest.approx(m.success.mean())


def test_point_attack_metrics_and_never_fooled_is_infinite():
    model = _pixel_model()
    clean = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    v = torch.zeros(2, 64, dtype=torch.float64)
    v[0, 0], v[0, 3] = 0.7, 0.2
    v[1, 0] = 0.4  # not enough: never fooled
    res = AttackResult(clean=clean, labels=torch.tensor([0, 0]), target=None, delta_param=v,
                       noise_var=torch.zeros_like(v), blur_sigma=0.0, structure="sparse")
    m = image_metrics(model, res, torch.tensor([0, 0]), n_samples=50)
    assert m.n_draws == 1 and list(m.success) == [1.0, 0.0]
    assert m.l0[0] == 2 and math.isinf(m.l0[1]) and m.l0_all[1] == 1
    assert m.l2[0] == pytest.approx(math.hypot(0.7, 0.2)) and m.diversity[0] == 0.0
    assert list(m.success_l0[0]) == [1.0] * 7 and list(m.success_l2[0][:2]) == [0.0, 1.0]
    assert m.ssim[1] < 1.0
    with pytest.raises(ValueError, match="n_samples"):
        image_metrics(model, res, torch.tensor([0, 0]), n_samples=0)
    with pytest.raises(TypeError, match="AttackResult"):
        image_metrics(model, "attack", torch.tensor([0, 0]))


def test_pass_counter_counts_images_forward_and_backward():
    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(5, 3, requires_grad=True)
    with PassCounter(model) as count:
        with torch.no_grad():
            model(x)
        out = model(x)
        torch.autograd.grad(out.sum(), x)
    assert (count.forward, count.backward) == (10, 5)
    model(x)
    assert count.forward == 10  # the hook is gone


def test_surrogate_check_agrees_with_monte_carlo_where_the_surrogate_is_exact():
    # One hidden ReLU layer (the layers before the kept ReLU are affine, so the two-stage linearization is the
    # network), pixels far from the box edges (no clipping): the closed-form margin mean and, with
    # method="exact", its variance are the truth, so Monte Carlo must agree within its standard errors.
    from netmoments.attacks.support import surrogate_check
    from netmoments.models import load_mlp

    model = load_mlp().double()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(5)
    clean = (0.35 + 0.3 * torch.rand(3, 1, 28, 28, generator=gen, dtype=torch.float64))
    with torch.no_grad():
        labels = model(clean).argmax(-1)
    v = torch.zeros(3, 784, dtype=torch.float64)
    w = torch.zeros_like(v)
    pix = torch.randperm(784, generator=gen)[:40]
    v[:, pix] = 0.02
    w[:, pix] = 0.08**2  # 0.35 - 0.02 is > 4 sd from 0: clipping has probability < 1e-4 per pixel
    res = AttackResult(clean=clean, labels=labels, target=None, delta_param=v, noise_var=w, blur_sigma=0.0,
                       structure="sparse", options=dict(seed=0))
    n = 4000
    chk = surrogate_check(model, res, labels, n_samples=n, generator=torch.Generator().manual_seed(1),
                          method="exact")
    assert (chk["margin_z"].abs() < 4.5).all(), chk["margin_z"]
    se_var = chk["mc_var"] * math.sqrt(2.0 / (n - 1))
    assert ((chk["sur_var"] - chk["mc_var"]).abs() < 4.5 * se_var).all()
    assert ((chk["pred_success"] >= 0) & (chk["pred_success"] <= 1)).all()


def test_report_tables_cost_ratio_and_calibration():
    from netmoments.attacks.report import calibration, cost_ratio, format_interval, method_table

    rows = []
    for chunk in range(3):
        for i in range(4):
            image = 4 * chunk + i
            for method, t in (("gauss-sparse", 2.0), ("fmn-l0", 1.0)):
                rows.append(dict(task=f"[{chunk}]", image=image, method=method, success=float(i % 2), l0=10.0 + i,
                                 l2=1.0, tv=3.0, ssim=0.9, diversity=0.0, support_jaccard=0.0, time_s=t,
                                 forward=1.0, backward=1.0, yardstick_s=1.0 + chunk, success_l0_10=0.5,
                                 pred_success=0.95 if i < 2 else 0.2, mc_success_kstar=float(i < 3),
                                 margin_z=0.0, sur_mean=-1.0, mc_mean=-1.0))
    table = method_table(rows, n_boot=200)
    assert [t["method"] for t in table] == ["gauss-sparse", "fmn-l0"] and table[0]["n"] == 12
    assert table[0]["success"][0] == pytest.approx(0.5) and table[0]["l0"][0] == 11.0
    est, lo, hi = cost_ratio(rows)
    assert est == pytest.approx(2.0 / 2.0) and lo <= est <= hi  # mean time 2 over mean yardstick 2
    cal = calibration(rows, bins=(0.0, 0.5, 1.0))
    assert cal["bins"][0][2] == 6 and cal["bins"][1][2] == 6
    assert cal["bins"][1][4] == pytest.approx(1.0)  # pred 0.95 digits (i < 2) all succeed
    assert format_interval((0.5, 0.25, float("inf"))) == "0.50 [0.25, inf]"
    # success at budgets of another size: the table reads that size's columns, not the L0 ones
    for r in rows:
        r.update({"success_l2_0.5": float(r["image"] < 3), "success_l2_1": 1.0})
    table = method_table(rows, budgets=(0.5, 1.0), size="l2", n_boot=200)
    assert table[0]["success_l2_0.5"][0] == pytest.approx(3 / 12) and table[0]["success_l2_1"][0] == 1.0
    assert "success_l0_10" not in table[0]


def test_paired_difference_and_its_wording():
    from netmoments.attacks.report import compare, paired_difference

    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 40)
    rows = []
    for i, b in enumerate(base):
        rows.append(dict(image=i, method="a", success=b + 0.1, l0=5.0 if i else np.inf))
        rows.append(dict(image=i, method="b", success=b, l0=7.0))
    rows.append(dict(image=99, method="a", success=0.0, l0=1.0))  # not attacked by b: not paired
    est, lo, hi = paired_difference(rows, "a", "b", "success", n_boot=300)
    assert est == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    assert paired_difference(rows, "a", "b", "l0", n_boot=300)[0] == pytest.approx(-2.0)  # digit 0 (inf) left out
    assert compare((0.1, 0.05, 0.2)).startswith("higher (+0.10 [0.05, 0.20])")
    assert compare((-0.1, -0.2, -0.01), lower="worse").startswith("worse")
    assert compare((0.0, -0.1, 0.1)).startswith("not distinguishable")
    with pytest.raises(ValueError, match="share no digit"):
        paired_difference(rows, "a", "missing", "success")


def test_markdown_table_shows_intervals_and_labels():
    from netmoments.attacks.report import markdown_table

    table = [dict(method="a", success=(0.5, 0.4, 0.6), l0=(21.0, 20.0, 22.0)),
             dict(method="b", success=(0.25, 0.2, 0.3), l0=(12.0, 11.0, 12.0))]
    text = markdown_table(table, [("success", "success", 2), ("median L0", "l0", None),
                                  ("note", lambda e: e["method"].upper(), None)], labels={"a": "ours"})
    lines = text.splitlines()
    assert lines[0] == "| attack | success | median L0 | note |" and lines[1] == "|---|---|---|---|"
    assert lines[2] == "| ours | 0.50 [0.40, 0.60] | 21 | A |"
    assert lines[3] == "| `b` | 0.25 [0.20, 0.30] | 12 | B |"
    with pytest.raises(ValueError, match="columns"):
        markdown_table(table, [])
