"""The 10⁴-draw truth at the ablation's final distributions (book/data/attack_ablation_truth.*).

The statistics are checked against a direct computation on the same draws; the committed file is checked for
completeness and provenance, for pairing with the ablation run (the same final distributions, so the same
surrogate numbers), and its first chunk is recomputed with fewer draws.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "book" / "data"
TRUTH = DATA / "attack_ablation_truth.csv"


@pytest.fixture(scope="module")
def one_attack():
    from netmoments.attacks import gaussian_attack
    from netmoments.attacks.support import final_linearization_point, surrogate_check
    from netmoments.experiments.attack_suite import load_digits

    torch.set_num_threads(1)
    model, x, y, _ = load_digits("test", 2)
    res = gaussian_attack(model, x, y, seed=3)
    kstar = surrogate_check(model, res, y, n_samples=2)["kstar"]
    return model, res, y, kstar, final_linearization_point(res)[0]


def test_nonlinear_states_are_the_activation_pattern(one_attack):
    from netmoments.experiments.attack_truth import nonlinear_states
    from netmoments.linearize import activation_pattern

    model, res, *_ = one_attack
    logits, states = nonlinear_states(model, res.clean)
    assert torch.equal(logits, model(res.clean))
    assert [name for name, _ in states] == ["pool1", "relu1", "pool2", "relu2", "relu3"]
    for (_, mine), theirs in zip(states, activation_pattern(model, res.clean)):
        assert torch.equal(mine, theirs)


def test_margin_statistics_match_a_direct_computation(one_attack):
    from netmoments.experiments.attack_truth import nonlinear_states, real_margin_statistics

    model, res, y, kstar, point = one_attack
    n = 700  # more than one forward batch of draws
    stats = real_margin_statistics(model, res, y, kstar, point, n, torch.Generator().manual_seed(5))
    # the same draws: 500 (one forward batch), then the next 200 from the same generator
    gen = torch.Generator().manual_seed(5)
    draws = torch.cat([res.sample(500, generator=gen), res.sample(200, generator=gen)])
    with torch.no_grad():
        logits = model(draws.flatten(0, 1)).view(n, 2, -1)
    m = (logits.gather(-1, y.view(1, -1, 1).expand(n, -1, 1))
         - logits.gather(-1, kstar.view(1, -1, 1).expand(n, -1, 1))).squeeze(-1).double()
    np.testing.assert_allclose(stats["mean"], m.mean(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(stats["var"], m.var(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(stats["success_any"], (logits.argmax(-1) != y).double().mean(0).numpy())
    # the variance's standard error from the fourth moment is close to a bootstrap over the same draws
    boot = np.array([m[torch.randint(0, n, (n,), generator=torch.Generator().manual_seed(b))].var(0).numpy()
                     for b in range(300)])
    np.testing.assert_allclose(stats["se_var"], boot.std(0), rtol=0.25)
    # flips against the point: recount the first ReLU layer directly
    with torch.no_grad():
        _, ref = nonlinear_states(model, point)
        _, mine = nonlinear_states(model, draws.flatten(0, 1))
    relu1 = (mine[1][1].view(n, *ref[1][1].shape) != ref[1][1]).flatten(2).sum(-1).double().mean(0)
    np.testing.assert_allclose(stats["flips_relu1"], relu1.numpy(), rtol=1e-12)
    on = mine[-1][1].view(n, 2, -1).double().mean(0)
    np.testing.assert_array_equal(stats["kept_switching"], ((on >= 0.01) & (on <= 0.99)).sum(-1).numpy())


def test_no_noise_means_no_flips_and_no_variance(one_attack):
    """A point (zero noise) at the linearization point itself: every draw is the point."""
    import copy

    from netmoments.experiments.attack_truth import real_margin_statistics

    model, res, y, kstar, _ = one_attack
    point_res = copy.copy(res)
    point_res.noise_var = torch.zeros_like(res.noise_var)
    stats = real_margin_statistics(model, point_res, y, kstar, point_res.mean.view_as(res.clean), 8)
    assert np.all(stats["var"] == 0) and np.all(stats["kept_switching"] == 0)
    assert all(np.all(v == 0) for k, v in stats.items() if k.startswith("flips_"))


def test_draw_count_is_checked(one_attack):
    from netmoments.experiments.attack_truth import real_margin_statistics

    model, res, y, kstar, point = one_attack
    with pytest.raises(ValueError, match="n_draws"):
        real_margin_statistics(model, res, y, kstar, point, 2)


def test_truth_suite_needs_the_ablation_chunks(tmp_path):
    from netmoments.experiments.attack_suite import run_suite

    with pytest.raises(ValueError, match="chunk must be 4"):
        run_suite("ablation-truth", tmp_path / "t.csv", images=8, chunk=8)


def _committed():
    if not TRUTH.exists():
        pytest.skip("attack_ablation_truth.csv not committed")
    from netmoments.experiments.runner import read_rows

    return read_rows(TRUTH), json.loads(TRUTH.with_suffix(".json").read_text())


def test_committed_truth_is_complete_and_has_provenance():
    from netmoments.experiments.attack_truth import ABLATION_CHUNK, TRUTH_DRAWS

    rows, meta = _committed()
    assert meta["settings"]["suite"] == "ablation-truth" and meta["settings"]["chunk"] == ABLATION_CHUNK
    assert meta["settings"]["draws"] == TRUTH_DRAWS
    assert all(int(float(r["n_draws"])) == TRUTH_DRAWS for r in rows)
    for sitting in meta["sittings"]:
        assert sitting["git_commit"] and sitting["command"].startswith("python -m netmoments.experiments attack")
    tasks = sorted({json.loads(r["task"])[1] for r in rows})
    assert tasks == list(range(len(tasks))), "the truth covers the first chunks without gaps"
    assert meta["images_done"] == len({r["image"] for r in rows}) >= 200
    for r in rows:
        assert float(r["mc_var"]) > 0 and 0 <= float(r["mc_success_any"]) <= 1
        assert float(r["mc_var_rel_se"]) < 0.05  # 10^4 draws: about sqrt(2 / 10^4) = 1.4 % for a normal margin
        # the exact and series gaps compare like with like only where their competitor class is the linear one's
        assert r["same_kstar_exact"] in (True, "True") and r["same_kstar_series"] in (True, "True"), r["image"]


def test_committed_truth_pairs_with_the_ablation():
    """Same chunks, same seeds: the truth's final distributions are the ablation's (same surrogate numbers)."""
    from netmoments.experiments.runner import read_rows

    rows, _ = _committed()
    ablation = {int(r["image"]): r for r in read_rows(DATA / "attack_ablation.csv")
                if r["method"] == "gauss-var-linear"}
    paired = [r for r in rows if int(r["image"]) in ablation]
    assert len(paired) == len(rows)
    for r in paired:
        a = ablation[int(r["image"])]
        for key in ("sur_var", "sur_mean", "pred_success", "sur_var_exact", "support_size"):
            assert math.isclose(float(r[key]), float(a[key]), rel_tol=1e-5, abs_tol=1e-6), (r["image"], key)


def test_committed_truth_first_chunk_recomputes():
    from netmoments.experiments.attack_suite import ABLATION_CHUNK, SuiteContext, seed_from_key
    from netmoments.experiments.attack_truth import truth_rows

    rows, meta = _committed()
    first = [r for r in rows if json.loads(r["task"])[1] == 0]
    ctx = SuiteContext(meta["settings"]["split"], ABLATION_CHUNK, ABLATION_CHUNK)
    torch.set_num_threads(1)
    x, y, idx = ctx.batch(0)
    fresh = truth_rows(ctx.model, x, y, idx, seed_from_key(0, "ablation", 0) % (2**31), 11, n_draws=400)
    for old, new in zip(first, fresh):
        assert int(old["image"]) == new["image"] and int(old["kstar"]) == new["kstar"]
        assert math.isclose(float(old["sur_var"]), new["sur_var"], rel_tol=1e-5)
        se = math.sqrt(float(old["mc_var"]) / 400)
        assert abs(float(old["mc_mean"]) - new["mc_mean"]) < 5 * se, (old["image"], old["mc_mean"], new["mc_mean"])


def test_gap_floor_is_the_median_of_half_normals():
    from netmoments.experiments.attack_truth import gap_floor

    # the median of |N(0, s^2)| is 0.6745 s
    assert abs(gap_floor(np.full(500, 0.1)) - 0.06745) < 0.002
    assert abs(gap_floor(np.full(200, math.sqrt(2 / 99))) - 0.0959) < 0.004
    with pytest.raises(ValueError, match="rel_se"):
        gap_floor(np.array([0.1, -1.0]))


def test_variance_gap_summary_sees_a_biased_surrogate_and_not_a_perfect_one():
    from netmoments.experiments.attack_truth import variance_gap_summary

    rng = np.random.default_rng(0)
    n, rel_se = 400, 0.014

    def rows(bias):
        mc = rng.uniform(0.5, 3.0, n)
        noisy = mc * (1 + rel_se * rng.standard_normal(n))  # the estimate, around the true variance mc
        sur = mc * (1 + bias)
        return [dict(var_gap_linear=s / v - 1, var_gap_exact=s / v - 1, mc_var_rel_se=rel_se, mean_err_sd=0.0,
                     sur_var_exact=s, sur_var=s, kept_switching=3.0, flips_relu1=1.0) for s, v in zip(sur, noisy)]

    perfect = variance_gap_summary(rows(0.0), n_boot=300)
    biased = variance_gap_summary(rows(0.05), n_boot=300)
    assert perfect["abs_gap_linear"][1] <= perfect["floor"] * 1.15 and perfect["abs_gap_linear"][2] >= perfect["floor"] * 0.85
    assert biased["gap_linear"][1] > 0.04 and biased["abs_gap_linear"][1] > 3 * biased["floor"]
    assert perfect["flips_relu1"][0] == 1.0 and perfect["n"] == n


def test_committed_exact_variance_run_pairs_with_the_ablation():
    """attack_ablation_exact: the exact variance inside the loop, one row per digit on the ablation's first chunks
    and seeds, with its provenance; a digit's clean image and label are the ablation's."""
    from netmoments.experiments.runner import read_rows

    path = DATA / "attack_ablation_exact.csv"
    if not path.exists():
        pytest.skip("attack_ablation_exact.csv not committed")
    rows = read_rows(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["settings"]["suite"] == "ablation-exact" and meta["settings"]["chunk"] == 4
    assert meta["tasks_done"] == meta["n_tasks"] and meta["images_done"] == len(rows) >= 40
    assert all(s["git_commit"] and s["command"] for s in meta["sittings"])
    assert {r["method"] for r in rows} == {"gauss-var-exact"}
    ablation = {int(r["image"]): r for r in read_rows(DATA / "attack_ablation.csv")
                if r["method"] == "gauss-var-linear"}
    for r in rows:
        a = ablation[int(r["image"])]
        assert r["label"] == a["label"] and json.loads(r["task"])[1] == json.loads(a["task"])[1]
        assert 0.0 <= float(r["success"]) <= 1.0
