"""Issue 23 item 6: one word per idea. Every renamed public keyword still works through a shim that warns with
a ``DeprecationWarning`` naming the new word, and gives the same result as the new keyword.

``method``: a covariance / ReLU formula; ``jacobian``: the Jacobian algorithm; ``attack``: the attack's name;
``n_samples``: a number of draws; ``terms=None``: no truncation (the exact Phi2) everywhere.
"""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import netmoments as nm
from netmoments.attacks import (
    AttackOptions,
    AttackResult,
    LinearizedAttackObjective,
    SampledGradients,
    eot_attack,
    gaussian_attack,
)
from netmoments.attacks import report
from netmoments.attacks.metrics import L0_BUDGETS, image_metrics, judge_draws
from netmoments.attacks.support import surrogate_check
from netmoments.linearize import TwoStageLinearization, affine_linearize, two_stage_linearize


def _deprecated(new):
    return pytest.warns(DeprecationWarning, match=f"use '?\\.?{new}")


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 5), nn.ReLU(),
                         nn.Linear(5, 3)).double()


@pytest.fixture
def tiny():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.6 + 0.2
    labels = model(images).argmax(-1)
    return model, images, labels


# --------------------------------------------------------------------------------------------- jacobian=


def test_linearizers_take_jacobian_and_the_old_method_keyword(small_net):
    x = torch.rand(1, 6, 6, dtype=torch.float64)
    new = two_stage_linearize(small_net, x, jacobian="autograd")
    with _deprecated("jacobian"):
        old = two_stage_linearize(small_net, x, method="autograd")
    assert torch.equal(new.A, old.A) and torch.equal(new.B, old.B)
    W, b = affine_linearize(small_net, x, jacobian="structured")
    with _deprecated("jacobian"):
        W_old, b_old = affine_linearize(small_net, x, method="structured")
    assert torch.equal(W, W_old) and torch.equal(b, b_old)
    with _deprecated("jacobian"):
        lin = TwoStageLinearization(small_net, x, method="autograd")
    assert lin.jacobian == "autograd"
    with _deprecated("jacobian"):
        assert lin.method == "autograd"
    with pytest.raises(TypeError, match="only"), _deprecated("jacobian"):
        two_stage_linearize(small_net, x, jacobian="structured", method="autograd")


# --------------------------------------------------------------------------------------------- terms=None


