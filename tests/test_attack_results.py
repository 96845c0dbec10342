"""The committed chapter-8 results (book/data/attack_*.csv) are reproducible: recompute a small slice of each
(the first chunk, the cheapest methods) and check it agrees with the committed rows within sampling error.

Our attack and the point attacks are deterministic given their batch and seeds, so the per-digit metrics should
agree closely; the check allows for Monte Carlo error in the 100 draws per digit (a binomial SE per digit, summed
over the chunk) and for floating-point differences between thread counts (a digit's success may flip when its
margin is within rounding of zero, so one digit per chunk may disagree).
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "book" / "data"
SLICES = {
    "sparse": ("gauss-sparse", "fmn-l0"),
    "targeted": ("gauss-sparse",),
    "ablation": ("gauss-var-none-mean-only",),
    "smooth": ("gauss-smooth",),
    "sparse-search": ("gauss-sparse-l0",),
    "sparse-search-fmn": ("fmn-l0-retuned",),
}


def _committed(suite):
    path = DATA / f"attack_{suite.replace('-', '_')}.csv"
    if not path.exists():
        pytest.skip(f"{path.name} not committed")
    from netmoments.experiments.runner import read_rows

    return read_rows(path), path


@pytest.mark.parametrize("suite", sorted(SLICES))
def test_committed_results_recompute(suite):
    import json

    from netmoments.experiments.attack_suite import SuiteContext, suite_task

    rows, path = _committed(suite)
    meta = json.loads(path.with_suffix(".json").read_text())
    settings = meta["settings"]
    assert meta["images_done"] == len({r["image"] for r in rows}) or not meta["sittings"][-1].get("complete")
    first = [r for r in rows if r["task"] == json.dumps([suite, 0], separators=(",", ":"))]
    if not first:
        pytest.skip(f"chunk 0 of {path.name} is not complete")
    ctx = SuiteContext(settings["split"], settings["chunk"], settings["chunk"])
    torch.set_num_threads(1)
    fresh = suite_task((suite, 0), ctx, only=set(SLICES[suite]))
    for method in SLICES[suite]:
        old = [r for r in first if r["method"] == method]
        new = [r for r in fresh if r["method"] == method]
        assert [(r["image"], r["target"]) for r in old] == [(r["image"], r["target"]) for r in new]
        s_old = np.array([float(r["success"]) for r in old])
        s_new = np.array([float(r["success"]) for r in new])
        draws = np.array([float(r["n_draws"]) for r in old])
        p = np.clip(0.5 * (s_old + s_new), 1e-3, 1 - 1e-3)
        se = math.sqrt(float(np.sum(2 * p * (1 - p) / draws))) / len(p)
        assert abs(s_old.mean() - s_new.mean()) <= 4 * se + 1.0 / len(p), (method, s_old, s_new)
        l0_old = np.array([float(r["l0_all"]) for r in old])
        l0_new = np.array([float(r["l0_all"]) for r in new])
        assert np.mean(l0_old == l0_new) >= 1 - 1.0 / len(p) - 1e-9, (method, l0_old, l0_new)


def test_frozen_settings_are_the_committed_tuning():
    """The suites' frozen baseline settings (attack_suite.TUNED) are the winners recorded on training digits."""
    import json

    from netmoments.experiments.attack_suite import L0_PGD_STEP_GRID, TUNED

    path = DATA / "attack_tuning.json"
    if not path.exists():
        pytest.skip("attack_tuning.json not committed")
    tuning = json.loads(path.read_text())
    assert tuning["split"] == "train" and tuning["git_commit"] and tuning["command"]
    assert set(map(float, tuning["l0_pgd_step_size"])) == set(L0_PGD_STEP_GRID)
    assert TUNED["l0_pgd_step_size"] == tuning["l0_pgd_best"]
    assert TUNED["fmn_l0"] == tuning["fmn_l0_best"] and TUNED["fmn_l1"] == tuning["fmn_l1_best"]
    from netmoments.attacks.gaussian import default_options

    assert default_options("sparse")["l1_weight"] == tuning["l1_weight_best"]


