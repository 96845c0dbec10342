"""The committed layer-wise run: complete, with provenance, and reproducible from its task keys."""
from pathlib import Path

import numpy as np
import pytest
import torch

from netmoments.experiments import layerwise
from netmoments.experiments.runner import read_rows, scan_file
from netmoments.provenance import read_provenance

RUN = Path(__file__).resolve().parents[1] / "book" / "data" / "layerwise_dense.jsonl.gz"


@pytest.fixture(scope="module")
def rows():
    return read_rows(RUN)


def test_the_run_is_complete_undamaged_and_described(rows):
    scan = scan_file(RUN)
    assert scan.damage is None and scan.torn_tail is None
    meta = read_provenance(RUN)
    assert meta is not None and meta["command"].startswith("python -m netmoments.experiments layerwise")
    import json

    settings = json.loads(RUN.with_suffix("").with_suffix(".json").read_text())["settings"]
    expected = layerwise.task_list(settings["images"], settings["sigmas"], settings["covs"], settings["methods"])
    assert len(rows) == len(expected)
    assert {(r["image"], r["sigma"], r["cov"], r["method"]) for r in rows} == set(expected)


@pytest.mark.parametrize("method", ["diag", "lowrank", "lowrank32"])
def test_a_slice_recomputes(rows, method):
    ctx = layerwise.build_layerwise_context(layerwise.LayerwiseConfig(), n_images=2)
    for image in (0, 1):
        (stored,) = [r for r in rows if r["image"] == image and r["sigma"] == 0.05 and r["method"] == method]
        x, _, cov = layerwise.task_input(ctx, image, 0.05, "dense")
        with torch.no_grad():
            mean, var = layerwise.method_moments(method, ctx.model64, ctx.model, x, cov)
        # float64 closures agree to rounding on any CPU; the float32 one to float32 rounding of a long computation
        rtol = 1e-4 if method == "lowrank32" else 1e-7
        np.testing.assert_allclose(var[0].double().numpy(), stored["var"], rtol=rtol)
        np.testing.assert_allclose(mean[0].double().numpy(), stored["mean"], rtol=rtol, atol=rtol)
