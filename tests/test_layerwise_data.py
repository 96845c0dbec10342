"""The committed layer-wise run: complete, with provenance, and reproducible from its task keys."""
from pathlib import Path

import numpy as np
import pytest
import torch

from netmoments.experiments import layerwise
from netmoments.experiments.runner import read_rows, scan_file
from netmoments.provenance import read_provenance

DATA = Path(__file__).resolve().parents[1] / "book" / "data"
RUN = DATA / "layerwise_dense.jsonl.gz"
TSL_RUN = DATA / "layerwise_dense_tsl.jsonl.gz"
REF_RUN = DATA / "layerwise_dense_ref.jsonl.gz"  # full and unscented, 10 digits at sigma = 0.05
MC_RUN = DATA / "layerwise_dense_mc.jsonl.gz"  # the samplers at about lowrank32's cost


@pytest.fixture(scope="module")
def rows():
    return read_rows(RUN) + read_rows(TSL_RUN) + read_rows(REF_RUN) + read_rows(MC_RUN)


@pytest.mark.parametrize("run", [RUN, TSL_RUN, REF_RUN, MC_RUN], ids=lambda p: p.name)
def test_the_run_is_complete_undamaged_and_described(run):
    rows = read_rows(run)
    scan = scan_file(run)
    assert scan.damage is None and scan.torn_tail is None
    meta = read_provenance(run)
    assert meta is not None and meta["command"].startswith("python -m netmoments.experiments layerwise")
    import json

    settings = json.loads(run.with_suffix("").with_suffix(".json").read_text())["settings"]
    expected = layerwise.task_list(settings["images"], settings["sigmas"], settings["covs"], settings["methods"])
    assert len(rows) == len(expected)
    assert {(r["image"], r["sigma"], r["cov"], r["method"]) for r in rows} == set(expected)


@pytest.mark.parametrize("method", ["diag", "lowrank", "lowrank32", "tsl", "unscented", "mc", "cv"])
def test_a_slice_recomputes(rows, method):
    ctx = layerwise.build_layerwise_context(layerwise.LayerwiseConfig(), n_images=2)
    for image in (0, 1):
        (stored,) = [r for r in rows if r["image"] == image and r["sigma"] == 0.05 and r["method"] == method]
        (row,) = layerwise.layerwise_task((image, 0.05, "dense", method), ctx)
        mean, var = torch.tensor([row["mean"]]), torch.tensor([row["var"]])
        # float64 closures agree to rounding on any CPU; the float32 one to float32 rounding of a long computation
        # the float32 computations (lowrank32, the TSL's Jacobian, the samplers' passes) to float32 rounding
        rtol = 1e-7 if method in ("diag", "lowrank", "unscented") else 1e-4
        np.testing.assert_allclose(var[0].double().numpy(), stored["var"], rtol=rtol)
        np.testing.assert_allclose(mean[0].double().numpy(), stored["mean"], rtol=rtol, atol=rtol)