def test_frozen_ablation_settings_are_the_committed_fair_tuning():
    """The ablation's variants (attack_suite.TUNED_FAIR) use the winners recorded on training digits, for every
    variant the tuning scored, and each winner is the best score of its grid."""
    import json

    from netmoments.experiments.attack_fair_tuning import EOT_SAMPLES, L1_GRID, LR_GRID
    from netmoments.experiments.attack_suite import TUNED_FAIR

    path = DATA / "attack_tuning_fair.json"
    if not path.exists():
        pytest.skip("attack_tuning_fair.json not committed")
    tuning = json.loads(path.read_text())
    assert tuning["split"] == "train" and tuning["git_commit"] and tuning["command"]
    assert set(tuning["best"]) == {"mean-only", "ours", *(f"eot-solver-n{n}" for n in EOT_SAMPLES)} == set(TUNED_FAIR)
    for name, best in tuning["best"].items():
        assert TUNED_FAIR[name] == best, name
        scores = tuning["scores"][name]
        expected = len(L1_GRID) * (1 if name == "mean-only" else len(LR_GRID))
        assert len(scores) == expected, name
        top = max(scores.values(), key=lambda v: (v["success_l0_20"], v["success"]))
        assert all(top[k] == v for k, v in best.items()), name


def test_frozen_search_settings_are_the_committed_search_tuning():
    """The sparse-search suite's support searches (attack_suite.TUNED_SEARCH) use the settings that won on
    training digits, each the best of its full grid among the settings within the cost limit."""
    import itertools
    import json

    from netmoments.experiments.attack_search_tuning import COST_LIMIT, FMN_L0_GRID, SEARCH_GRID
    from netmoments.experiments.attack_suite import TUNED_SEARCH, TUNED_SEARCH_FMN

    tuning = json.loads((DATA / "attack_tuning_search.json").read_text())
    assert tuning["split"] == "train" and tuning["git_commit"] and tuning["command"]
    assert set(tuning["best"]) == {*SEARCH_GRID, "fmn-l0"} and set(TUNED_SEARCH) == set(SEARCH_GRID)
    frozen = {**TUNED_SEARCH, "fmn-l0": TUNED_SEARCH_FMN}
    for search, axes in {**SEARCH_GRID, "fmn-l0": FMN_L0_GRID}.items():
        scores = tuning["scores"][search]
        assert len(scores) == len(list(itertools.product(*axes.values()))), search
        assert frozen[search] == tuning["best"][search], search
        usable = [v for v in scores.values() if "error" not in v and v["cost_ratio"] <= COST_LIMIT]
        top = max(usable, key=lambda v: (v["success_l0_20"], -v["l0_median"]))
        assert all(top[k] == v for k, v in frozen[search].items()), search
    # the searches' defaults in AttackOptions are the same winners: support_search="l0" alone runs them
    from netmoments.attacks import AttackOptions

    for search, settings in TUNED_SEARCH.items():
        resolved = AttackOptions(support_search=search)
        assert all(getattr(resolved, k) == v for k, v in settings.items()), search


def test_blurred_pgd_runs_at_its_tuned_step():
    """The smooth suite calls smooth_pgd_attack with its default step, which is the factor tuned on training digits
    (the smallest on the plateau of the best success), over the whole grid."""
    import inspect
    import json

    from netmoments.attacks import smooth_pgd_attack
    from netmoments.experiments import attack_suite
    from netmoments.experiments.attack_smooth_tuning import DEFAULT_FACTOR, STEP_GRID

    tuning = json.loads((DATA / "attack_tuning_smooth.json").read_text())
    assert tuning["split"] == "train" and tuning["git_commit"] and tuning["command"]
    assert sorted(v["factor"] for v in tuning["scores"].values()) == sorted(STEP_GRID)
    top = max(v["success"] for v in tuning["scores"].values())
    assert tuning["best_factor"] == min(v["factor"] for v in tuning["scores"].values() if v["success"] == top)
    assert tuning["best_factor"] == DEFAULT_FACTOR
    assert "step_size" not in inspect.getsource(attack_suite._smooth_suite)  # the suite uses the default step
    assert inspect.signature(smooth_pgd_attack).parameters["step_size"].default is None


