"""Tests of netmoments.attacks: the Gaussian attack, its helpers, the point baselines and the MC evaluation."""
import copy
import itertools
import math

import pytest
import torch

from netmoments import AffineReLUAffine
from netmoments.attacks import (
    AttackResult,
    LinearizedAttackObjective,
    evaluate_attack,
    gaussian_attack,
    pgd_attack,
    smooth_pgd_attack,
    sparse_pgd_attack,
)
from netmoments.attacks._ops import (
    blur,
    clipped_gaussian_moments,
    project_l0_box,
    project_l1_box,
    total_variation,
    wilson_interval,
)


@pytest.fixture(scope="module")
def mnist():
    from netmoments.data import load_mnist

    images, labels = load_mnist("test")
    return images, labels


@pytest.fixture(scope="module")
def mlp():
    from netmoments.models import load_mlp

    model = load_mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def lenet():
    from netmoments.models import load_lenet

    model = load_lenet()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _correct(model, images, labels, count):
    with torch.no_grad():
        ok = model(images).argmax(-1) == labels
    idx = ok.nonzero().flatten()[:count]
    return images[idx], labels[idx]


def _random_net(gen, batch=2, n=16, m=12, p=4, dtype=torch.float64):
    A = torch.randn(batch, m, n, generator=gen, dtype=dtype)
    c1 = torch.randn(batch, m, generator=gen, dtype=dtype)
    B = torch.randn(batch, p, m, generator=gen, dtype=dtype)
    c2 = torch.randn(batch, p, generator=gen, dtype=dtype)
    return AffineReLUAffine(A, c1, B, c2)


# ----------------------------------------------------------------------------------------------- helpers


def test_clipped_gaussian_moments_match_monte_carlo(gen):
    mu = torch.tensor([0.0, 0.5, 1.0, -0.3, 1.2, 0.05, 0.3], dtype=torch.float64)
    var = torch.tensor([0.04, 0.01, 0.09, 0.04, 0.01, 0.25, 0.0], dtype=torch.float64)
    mean, v = clipped_gaussian_moments(mu, var)
    n = 400_000
    draws = (mu[:, None] + var.sqrt()[:, None] * torch.randn(7, n, generator=gen, dtype=torch.float64)).clamp(0, 1)
    z = 4.0  # Bonferroni over 14 comparisons at ~1e-4 overall
    mc_mean, mc_var = draws.mean(1), draws.var(1)
    se_mean = draws.std(1) / math.sqrt(n)
    centred = (draws - mc_mean[:, None]) ** 2
    se_var = centred.std(1) / math.sqrt(n)
    assert ((mean - mc_mean).abs() <= z * se_mean + 1e-15).all()
    assert ((v - mc_var).abs() <= z * se_var + 1e-15).all()
    # zero variance is the exact limit, with the one-sided derivative dVar/dvar = 1 inside the box
    var0 = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    m0, v0 = clipped_gaussian_moments(torch.tensor([0.3, 1.4], dtype=torch.float64), var0)
    assert m0.tolist() == [0.3, 1.0] and v0.tolist() == [0.0, 0.0]
    (grad,) = torch.autograd.grad(v0.sum(), var0)
    assert torch.isfinite(grad).all() and abs(grad[0].item() - 1.0) < 1e-6 and grad[1].item() == 0.0


def test_project_l0_box_is_the_best_k_subset(gen):
    z = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    low = -torch.rand(3, 6, generator=gen, dtype=torch.float64)
    high = torch.rand(3, 6, generator=gen, dtype=torch.float64)
    k = torch.tensor([1, 2, 4])
    d = project_l0_box(z, k, low, high)
    for b in range(3):
        best = math.inf
        for support in itertools.combinations(range(6), int(k[b])):
            cand = torch.zeros(6, dtype=torch.float64)
            idx = list(support)
            cand[idx] = z[b, idx].clamp(low[b, idx], high[b, idx])
            best = min(best, float(((cand - z[b]) ** 2).sum()))
        assert abs(float(((d[b] - z[b]) ** 2).sum()) - best) < 1e-12
        assert int((d[b] != 0).sum()) <= int(k[b])


