"""The support solver's phase 1 (netmoments.attacks.search): the L1, L0 and FMN warm-start searches."""
import pytest
import torch

from netmoments.attacks import AttackOptions, fmn_attack, gaussian_attack
from netmoments.attacks.common import margin
from netmoments.attacks.search import find_support
from netmoments.attacks.sources import SolverCost

QUICK = dict(support_steps=4, final_draws=4, tighten_rounds=0)


@pytest.fixture(scope="module")
def digits():
    from netmoments.experiments.attack_suite import load_digits

    torch.set_num_threads(1)
    model, images, labels, _ = load_digits("train", 8)
    return model, images, labels


def _search(model, images, labels, **options):
    opts = AttackOptions(**options)
    clean = images.flatten(1)
    cost = SolverCost.zeros(clean.shape[0], clean.dtype, clean.device)
    v, l1_weight = find_support(model, clean, tuple(images.shape[1:]), labels, None, opts, cost)
    return v, l1_weight, cost, clean


@pytest.mark.parametrize("bad, message", [
    (dict(support_search="l2"), "support_search must be one of"),
    (dict(search_gamma=1.0), "search_gamma"),
    (dict(search_gamma=-0.1), "search_gamma"),
    (dict(search_step=0.0), "search_step"),
    (dict(search_radius=-3.0), "search_radius"),
])
def test_bad_search_options_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        AttackOptions(**bad)


def test_l0_search_returns_fooling_points_in_the_box_with_fewer_pixels_than_l1(digits):
    model, images, labels = digits
    v0, w0, cost, clean = _search(model, images, labels, support_search="l0", mean_steps=40)
    assert torch.isfinite(v0).all()
    assert bool(((v0 >= -clean - 1e-12) & (v0 <= 1 - clean + 1e-12)).all())
    with torch.no_grad():
        m = margin(model((clean + v0).view_as(images)), labels)
    assert bool((m < 0).all()), m  # every training digit here is fooled; the kept point is a fooling one
    assert torch.equal(cost.forward, torch.full_like(cost.forward, 41.0)) and torch.equal(cost.backward, cost.forward)
    v1, *_ = _search(model, images, labels, support_search="l1", mean_steps=40)
    l0_pixels, l1_pixels = (v0 != 0).sum(1), (v1 != 0).sum(1)
    # the measured reason for the L0 search: hard thresholding needs far fewer pixels than the L1 price
    assert int(l0_pixels.sum()) < 0.7 * int(l1_pixels.sum()), (l0_pixels, l1_pixels)
    assert torch.equal(w0, torch.zeros_like(w0))  # the L0 search keeps no L1 price on its support (its default)


def test_l0_search_keeps_the_last_point_where_nothing_fools(digits):
    model, images, labels = digits
    # two steps of length 1e-3 cannot fool LeNet: the search returns its last iterate, finite and in the box
    v, _, _, clean = _search(model, images, labels, support_search="l0", mean_steps=2, search_step=1e-3,
                             search_radius=3.0)
    assert torch.isfinite(v).all() and int((v != 0).sum(1).max()) <= 4
    with torch.no_grad():
        assert bool((margin(model((clean + v).view_as(images)), labels) > 0).all())


def _fmn_reference(model, images, labels, steps):
    """Foolbox L0-FMN's own delta (tiny values zeroed), which digits it fools, and its passes per digit."""
    ref = fmn_attack(model, images, labels, norm="l0", steps=steps, max_stepsize=3.0, gamma=0.05)
    delta = torch.where(ref.delta_param.abs() > 1e-12, ref.delta_param, torch.zeros_like(ref.delta_param))
    with torch.no_grad():
        fooled = margin(model((images.flatten(1) + delta).clamp(0, 1).view_as(images)), labels) < 0
    return delta, fooled, ref.options["forward_passes"], ref.options["backward_passes"]


def test_fmn_search_is_foolbox_fmn_point_and_counts_its_passes(digits):
    model, images, labels = digits
    v, _, cost, clean = _search(model, images, labels, support_search="fmn", mean_steps=100, search_step=3.0,
                                search_gamma=0.05)
    delta, fooled, forward, backward = _fmn_reference(model, images, labels, 100)
    assert bool(fooled.all())  # 100 steps fool these digits: the search is Foolbox's point, plus one check
    assert torch.allclose(v, delta, atol=1e-6)
    assert torch.allclose(cost.forward, torch.full_like(cost.forward, forward + 1))
    assert torch.allclose(cost.backward, torch.full_like(cost.backward, backward))


