"""The committed tightness run (book/data/tightness_scale.*) still matches the code: provenance and a recomputed slice.

Two committed tasks (one sparse, one dense with all its linearization points) are recomputed from their keys with
the run's stored configuration; every committed number must agree with the recomputation within its own Monte
Carlo standard error (the same seeds give the same draws, so in practice they agree to rounding). Stale data (the
code or the weights changed after the run) fail here.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from netmoments.experiments.runner import read_rows, task_id
from netmoments.experiments.tightness import (
    ROW_LISTS,
    TightnessConfig,
    bonferroni_z,
    build_context,
    report_markdown,
    tightness_task,
    write_per_image_csv,
)

DATA = Path(__file__).resolve().parents[1] / "book" / "data"
ROWS, META = DATA / "tightness_scale.jsonl.gz", DATA / "tightness_scale.json"
TABLES, PER_DIGIT = DATA / "tightness_scale_tables.md", DATA / "tightness_scale_per_digit.csv"
pytestmark = pytest.mark.skipif(not ROWS.exists(), reason="no committed tightness run")


@pytest.fixture(scope="module")
def committed():
    return read_rows(ROWS), json.loads(META.read_text())


def test_provenance_is_complete(committed):
    rows, meta = committed
    settings = meta["settings"]
    assert rows and meta["n_tasks"] == settings["n_images"] * len(settings["sigmas"]) * len(settings["covs"])
    for sitting in meta["sittings"]:
        for key in ("command", "git_commit", "versions", "machine", "started"):
            assert sitting.get(key), f"sitting without {key}"
        assert sitting["versions"]["torch"] and sitting["versions"]["dask"]
    assert {r["mc_samples"] for r in rows} == {settings["config"]["mc_samples"]}
    assert {r["sigma"] for r in rows} <= set(settings["sigmas"]) and {r["cov"] for r in rows} <= set(settings["covs"])


@pytest.mark.parametrize("key", [(0, 0.05, "sparse"), (0, 0.2, "dense")])
def test_a_committed_task_recomputes_within_its_standard_errors(committed, key):
    rows, meta = committed
    stored = [r for r in rows if r["task"] == task_id(key)]
    if not stored:
        pytest.skip(f"task {key} not in the committed run yet")
    settings = meta["settings"]
    config = dict(settings["config"])
    config["points"], config["clusters"] = tuple(config["points"]), tuple(config["clusters"])
    config = TightnessConfig(**config)
    context = build_context(config, n_images=key[0] + 1)
    assert {str(k): v for k, v in context.n_clusters.items()} == settings["n_clusters"]
    torch.set_num_threads(1)
    fresh = tightness_task(key, context)
    assert [(r["point"], r["k"]) for r in fresh] == [(r["point"], r["k"]) for r in stored]
    n = config.mc_samples
    # the standard error each column is compared with (means: sqrt(var / N) of the matching variance)
    se_of = {
        "mc_mean": lambda r: np.sqrt(np.array(r["mc_var"]) / n), "mc_var": lambda r: np.array(r["mc_var_se"]),
        "mean": lambda r: np.sqrt(np.array(r["mc_var"]) / n), "f_dmean": lambda r: np.sqrt(np.array(r["lin_var"]) / n),
        "lin_var": lambda r: np.array(r["lin_var_se"]), "l_dmean": lambda r: np.array(r["l_dmean_se"]),
        "l_dvar": lambda r: np.array(r["l_dvar_se"]),
    }  # fmt: skip
    for name in ("var_exact", "var_series", "var_hybrid"):
        se_of[name] = se_of["mc_var"]
    z = bonferroni_z(len(stored) * len(se_of) * 10)
    for old, new in zip(stored, fresh):
        assert (old["ties"], old["label"]) == (new["ties"], new["label"])
        for name, se in se_of.items():
            if old[name] is None:
                assert new[name] is None
                continue
            diff = np.abs(np.array(old[name]) - np.array(new[name]))
            assert np.all(diff <= z * se(old) + 1e-9), f"{name} at {old['point']} k={old['k']}: stale data"
        for name in ROW_LISTS:
            assert (old[name] is None) == (new[name] is None)


def test_the_committed_tables_and_per_digit_csv_are_those_of_the_committed_rows(committed, tmp_path):
    import csv

    if not (TABLES.exists() and PER_DIGIT.exists()):
        pytest.skip("the tables and the per-digit CSV are exported when the run is complete")
    rows, meta = committed
    assert TABLES.read_text() == report_markdown(rows, meta), "stale tables: re-export them with --report --tables"
    fresh = tmp_path / "per_digit.csv"
    write_per_image_csv(rows, fresh)
    with PER_DIGIT.open() as a, fresh.open() as b:
        old, new = list(csv.reader(a)), list(csv.reader(b))
    assert len(old) == len(new) and old[0] == new[0], "stale per-digit CSV: re-export it with --report --csv"
    for line_old, line_new in zip(old[1:], new[1:]):
        for name, u, v in zip(old[0], line_old, line_new):
            assert (u == "") == (v == ""), f"{name}: {u!r} vs {v!r}"
            if u and u != v:
                assert float(u) == pytest.approx(float(v), rel=1e-5), f"{name}: {u} vs {v}"