def test_project_l1_box_is_feasible_and_optimal(gen):
    z = 2 * torch.randn(4, 10, generator=gen, dtype=torch.float64)
    low = -torch.rand(4, 10, generator=gen, dtype=torch.float64)
    high = torch.rand(4, 10, generator=gen, dtype=torch.float64)
    radius = torch.tensor([0.5, 1.0, 3.0, 100.0], dtype=torch.float64)
    d = project_l1_box(z, radius, low, high, iters=80)
    assert (d.abs().sum(1) <= radius + 1e-9).all()
    assert ((d >= low - 1e-15) & (d <= high + 1e-15)).all()
    # no feasible point nearby is closer to z (random feasible perturbations of the answer)
    dist = ((d - z) ** 2).sum(1)
    for _ in range(200):
        cand = d + 0.05 * torch.randn(4, 10, generator=gen, dtype=torch.float64)
        cand = torch.minimum(torch.maximum(cand, low), high)
        scale = (radius / cand.abs().sum(1)).clamp(max=1.0)
        cand = cand * scale[:, None]
        assert (((cand - z) ** 2).sum(1) >= dist - 1e-9).all()


def test_blur_is_symmetric_and_total_variation():
    shape = (1, 5, 5)
    eye = torch.eye(25, dtype=torch.float64)
    G = blur(eye, shape, 1.0)  # rows are G e_i = columns of G
    assert torch.allclose(G, G.T, atol=1e-15)
    assert torch.equal(blur(eye, shape, 0.0), eye)
    img = torch.zeros(1, 25, dtype=torch.float64)
    img[0, 12] = 1.0  # one bright pixel in the middle: 4 unit jumps
    assert total_variation(img, shape).item() == 4.0


def test_wilson_interval_reference_value():
    lo, hi = wilson_interval(8, 10, 1.96)
    assert abs(lo - 0.4902) < 1e-4 and abs(hi - 0.9433) < 1e-4


# ----------------------------------------------------------------------------------------------- objective


def test_linear_covariance_is_exact_when_every_unit_is_active(gen):
    net = _random_net(gen)
    net.c1.add_(100.0)  # every pre-activation positive with probability 1: g is affine
    clean = torch.rand(2, 16, generator=gen, dtype=torch.float64) * 0.5 + 0.25
    w = torch.rand(2, 16, generator=gen, dtype=torch.float64) * 1e-3
    v = torch.zeros_like(w)
    obj = LinearizedAttackObjective(net, clean, torch.tensor([0, 1]), False, (1, 4, 4), method="linear",
                                    clip_aware=False)
    mean, cov = obj.output_moments(v, w)
    exact_mean, exact_cov = net.moments(clean, torch.diag_embed(w), method="exact")
    assert torch.allclose(mean, exact_mean, atol=1e-10)
    assert torch.allclose(cov, exact_cov, atol=1e-10)