def test_sparse_search_pairs_with_the_sparse_suite():
    """The sparse-search suite reran the default attack on the sparse suite's chunks and seeds: the same digits
    per task and (deterministic given the seed) the same metrics, digit by digit."""
    from netmoments.experiments.runner import read_rows

    import json

    def key(r):  # (chunk, digit): the task ids name their own suite
        return json.loads(r["task"])[1], r["image"]

    search = [r for r in read_rows(DATA / "attack_sparse_search.csv") if r["method"] == "gauss-sparse"]
    sparse = {key(r): r for r in read_rows(DATA / "attack_sparse.csv") if r["method"] == "gauss-sparse"}
    assert len(search) == len(sparse) == 982
    assert all(key(r) in sparse for r in search)
    for column in ("l0_all", "success", "success_l0_20", "diversity"):
        assert all(float(r[column]) == float(sparse[key(r)][column]) for r in search), column


def test_benchmark_tables_list_every_committed_method(capsys):
    """benchmarks/attack_tables.py (the README's tables) prints one row per method of each committed suite."""
    import importlib.util

    from netmoments.attacks.report import by_method

    spec = importlib.util.spec_from_file_location("attack_tables", DATA.parents[1] / "benchmarks" / "attack_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert tables.main(["--data", str(DATA)]) == 0
    out = capsys.readouterr().out
    for suite in SLICES:
        path = DATA / f"attack_{suite.replace('-', '_')}.csv"
        if not (path.exists() and path.with_suffix(".json").exists()):
            continue
        section = out.split(f"#### {suite}\n", 1)[1].split("####", 1)[0]
        for method, rows in by_method(_committed(suite)[0]).items():
            n = len({r["image"] for r in rows})
            assert f"| {method} | {n} |" in section, (suite, method)


def test_a_suite_grows_its_digits_on_resume(tmp_path, monkeypatch):
    """--resume with more --images keeps the finished chunks and reruns a last chunk that was cut short."""
    from netmoments.experiments import attack_suite
    from netmoments.experiments.runner import RunnerError, read_rows

    calls = []

    def fake_task(key, ctx, only=None):  # a stand-in for the attacks: one row per digit of the chunk
        calls.append(key)
        _, labels, index = ctx.batch(key[1])
        return [dict(image=int(i), label=int(y), method="fake") for i, y in zip(index, labels)]

    monkeypatch.setattr(attack_suite, "suite_task", fake_task)
    out = tmp_path / "suite.csv"
    attack_suite.run_suite("ablation", out, images=5, chunk=2, progress=False)  # chunks of 2, 2, 1 digits
    first = read_rows(out)
    assert len(first) == 5 and len(calls) == 3
    with pytest.raises(RunnerError, match="only --images may grow"):
        attack_suite.run_suite("ablation", out, images=5, chunk=3, resume=True, progress=False)
    with pytest.raises(RunnerError, match="only --images may grow"):
        attack_suite.run_suite("ablation", out, images=4, chunk=2, resume=True, progress=False)
    calls.clear()
    meta = attack_suite.run_suite("ablation", out, images=8, chunk=2, resume=True, progress=False)
    assert calls == [("ablation", 2), ("ablation", 3)]  # the cut-short chunk 2 again, then the new chunk 3
    rows = read_rows(out)
    assert sorted(r["image"] for r in rows) == sorted({r["image"] for r in rows}) and len(rows) == 8
    assert [r for r in rows if r["task"] in (first[0]["task"], first[2]["task"])] == first[:4]  # kept as they were
    assert meta["settings"]["images"] == 8 and meta["sittings"][-1]["grown_from_images"] == 5
    assert meta["images_done"] == 8 and len(meta["sittings"]) == 2