def test_fmn_search_falls_back_to_the_l0_search_where_foolbox_fails(digits):
    model, images, labels = digits
    steps = 4
    delta, fooled, forward, backward = _fmn_reference(model, images, labels, steps)
    assert not bool(fooled.all()), "four FMN steps should leave some digit unfooled"
    v, _, cost, clean = _search(model, images, labels, support_search="fmn", mean_steps=steps, search_step=3.0,
                                search_gamma=0.05)
    assert torch.allclose(v[fooled], delta[fooled], atol=1e-6)
    failed = ~fooled
    # an unfooled digit is no support: those digits get the L0 search (its steps + 1 more passes, counted)
    assert not torch.allclose(v[failed], delta[failed], atol=1e-6)
    assert bool(((v[failed] != 0).sum(1) > 0).all())
    assert torch.allclose(cost.forward[failed], torch.full_like(cost.forward[failed], forward + 1 + steps + 1))
    assert torch.allclose(cost.backward[failed], torch.full_like(cost.backward[failed], backward + steps + 1))
    assert torch.allclose(cost.forward[fooled], torch.full_like(cost.forward[fooled], forward + 1))


@pytest.mark.parametrize("search", ["l0", "fmn"])
def test_the_distribution_stays_on_the_searched_support(digits, search):
    model, images, labels = digits
    res = gaussian_attack(model, images[:4], labels[:4], support_search=search, mean_steps=20, **QUICK)
    searched, *_ = _search(model, images[:4], labels[:4], support_search=search, mean_steps=20)
    touched = (res.delta_param != 0) | (res.noise_var > 0)
    # phase 2 may drop pixels (its L1 price) but never adds one outside the search's support
    assert not bool((touched & (searched == 0)).any())
    assert res.options["support_search"] == search
    assert res.options["support_size"] == (searched != 0).sum(1).tolist()


def test_tuning_command_lines_refuse_to_overwrite_and_record_the_command(tmp_path):
    from netmoments.experiments import attack_search_tuning, attack_smooth_tuning
    from netmoments.experiments.sittings import tuning_main

    calls = []

    def tune(out, images, progress, command):
        calls.append((out, images, progress, command))

    out = tmp_path / "tuning.json"
    assert tuning_main(["--out", str(out), "--no-progress"], "pkg.mod", "doc", tune, 96) == 0
    assert calls == [(str(out), 96, False, f"python -m pkg.mod --out {out} --no-progress")]
    out.write_text("{}")
    for module in (attack_search_tuning, attack_smooth_tuning):  # never overwrite a committed tuning
        with pytest.raises(SystemExit, match="exists; remove it first"):
            module.main(["--out", str(out)])
    with pytest.raises(SystemExit, match="--images must be positive"):
        tuning_main(["--out", str(tmp_path / "new.json"), "--images", "0"], "pkg.mod", "doc", tune, 96)
    assert len(calls) == 1


def _linear_classifier(n, seed):
    """A 2-class linear classifier on ``(1, 4, 4)`` images, the images it reads as class 0 and, per image, the
    fewest pixels whose move to a box end flips it: with margin ``w . x + b``, moving pixel ``i`` to its best end
    lowers the margin by ``w_i x_i`` (to 0, ``w_i > 0``) or ``|w_i| (1 - x_i)`` (to 1), so the smallest support
    takes the largest of those gains until they exceed the margin."""
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    x = torch.rand(4, n, generator=gen, dtype=torch.float64)
    gains = torch.where(w > 0, w * x, -w * (1 - x))
    margins = 0.35 * gains.sum(1)  # a margin that takes several pixels to overcome
    model = nn.Sequential(nn.Flatten(), nn.Linear(n, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, torch.zeros_like(w)]))
        model[1].bias.zero_()
    # one bias per image is not possible, so shift each image's margin through a pixel-independent offset: the
    # images differ, the bias is shared; choose it for the first image and recompute the rest
    bias = float(margins[0] - (x[0] * w).sum())
    with torch.no_grad():
        model[1].bias[0] = bias
    margin0 = (x * w).sum(1) + bias
    for p in model.parameters():
        p.requires_grad_(False)
    cumulative = gains.sort(1, descending=True).values.cumsum(1)
    fewest = (cumulative <= margin0[:, None]).sum(1) + 1
    return model, x.view(4, 1, 4, 4), margin0, fewest


def test_l0_search_finds_the_smallest_support_of_a_linear_classifier():
    model, images, margin0, fewest = _linear_classifier(16, seed=3)
    keep = margin0 > 0  # images the classifier reads as class 0
    images, fewest = images[keep], fewest[keep]
    labels = torch.zeros(len(images), dtype=torch.int64)
    v, _, _, clean = _search(model, images, labels, support_search="l0", mean_steps=100, search_radius=16.0)
    with torch.no_grad():
        fooled = margin(model((clean + v).view_as(images)), labels) < 0
    assert bool(fooled.all())
    count = (v != 0).sum(1)
    # never fewer pixels than the optimum (that would be a wrong "fooled"), and at most one more
    assert bool((count >= fewest).all()) and bool((count <= fewest + 1).all()), (count, fewest)