@pytest.mark.parametrize("variance", ["none", "linear", "exact"])
@pytest.mark.parametrize("blur_sigma", [0.0, 1.0])
def test_gradients_flow_to_mean_and_noise(gen, variance, blur_sigma):
    net = _random_net(gen)
    clean = torch.rand(2, 16, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    v = (0.05 * torch.randn(2, 16, generator=gen, dtype=torch.float64)).requires_grad_(True)
    s = (0.1 * torch.rand(2, 16, generator=gen, dtype=torch.float64) + 0.05).requires_grad_(True)
    obj = LinearizedAttackObjective(net, clean, torch.tensor([0, 2]), False, (1, 4, 4), blur_sigma=blur_sigma,
                                    method=variance, goal=0.999, kappa=100.0)
    loss, r = obj(v, s * s)
    assert (loss > 0).all()
    gv, gs = torch.autograd.grad(loss.sum(), [v, s])
    for g in (gv, gs):
        assert torch.isfinite(g).all() and (g.abs().sum(1) > 0).all()


def test_gradients_flow_through_real_lenet_linearization(lenet, mnist):
    from netmoments.linearize import two_stage_linearize

    images, labels = _correct(lenet, *mnist, 1)
    net = two_stage_linearize(lenet, images)
    v = torch.zeros(1, 784, requires_grad=True)
    s = torch.full((1, 784), 0.05, requires_grad=True)
    obj = LinearizedAttackObjective(net, images.flatten(1), labels, False, (1, 28, 28))
    loss, _ = obj(v, s * s)
    gv, gs = torch.autograd.grad(loss.sum(), [v, s])
    assert torch.isfinite(gv).all() and torch.isfinite(gs).all()
    assert gv.abs().sum() > 0 and gs.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- the attack


def test_targeted_sparse_attack_reaches_target_on_real_lenet(lenet, mnist):
    images, labels = _correct(lenet, *mnist, 3)
    target = (labels + 3) % 10
    res = gaussian_attack(lenet, images, labels, target=target, structure="sparse", steps=60, relinearize_every=20)
    ev = evaluate_attack(lenet, res, labels, target=target, n_samples=200)
    # judged by sampling the REAL network: the pooled rate's 95% lower bound must clear 80 %
    assert ev.success_ci[0] > 0.8, ev.summary()
    assert ev.clean_accuracy == 1.0
    assert (ev.pixels_touched < 250).all()  # sparse: a small fraction of the 784 pixels
    assert not res.is_point  # a genuine distribution: some noise survives


def test_untargeted_smooth_attack_on_mlp(mlp, mnist):
    images, labels = _correct(mlp, *mnist, 3)
    res = gaussian_attack(mlp, images, labels, structure="smooth", steps=30, relinearize_every=15)
    ev = evaluate_attack(mlp, res, labels, n_samples=200)
    assert ev.success_ci[0] > 0.8, ev.summary()
    ref = evaluate_attack(mlp, res, labels, n_samples=200)
    assert ref.success_rate == ev.success_rate  # the default generator is seeded


def test_batched_equals_per_item(mlp, mnist):
    images, labels = _correct(mlp, *mnist, 3)
    images = images.double()
    model = copy.deepcopy(mlp).double()
    kw = dict(structure="sparse+smooth", steps=8, relinearize_every=4, seed=3)
    batched = gaussian_attack(model, images, labels, **kw)
    for i in range(3):
        single = gaussian_attack(model, images[i : i + 1], labels[i : i + 1], **kw)
        assert torch.allclose(single.delta_param[0], batched.delta_param[i], atol=1e-9)
        assert torch.allclose(single.noise_var[0], batched.noise_var[i], atol=1e-9)
        assert torch.allclose(single.mean[0], batched.mean[i], atol=1e-9)
    again = gaussian_attack(model, images, labels, **kw)
    assert torch.equal(again.delta_param, batched.delta_param)


def test_sample_shape_range_and_statistics(gen):
    clean = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    w = torch.zeros(2, 16, dtype=torch.float64)
    w[0, 3] = 0.01
    w[1, 7] = 0.04
    res = AttackResult(clean=clean, labels=torch.tensor([0, 1]), target=None, delta_param=torch.zeros(2, 16,
                       dtype=torch.float64), noise_var=w, blur_sigma=0.0, structure="sparse")
    draws = res.sample(20_000, generator=gen)
    assert draws.shape == (20_000, 2, 1, 4, 4)
    assert draws.min() >= 0 and draws.max() <= 1
    flat = draws.flatten(2)
    sd = flat[:, 0, 3].std().item()
    # sample std within 5 standard errors (SE of a std ~ sigma / sqrt(2N))
    assert abs(sd - 0.1) < 5 * 0.1 / math.sqrt(2 * 20_000)
    assert (flat[:, 0, 4] == 0.5).all()  # untouched pixels never move
    assert torch.allclose(res.covariance()[1].diagonal(), w[1])
    with pytest.raises(ValueError, match="n must be"):
        res.sample(0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(structure="blurry"), ValueError, "structure"),
        (dict(variables="weights"), ValueError, "variables"),
        (dict(method="exactish"), ValueError, "method"),
        (dict(steps=0), ValueError, "steps"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(goal=1.0), ValueError, "goal"),
        (dict(stepz=10), TypeError, "unknown option"),
        (dict(target=3), ValueError, "target equals the true label"),
        (dict(target=10), ValueError, "target must lie in"),
        (dict(target=1.5), TypeError, "target"),
        (dict(structure="smooth", blur_sigma=0.0), ValueError, "blur_sigma"),
        (dict(structure="smooth", l1_budget=3.0), ValueError, "l1_budget"),
        (dict(init_noise=0.5, noise_scale=0.3), ValueError, "init_noise"),
    ],
)
def test_bad_options_raise_clear_errors(mlp, kwargs, error, match):
    images = torch.rand(2, 1, 28, 28)
    labels = torch.tensor([3, 5])
    if kwargs.get("target") == 3:
        labels = torch.tensor([3, 3])
    with pytest.raises(error, match=match):
        gaussian_attack(mlp, images, labels, **kwargs)


