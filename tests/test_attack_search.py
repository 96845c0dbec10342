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
    assert torch.equal(w0, torch.full_like(w0, 0.3))


def test_l0_search_keeps_the_last_point_where_nothing_fools(digits):
    model, images, labels = digits
    # two steps of length 1e-3 cannot fool LeNet: the search returns its last iterate, finite and in the box
    v, _, _, clean = _search(model, images, labels, support_search="l0", mean_steps=2, search_step=1e-3,
                             search_radius=3.0)
    assert torch.isfinite(v).all() and int((v != 0).sum(1).max()) <= 4
    with torch.no_grad():
        assert bool((margin(model((clean + v).view_as(images)), labels) > 0).all())


def test_fmn_search_is_foolbox_fmn_point_and_counts_its_passes(digits):
    model, images, labels = digits
    v, _, cost, clean = _search(model, images, labels, support_search="fmn", mean_steps=20, search_step=3.0,
                                search_gamma=0.05)
    reference = fmn_attack(model, images, labels, norm="l0", steps=20, max_stepsize=3.0, gamma=0.05)
    ref = reference.delta_param
    assert torch.allclose(v, torch.where(ref.abs() > 1e-12, ref, torch.zeros_like(ref)), atol=1e-6)
    assert float(cost.forward[0]) == pytest.approx(reference.options["forward_passes"])
    assert float(cost.backward[0]) == pytest.approx(reference.options["backward_passes"])


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
