"""The committed ties control (book/data/ties_control.*): complete, with its provenance, paired with the committed
tightness run, and one digit's rows recomputed from scratch."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from netmoments.experiments import tightness_ties as tt
from netmoments.experiments.tightness import build_context
from netmoments.experiments.tightness_settings import TightnessConfig

DATA = Path(__file__).resolve().parents[1] / "book" / "data"
CSV, META = DATA / "ties_control.csv", DATA / "ties_control.json"
pytestmark = pytest.mark.skipif(not CSV.exists(), reason="no committed ties control")


@pytest.fixture(scope="module")
def committed():
    with open(CSV) as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads(META.read_text())


def test_complete_and_without_duplicates(committed):
    rows, meta = committed
    settings = meta["settings"]
    assert tuple(rows[0]) == tt.COLUMNS
    keys = [(int(r["image"]), float(r["sigma"]), r["point"]) for r in rows]
    assert len(keys) == len(set(keys)), "a task was written twice"
    # the digits the sittings finished (a run stopped before its last digit covers only some)
    digits = meta["digits"]
    assert len(digits) >= 10 and all(0 <= i < settings["n_images"] for i in digits)
    assert meta["tasks_done"] == len(digits) * len(settings["sigmas"]) <= meta["n_tasks"]
    assert set(keys) == {(i, s, p) for i in digits for s in settings["sigmas"] for p in tt.POINTS}
    for r in rows:
        assert np.isfinite(float(r["zmu"])) and 0 <= float(r["var_err_exact"]) <= 2


def test_provenance(committed):
    _, meta = committed
    assert meta["settings"]["truth"] == "book/data/tightness_scale.jsonl.gz"
    assert meta["sittings"]
    for sitting in meta["sittings"]:
        for key in ("command", "git_commit", "versions", "machine", "started"):
            assert sitting.get(key), f"a sitting without {key}"
        assert sitting["versions"]["torch"]
        # a sitting either ended (with its CPU time) or is marked as stopped by hand
        assert sitting.get("finished") and sitting.get("cpu_s") is not None or sitting.get("interrupted")
    finished = [s for s in meta["sittings"] if s.get("finished")]
    assert sum(s["tasks_run"] for s in finished) <= meta["n_tasks"]


def test_tie_counts_belong_to_the_digit(committed):
    rows, _ = committed
    counts = {}
    for r in rows:
        cols = tuple(r[c] for c in tt.COLUMNS[6:])
        counts.setdefault((r["image"], r["sigma"]), set()).add(cols)
        assert int(r["near1_pool1"]) <= int(r["near2_pool1"]) <= int(r["near3_pool1"])
        assert int(r["near1_pool2"]) <= int(r["near2_pool2"]) <= int(r["near3_pool2"])
    assert all(len(v) == 1 for v in counts.values()), "the tie counts differ between the points of a task"


def test_paired_with_the_tightness_run(committed):
    """The input and tie-aware rows reproduce the committed run's own per-digit errors: same truth, same draws."""
    rows, _ = committed
    with open(DATA / "tightness_scale_per_digit.csv") as f:
        ref = {(r["image"], float(r["sigma"]), r["point"]): r for r in csv.DictReader(f)
               if r["cov"] == "dense" and r["point"] in ("input", "tie_aware")}  # fmt: skip
    for r in rows:
        if r["point"] in ("input", "tie_aware"):
            old = ref[r["image"], float(r["sigma"]), r["point"]]
            # the truth is read back at 6 significant digits, so the errors agree to about 1e-3 of a sd
            assert float(r["zmu"]) == pytest.approx(float(old["zmu"]), rel=2e-2, abs=2e-3)
            assert float(r["var_err_exact"]) == pytest.approx(float(old["var_err_exact"]), rel=2e-2, abs=1e-4)


def test_one_digit_recomputes(committed):
    rows, _ = committed
    torch.set_num_threads(1)
    key = (1, 0.05, "dense")
    ctx = build_context(TightnessConfig(points=("input", "tie_aware")), n_images=key[0] + 1)
    truth = tt.read_truth(n_images=key[0] + 1, sigmas=(key[1],))
    new = {r["point"]: r for r in tt.ties_task(ctx, key, truth)}
    stored = {r["point"]: r for r in rows if int(r["image"]) == key[0] and float(r["sigma"]) == key[1]}
    assert set(new) == set(stored) == set(tt.POINTS)
    for point, old in stored.items():
        # float32 linearizations: another CPU's kernels move the 4th-5th digit
        assert new[point]["zmu"] == pytest.approx(float(old["zmu"]), rel=1e-3)
        assert new[point]["var_err_exact"] == pytest.approx(float(old["var_err_exact"]), rel=1e-3)
        for col in tt.COLUMNS[6:]:
            tol = 0 if col.startswith("exact") else 2  # a window at exactly k sds may flip on another CPU
            assert abs(new[point][col] - int(old[col])) <= tol, col