@pytest.mark.parametrize(
    "images, labels, error, match",
    [
        (torch.rand(2, 784), torch.tensor([1, 2]), ValueError, "images must have shape"),
        (torch.rand(2, 1, 28, 28) + 1.0, torch.tensor([1, 2]), ValueError, "pixel box"),
        (torch.rand(2, 1, 28, 28), torch.tensor([1, 2, 3]), ValueError, r"labels must have shape \(2,\)"),
        (torch.rand(2, 1, 28, 28), torch.tensor([1, 12]), ValueError, "labels must lie in"),
        (torch.rand(2, 1, 28, 28), torch.tensor([1.0, 2.0]), TypeError, "labels must be an integer tensor"),
        (torch.randint(0, 2, (2, 1, 28, 28)), torch.tensor([1, 2]), TypeError, "floating"),
    ],
)
def test_bad_inputs_raise_clear_errors(mlp, images, labels, error, match):
    with pytest.raises(error, match=match):
        gaussian_attack(mlp, images, labels)


# ----------------------------------------------------------------------------------------------- baselines


def test_baselines_respect_their_budgets(mlp, mnist):
    images, labels = _correct(mlp, *mnist, 4)
    k = torch.tensor([5, 10, 15, 20])
    sparse = sparse_pgd_attack(mlp, images, labels, k=k, steps=20)
    touched = (sparse.delta.flatten(1) != 0).sum(1)
    assert (touched <= k).all()
    linf = pgd_attack(mlp, images, labels, eps=0.1, steps=20)
    assert linf.delta.abs().max() <= 0.1 + 1e-6
    l2 = pgd_attack(mlp, images, labels, norm="l2", eps=1.5, steps=20)
    assert (l2.delta.flatten(1).norm(dim=1) <= 1.5 + 1e-5).all()
    smooth = smooth_pgd_attack(mlp, images, labels, eps=2.0, steps=20)
    assert (smooth.delta.flatten(1).norm(dim=1) <= 2.0 + 1e-5).all()
    for res in (sparse, linf, l2, smooth):
        assert res.is_point and res.mean.min() >= 0 and res.mean.max() <= 1
        ev = evaluate_attack(mlp, res, labels)
        assert ev.n_samples == 1 and 0.0 <= ev.success_rate <= 1.0
    with pytest.raises(ValueError, match="norm"):
        pgd_attack(mlp, images, labels, norm="l3")
    with pytest.raises(ValueError, match="k must be"):
        sparse_pgd_attack(mlp, images, labels, k=torch.tensor([1, 2]))


