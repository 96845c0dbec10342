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
ATTACK_RUN = DATA / "layerwise_sparse_blur.jsonl.gz"  # LeNet at the attacks' covariances
DEEP_RUN, DEEP_TRUTH = DATA / "layerwise_deep_cnn.jsonl.gz", DATA / "layerwise_deep_cnn_truth.jsonl.gz"
MLP_RUN, MLP_TRUTH = DATA / "layerwise_mlp.jsonl.gz", DATA / "layerwise_mlp_truth.jsonl.gz"
FINE_TRUTH = DATA / "layerwise_dense_truth1e5.jsonl.gz"  # 10^5 draws of LeNet at sigma = 0.05
FULL_RUN = DATA / "layerwise_dense_full.jsonl.gz"  # the full closure on more digits at sigma = 0.05
UNSCENTED_RUN = DATA / "layerwise_dense_unscented.jsonl.gz"
MC_BUDGETS = [DATA / "layerwise_dense_mc300.jsonl.gz", DATA / "layerwise_dense_mc3000.jsonl.gz"]
ALL_RUNS = [RUN, TSL_RUN, REF_RUN, MC_RUN, ATTACK_RUN, DEEP_RUN, DEEP_TRUTH, MLP_RUN, MLP_TRUTH, FINE_TRUTH,
            FULL_RUN, UNSCENTED_RUN, *MC_BUDGETS]
# Runs that continue over sittings: committed with the tasks done so far, every one of them a task of the run's
# settings; chapter 8 uses their complete digits only.
GROWING: set = set()  # none today: the 10^5-draw truth and the full closure are complete


@pytest.fixture(scope="module")
def rows():
    return read_rows(RUN) + read_rows(TSL_RUN) + read_rows(REF_RUN) + read_rows(MC_RUN)


@pytest.mark.parametrize("run", ALL_RUNS, ids=lambda p: p.name)
def test_the_run_is_complete_undamaged_and_described(run):
    rows = read_rows(run)
    scan = scan_file(run)
    assert scan.damage is None and scan.torn_tail is None
    meta = read_provenance(run)
    assert meta is not None and meta["command"].startswith("python -m netmoments.experiments layerwise")
    import json

    settings = json.loads(run.with_suffix("").with_suffix(".json").read_text())["settings"]
    expected = layerwise.task_list(settings["images"], settings["sigmas"], settings["covs"], settings["methods"])
    done = {(r["image"], r["sigma"], r["cov"], r["method"]) for r in rows}
    assert len(rows) == len(done)  # no task twice
    if run in GROWING:
        assert rows and done <= set(expected)
    else:
        assert done == set(expected)


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


@pytest.mark.parametrize("model, run, method", [("deep_cnn", DEEP_RUN, "lowrank"), ("deep_cnn", DEEP_RUN, "diag"),
                                                ("deep_cnn", DEEP_TRUTH, "truth"), ("mlp", MLP_RUN, "lowrank")])  # fmt: skip
def test_a_slice_of_the_other_networks_recomputes(model, run, method):
    stored = read_rows(run)
    ctx = layerwise.build_layerwise_context(layerwise.LayerwiseConfig(), n_images=1, model=model)
    (old,) = [r for r in stored if r["image"] == 0 and r["sigma"] == 0.05 and r["method"] == method]
    (new,) = layerwise.layerwise_task((0, 0.05, "dense", method), ctx)
    rtol = 1e-7 if method in ("diag", "lowrank") else 1e-4  # the truth's float32 passes: float32 rounding
    np.testing.assert_allclose(new["var"], old["var"], rtol=rtol)
    np.testing.assert_allclose(new["mean"], old["mean"], rtol=rtol, atol=rtol)


def test_the_full_closure_on_the_one_hidden_layer_network_is_its_exact_moments():
    """An independent check of the committed rows: the MLP is an Affine-ReLU-Affine map, so its "full" rows must
    be chapter 4's exact moments, computed here from the weights without the layer-by-layer code."""
    import netmoments as nm
    from netmoments.models import load_mlp

    net = load_mlp().double()
    exact = nm.AffineReLUAffine(net[1].weight, net[1].bias, net[3].weight, net[3].bias)
    ctx = layerwise.build_layerwise_context(layerwise.LayerwiseConfig(), n_images=3, model="mlp")
    rows = [r for r in read_rows(MLP_RUN) if r["method"] == "full" and r["image"] < 3]
    assert len(rows) == 9
    for r in rows:
        x, _, cov = layerwise.task_input(ctx, r["image"], r["sigma"], r["cov"])
        with torch.no_grad():
            mean, var = exact.moments(x.reshape(1, -1), cov, method="exact", output="var")
        np.testing.assert_allclose(r["mean"], mean[0].numpy(), rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(r["var"], var[0].numpy(), rtol=1e-8)