def test_terms_none_means_exact_in_relu_as_in_special(gen):
    mean = torch.randn(4, generator=gen, dtype=torch.float64)
    L = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    cov = L @ L.T + 0.1 * torch.eye(4, dtype=torch.float64)
    exact = nm.relu_covariance(mean, cov, method="exact")
    assert torch.equal(nm.relu_covariance(mean, cov, method="series", terms=None), exact)
    h, k, r = torch.tensor([0.3]), torch.tensor([-0.2]), torch.tensor([0.5])
    assert torch.equal(nm.bivariate_normal_cdf_series(h, k, r, terms=None), nm.bivariate_normal_cdf(h, k, r))
    mi, mj = mean[:1], mean[1:2]
    vi, vj = cov[0, 0].reshape(1), cov[1, 1].reshape(1)
    rho = (cov[0, 1] / (vi * vj).sqrt()).reshape(1)
    series_none = nm.relu_cross_moment(mi, mj, vi, vj, rho, method="series", terms=None)
    assert torch.allclose(series_none, nm.relu_cross_moment(mi, mj, vi, vj, rho, method="exact"), rtol=1e-12)
    net = nm.AffineReLUAffine(torch.eye(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                              torch.ones(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    got = net.moments(mean, cov, method="series", terms=None)[1]
    assert torch.allclose(got, net.moments(mean, cov, method="exact")[1], rtol=1e-12)
    for bad in (0, -1, 2.5, "5"):
        with pytest.raises(ValueError, match="terms"):
            nm.relu_covariance(mean, cov, method="series", terms=bad)


# --------------------------------------------------------------------------------------------- n_samples=


def test_sample_counts_are_n_samples(tiny):
    model, images, labels = tiny
    res = gaussian_attack(model, images, labels, steps=3, mean_steps=2, support_steps=2)

    def gen():
        return torch.Generator().manual_seed(3)

    new = image_metrics(model, res, labels, n_samples=5, generator=gen())
    with _deprecated("n_samples"):
        old = image_metrics(model, res, labels, n_draws=5, generator=gen())
    assert np.array_equal(new.success, old.success) and new.n_draws == old.n_draws
    with _deprecated("n_samples"):
        _, ok, _, _ = judge_draws(model, res, labels, n_draws=4, generator=gen())
    assert torch.equal(ok, judge_draws(model, res, labels, n_samples=4, generator=gen())[1])
    with _deprecated("n_samples"):
        eot = eot_attack(model, images, labels, steps=2, samples=2)
    assert eot.options["samples"] == 2
    with _deprecated("n_samples"):
        source = SampledGradients(samples=3)
    assert source.n_samples == 3
    with _deprecated("n_samples"):
        assert source.samples == 3
    with pytest.raises(TypeError, match="only"), _deprecated("n_samples"):
        SampledGradients(4, samples=3)


def test_recheck_formula_takes_n_samples():  # the shim itself: tests/test_tightness.py
    import inspect

    from netmoments.experiments.tightness import recheck_formula

    params = inspect.signature(recheck_formula).parameters
    assert "n_samples" in params and params["draws"].kind is inspect.Parameter.KEYWORD_ONLY


# --------------------------------------------------------------------------------------------- attacks


def test_attack_formula_is_method_and_the_attack_name_is_attack(tiny):
    model, images, labels = tiny
    opts = AttackOptions(method="none")
    with _deprecated("method"):
        old = AttackOptions(variance="none")
    assert old == opts and old.method == "none"
    with _deprecated("method"):
        assert opts.variance == "none"
    assert opts.replace(steps=5).method == "none" and "variance" not in opts.as_dict()
    kwargs = dict(steps=3, mean_steps=2, support_steps=2)
    res = gaussian_attack(model, images, labels, method="none", **kwargs)
    with _deprecated("method"):
        res_old = gaussian_attack(model, images, labels, variance="none", **kwargs)
    assert torch.equal(res.delta_param, res_old.delta_param) and res.options["method"] == "none"
    assert res.attack == "gaussian"
    with _deprecated("attack"):
        assert res.method == "gaussian"
    with _deprecated("attack"):
        made = AttackResult(res.clean, res.labels, None, res.delta_param, res.noise_var, 0.0, "sparse",
                            method="mine")
    assert made.attack == "mine"
    chk = surrogate_check(model, res, labels, n_samples=3, method="linear", generator=torch.Generator())
    with _deprecated("n_samples"), _deprecated("method"):
        chk_old = surrogate_check(model, res, labels, n_draws=3, variance="linear", generator=torch.Generator())
    assert torch.equal(chk["pred_success"], chk_old["pred_success"])
    net = nm.AffineReLUAffine(torch.randn(4, 16, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                              torch.randn(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    clean = torch.rand(1, 16, dtype=torch.float64)
    with _deprecated("method"):
        obj = LinearizedAttackObjective(net, clean, torch.tensor([0]), False, (1, 4, 4), variance="exact")
    assert obj.method == "exact"
    with _deprecated("method"):
        assert obj.variance == "exact"


def test_gradient_source_with_only_a_method_name_still_works(tiny):
    model, images, labels = tiny

    class Legacy(SampledGradients):
        attack = None
        method = "legacy-source"

    with _deprecated("attack"):
        res = gaussian_attack(model, images, labels, steps=3, mean_steps=2, support_steps=2,
                              gradients=Legacy(n_samples=2))
    assert res.attack == "legacy-source"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert SampledGradients().attack == "eot-support"


def _rows():
    rows = []
    for name, t in (("gauss-sparse", 1.0), ("other", 2.0)):
        for i in range(4):
            rows.append(dict(method=name, image=i, task=i // 2, time_s=t, yardstick_s=1.0, pred_success=0.9,
                             mc_success_kstar=0.8, margin_z=0.1, sur_mean=1.0, mc_mean=1.0, success=1.0, l0=3.0, l0_all=3.0, ssim=0.9,
                             diversity=0.0, forward=1.0, backward=1.0, l2=1.0, tv=3.0, support_jaccard=0.0,
                             **{f"success_l0_{b}": 1.0 for b in L0_BUDGETS}))
    return rows


def test_report_takes_attack():
    rows = _rows()
    assert report.cost_ratio(rows, attack="other", n_boot=50) == pytest.approx((2.0, 2.0, 2.0))
    with _deprecated("attack"):
        assert report.cost_ratio(rows, method="other", n_boot=50) == report.cost_ratio(rows, "other", 50)
    with _deprecated("attack"):
        old = report.calibration(rows, method="other")
    assert np.array_equal(old["pred"], report.calibration(rows, attack="other")["pred"])
    with _deprecated("attacks"):
        table = report.method_table(rows, methods=["other"], n_boot=50)
    assert [t["method"] for t in table] == ["other"]


# --------------------------------------------------------------------------------------------- magic numbers


def test_success_within_l0_names_the_budget(tiny):
    model, images, labels = tiny
    res = gaussian_attack(model, images, labels, steps=3, mean_steps=2, support_steps=2)
    m = image_metrics(model, res, labels, n_samples=3, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(m.success_within_l0(20), m.success_l0[:, L0_BUDGETS.index(20)])
    assert m.rows()[0]["success_l0_20"] == m.success_within_l0(20)[0]
    with pytest.raises(ValueError, match="l0_budgets"):
        m.success_within_l0(21)


def test_the_warnings_point_at_the_caller(tiny, small_net):
    model, images, labels = tiny
    res = gaussian_attack(model, images, labels, steps=3, mean_steps=2, support_steps=2)
    calls = [
        lambda: two_stage_linearize(small_net, torch.rand(1, 6, 6, dtype=torch.float64), method="auto"),
        lambda: image_metrics(model, res, labels, n_draws=2),
        lambda: surrogate_check(model, res, labels, n_draws=2),
        lambda: AttackOptions(variance="none"),
        lambda: gaussian_attack(model, images, labels, variance="none", steps=2, mean_steps=1, support_steps=1),
        lambda: AttackResult(res.clean, res.labels, None, res.delta_param, res.noise_var, 0.0, "sparse", method="x"),
        lambda: report.cost_ratio(_rows(), method="other", n_boot=10),
    ]
    for call in calls:
        with pytest.warns(DeprecationWarning) as record:
            call()
        assert {w.filename for w in record if w.category is DeprecationWarning} == {__file__}