def test_linf_pgd_fools_the_mlp_and_evaluation_agrees(mlp, mnist):
    images, labels = _correct(mlp, *mnist, 6)
    res = pgd_attack(mlp, images, labels, eps=0.3, steps=40)
    ev = evaluate_attack(mlp, res, labels)
    with torch.no_grad():
        fooled = (mlp(res.mean).argmax(-1) != labels).double()
    assert ev.success_rate == fooled.mean().item()
    assert ev.success_rate >= 5 / 6


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_attack_writes_csv_json_npz(tmp_path, capsys):
    import json

    import numpy as np

    from netmoments.experiments.__main__ import main

    stem = tmp_path / "run"
    code = main(["attack", "--images", "2", "--steps", "2", "--samples", "10", "--target", "random",
                 "--no-progress", "--out", str(stem)])
    assert code == 0
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["structure"] == "sparse" and 0.0 <= summary["evaluation"]["success_rate"] <= 1.0
    rows = (tmp_path / "run.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("image,label,target")
    with np.load(tmp_path / "run.npz") as data:
        assert data["mean"].shape == (2, 1, 28, 28) and (data["target"] != data["labels"]).all()
    # the parser refuses a bad target before anything runs: exit 2 with an error line naming the option
    with pytest.raises(SystemExit) as stop:
        main(["attack", "--images", "1", "--steps", "1", "--target", "eleven", "--no-progress",
              "--out", str(stem), "--force"])
    assert stop.value.code == 2
    assert "--target" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- bad input


def test_devices_must_agree(mlp):
    images = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="labels is on device meta"):
        gaussian_attack(mlp, images, torch.tensor([1, 2], device="meta"))
    with pytest.raises(ValueError, match="images are on the meta device"):
        gaussian_attack(mlp, images.to("meta"), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="model's parameters are on meta"):
        gaussian_attack(copy.deepcopy(mlp).to("meta"), images, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="model's parameters are on meta"):
        sparse_pgd_attack(copy.deepcopy(mlp).to("meta"), images, torch.tensor([1, 2]), k=3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, x, y: pgd_attack(m, x, y, eps=0.0), "eps must be"),
        (lambda m, x, y: pgd_attack(m, x, y, eps=-1.0), "eps must be"),
        (lambda m, x, y: pgd_attack(m, x, y, eps=0.1, step_size=0.0), "step_size must be"),
        (lambda m, x, y: pgd_attack(m, x, y, eps=0.1, kappa=-1.0), "kappa must be"),
        (lambda m, x, y: smooth_pgd_attack(m, x, y, eps=float("nan")), "eps must be"),
        (lambda m, x, y: smooth_pgd_attack(m, x, y, blur_sigma=0.0), "blur_sigma must be"),
        (lambda m, x, y: sparse_pgd_attack(m, x, y, k=0), "k must be"),
        (lambda m, x, y: sparse_pgd_attack(m, x, y, k=3, step_size=-0.1), "step_size must be"),
        (lambda m, x, y: sparse_pgd_attack(m, x, y, k=3, target=y), "target equals the true label"),
        (lambda m, x, y: sparse_pgd_attack(m, x[:, 0], y, k=3), "images must have shape"),
        (lambda m, x, y: gaussian_attack(m, x, y, l1_budget=0.0), "l1_budget must be"),
        (lambda m, x, y: gaussian_attack(m, x, y, structure="smooth", l2_budget=-2.0), "l2_budget must be"),
        (lambda m, x, y: gaussian_attack(m, x, y, noise_scale=0.0), "noise_scale must be"),
        (lambda m, x, y: gaussian_attack(m, x, y, budget=3), "unknown option"),
    ],
)
def test_budgets_and_options_are_checked(mlp, call, match):
    images = torch.rand(2, 1, 28, 28)
    labels = torch.tensor([1, 2])
    with pytest.raises((ValueError, TypeError), match=match):
        call(mlp, images, labels)


# ----------------------------------------------------------------------------------------------- support solver


def test_support_linearization_matches_the_dense_two_stage_linearization(lenet, mnist):
    from netmoments.attacks.support import SupportLinearization
    from netmoments.linearize import two_stage_linearize

    model = copy.deepcopy(lenet).double()
    images = mnist[0][:3].double()
    support = torch.tensor([[100, 200, 300, 300], [5, 406, 407, 5], [700, 701, 702, 703]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, False], [True] * 4])
    lin = SupportLinearization(model, images, support, valid)
    dense = two_stage_linearize(model, images)
    for b in range(3):
        for j in range(4):
            expected = dense.A[b][:, support[b, j]] if valid[b, j] else torch.zeros(dense.A.shape[1], dtype=torch.float64)
            assert torch.allclose(lin.A_S[b, :, j], expected, rtol=0, atol=1e-12)
    assert torch.allclose(lin.B, dense.B) and torch.allclose(lin.c2, dense.c2)
    assert not lin.region_changed(images).any()
    # at the linearization point the surrogate on the support inputs is the real network
    assert torch.allclose(lin.network()(images.flatten(1).gather(1, support) * valid), model(images),
                          atol=1e-9)
    # the masked linear passes run on the padded support: every image pays for the widest one (4 columns)
    assert lin.jvp_passes.tolist() == [4.0, 4.0, 4.0]


def test_support_solver_fools_lenet_and_counts_its_cost(lenet, mnist):
    images, labels = _correct(lenet, *mnist, 4)
    res = gaussian_attack(lenet, images, labels, mean_steps=40, steps=30)
    assert res.options["solver"] == "support"
    assert res.options["forward_passes"] >= 40 and res.options["backward_passes"] == 40
    assert res.options["jvp_passes"] >= 1
    # noise lives only on the pixels the mean shift moved
    assert ((res.noise_var > 0) <= (res.delta_param != 0)).all()
    ev = evaluate_attack(lenet, res, labels, n_samples=200)
    assert ev.image_success_rate >= 0.75
    with pytest.raises(ValueError, match="solver"):
        gaussian_attack(lenet, images, labels, solver="fast")
    with pytest.raises(ValueError, match="solver='support' needs blur_sigma"):
        gaussian_attack(lenet, images, labels, structure="smooth", solver="support")


# ----------------------------------------------------------------------------------------------- tuned baselines


def test_tuned_baselines_respect_budgets_and_count_passes(mlp, mnist):
    from netmoments.attacks import eot_attack, fmn_attack, l0_pgd_attack, tune_step_size

    images, labels = _correct(mlp, *mnist, 4)
    k = torch.tensor([3, 6, 9, 12])
    res = l0_pgd_attack(mlp, images, labels, k=k, steps=10, restarts=2)
    assert ((res.delta.flatten(1).abs() > 0).sum(1) <= k).all()
    assert res.options["forward_passes"] >= 2 * 10 and res.options["backward_passes"] == 2 * 10
    eps = torch.tensor([0.5, 1.0, 1.5, 2.0])
    smooth = smooth_pgd_attack(mlp, images, labels, eps=eps, steps=10)
    assert (smooth.delta.flatten(1).norm(dim=1) <= eps + 1e-5).all()
    # a per-image step: the default is 2.5 eps / steps (the factor attack_smooth_tuning tunes), and steps differ
    from netmoments.experiments.attack_smooth_tuning import DEFAULT_FACTOR

    same = smooth_pgd_attack(mlp, images, labels, eps=eps, steps=10, step_size=DEFAULT_FACTOR * eps / 10)
    assert torch.equal(same.delta, smooth.delta)
    other = smooth_pgd_attack(mlp, images, labels, eps=eps, steps=10, step_size=0.1 * eps / 10)
    assert not torch.equal(other.delta, smooth.delta)
    with pytest.raises(ValueError, match="step_size must be finite and > 0 for every image"):
        smooth_pgd_attack(mlp, images, labels, eps=eps, step_size=torch.tensor([0.1, -0.1, 0.1, 0.1]))
    best, scores = tune_step_size(sparse_pgd_attack, mlp, images, labels, (0.1, 0.3), k=5, steps=5)
    assert best in scores and set(scores) == {0.1, 0.3}
    eot = eot_attack(mlp, images, labels, steps=6, n_samples=3)
    assert ((eot.noise_var > 0) <= (eot.delta_param != 0)).all() and eot.noise_var.max() <= 0.3**2 + 1e-7
    assert eot.options["forward_passes"] == 18 and eot.options["backward_passes"] == 18
    fmn = fmn_attack(mlp, images, labels, norm="l1", steps=10)
    assert fmn.is_point and fmn.options["forward_passes"] > 0 and fmn.mean.min() >= 0
    with pytest.raises(ValueError, match="norm must be"):
        fmn_attack(mlp, images, labels, norm="l2")
    with pytest.raises(ValueError, match="samples must be"):
        eot_attack(mlp, images, labels, n_samples=0)
    with pytest.raises(ValueError, match="eps must be finite and > 0 for every image"):
        smooth_pgd_attack(mlp, images, labels, eps=torch.tensor([1.0, 0.0, 1.0, 1.0]))
