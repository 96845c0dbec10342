"""The Gaussian attack's solvers after their split into layers: the results recorded before the split, gradient
sources, AttackOptions, and the layering of netmoments.attacks (no import cycle, no function over 100 lines)."""
import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from netmoments.attacks import (
    AttackOptions,
    SampledGradients,
    SurrogateGradients,
    default_options,
    gaussian_attack,
)
from netmoments.attacks.support import support_attack

ATTACKS = Path(__file__).resolve().parents[1] / "netmoments" / "attacks"

SUPPORT = dict(mean_steps=6, support_steps=6, relinearize_every=3, final_draws=8, final_goal=1.0, init_noise=0.05,
               max_support=15)
DENSE = dict(structure="sparse+smooth", steps=6, relinearize_every=3, blur_sigma=0.7)


@pytest.fixture(scope="module")
def tiny():
    """A 16-pixel, 3-class ReLU network in float64 and three images it classifies (their labels)."""
    gen = torch.Generator().manual_seed(11)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    for p in model.parameters():
        p.requires_grad_(False)
    images = torch.rand(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        labels = model(images).argmax(-1)
    return model, images, labels


def _fingerprint(t):
    """Per image: the sum and the position-weighted sum of a ``(B, n)`` tensor (a change anywhere moves one),
    as a flat list ``[sum_0, weighted_0, sum_1, ...]``."""
    w = torch.arange(1, t.shape[1] + 1, dtype=t.dtype)
    return torch.stack([t.sum(1), (t * w).sum(1)], 1).flatten().tolist()


def _mask(t):
    """Per image, the set of non-zero pixels as a bit mask."""
    return [sum(1 << i for i, nz in enumerate(row.tolist()) if nz) for row in (t != 0)]


# Recorded with the solvers as they were before they were split into common/options/update/sources (float64,
# torch.set_num_threads(1)); the tolerance only allows for another BLAS's rounding.
RECORDED = {
    "support": dict(
        delta=[[-0.1296247885100254, -4.7578887198634305], [0.4529892241796727, 10.17225535907628],
               [0.8299102206858043, 12.336384024284971]],
        noise=[[0.9705547616882375, 8.111247373850034], [0.7734485440137343, 6.684381482647909],
               [0.27442205695665434, 3.055130800903613]],
        masks=([61271, 64183, 63934], [61271, 64183, 59578]),
        histories=(44.6615091805052, 17.636353853114194), n_linearizations=2, steps=9,
        options=dict(forward_passes=19.0, backward_passes=6.0, jvp_passes=20.0, support_size=[14, 15, 16],
                     tighten_rounds_used=1, final_kappa=[1.0, 2.0, 1.0], final_check_success=[0.875, 1.0, 1.0]),
    ),
    "dense": dict(
        delta=[[-0.3914091022889904, -9.565663856608756], [-0.13133270743120568, 10.404572305798165],
               [0.8462624684457475, 7.261078261160866]],
        noise=[[1.3284880216004786, 11.56044001560563], [1.2225971802906375, 10.415492250083446],
               [1.3539129957969276, 11.036465490964332]],
        masks=([65527, 65247, 65535], [65527, 65247, 65535]),
        histories=(66.92259766760355, 3.0353577556299927), n_linearizations=2, steps=6, options={},
    ),
}


@pytest.mark.parametrize("case, kwargs", [("support", SUPPORT), ("dense", DENSE)])
def test_the_default_solvers_reproduce_the_recorded_results(tiny, case, kwargs):
    model, images, labels = tiny
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = gaussian_attack(model, images, labels, **kwargs)
    finally:
        torch.set_num_threads(threads)
    want = RECORDED[case]
    assert _fingerprint(res.delta_param) == pytest.approx(sum(want["delta"], []), rel=1e-10, abs=1e-12)
    assert _fingerprint(res.noise_var) == pytest.approx(sum(want["noise"], []), rel=1e-10, abs=1e-12)
    assert (_mask(res.delta_param), _mask(res.noise_var)) == want["masks"]
    sums = (res.loss_history.sum().item(), res.success_prob_history.sum().item())
    assert sums == pytest.approx(want["histories"], rel=1e-10)
    assert res.n_linearizations == want["n_linearizations"] and res.loss_history.shape == (want["steps"], 3)
    assert {k: res.options[k] for k in want["options"]} == want["options"]
    assert res.attack == "gaussian"


def test_an_explicit_surrogate_source_and_options_object_are_the_defaults(tiny):
    model, images, labels = tiny
    default = gaussian_attack(model, images, labels, **SUPPORT)
    explicit = gaussian_attack(model, images, labels, options=AttackOptions(**SUPPORT), gradients=SurrogateGradients())
    assert torch.equal(default.delta_param, explicit.delta_param)
    assert torch.equal(default.noise_var, explicit.noise_var)
    assert torch.equal(default.loss_history, explicit.loss_history)
    assert default.options == explicit.options


def test_a_sampled_gradient_source_plugs_into_the_support_solver(tiny):
    model, images, labels = tiny
    kwargs = dict(mean_steps=4, support_steps=5, relinearize_every=2, final_draws=6, tighten_rounds=0,
                  init_noise=0.05)
    surrogate = gaussian_attack(model, images, labels, **kwargs)
    sampled = gaussian_attack(model, images, labels, gradients=SampledGradients(n_samples=3), **kwargs)
    assert sampled.attack == "eot-support" and sampled.options["gradient_samples"] == 3
    # phase 1 and the support are shared; only phase 2's gradients differ
    assert sampled.options["support_size"] == surrogate.options["support_size"]
    assert not torch.equal(sampled.delta_param, surrogate.delta_param)
    assert ((sampled.noise_var > 0) <= (sampled.delta_param != 0)).all()
    assert sampled.loss_history.shape == (5, 3) and torch.isfinite(sampled.loss_history).all()
    probs = sampled.success_prob_history * 3  # fractions of 3 draws
    assert torch.allclose(probs, probs.round())
    # cost per image: phase 1's passes, 3 draws per phase-2 step (forward and backward), the final check's draws
    assert sampled.options["backward_passes"] == 4 + 3 * 5
    assert sampled.options["forward_passes"] == 4 + 3 * 5 + 6 and sampled.options["jvp_passes"] == 0
    assert len(sampled.options["final_check_success"]) == 3
    again = gaussian_attack(model, images, labels, gradients=SampledGradients(n_samples=3), **kwargs)
    assert torch.equal(again.delta_param, sampled.delta_param)  # the draws are seeded


def test_gradient_sources_are_checked(tiny):
    model, images, labels = tiny
    with pytest.raises(ValueError, match="samples must be"):
        SampledGradients(n_samples=0)
    with pytest.raises(ValueError, match="gradients is a support-solver setting"):
        gaussian_attack(model, images, labels, solver="dense", gradients=SampledGradients())
    with pytest.raises(TypeError, match="gradients must be a gradient source"):
        gaussian_attack(model, images, labels, gradients=lambda *a: None)


def test_support_attack_still_accepts_the_old_positional_classes(tiny):
    model, images, labels = tiny
    opts = AttackOptions(**SUPPORT)
    new = support_attack(model, images, labels, None, opts)
    with pytest.warns(DeprecationWarning, match="ignored"):
        old = support_attack(model, images, labels, None, opts.as_dict(), object, object, object)
    assert torch.equal(new.delta_param, old.delta_param) and torch.equal(new.noise_var, old.noise_var)
    with pytest.raises(ValueError, match="solver='support'"):
        support_attack(model, images, labels, None, AttackOptions(solver="dense"))


# ----------------------------------------------------------------------------------------------- options


def test_default_options_keep_their_keys_and_values():
    opts = default_options("sparse")
    assert len(opts) == 39 and "structure" not in opts
    assert (opts["support_search"], opts["search_radius"], opts["search_step"], opts["search_gamma"]) == \
        ("l1", None, None, None)
    assert (opts["l1_weight"], opts["blur_sigma"], opts["noise_support"]) == (0.3, 0.0, "mean")
    assert (opts["noise_l1_weight"], opts["noise_reward"], opts["noise_lr"], opts["solver"]) == (0.0, 0.1, None, "auto")
    smooth = default_options("smooth")
    assert (smooth["l1_weight"], smooth["l2_weight"], smooth["blur_sigma"], smooth["noise_support"]) == \
        (0.0, 0.05, 1.5, "all")
    # the resolved options (as a result records them: no linearizer) differ from the defaults only where a
    # default is derived
    resolved = AttackOptions().as_dict()
    assert list(resolved) == [k for k in opts if k != "linearizer"]
    assert {k for k in resolved if opts[k] != resolved[k]} == {"noise_lr", "solver"}
    assert (resolved["noise_lr"], resolved["solver"]) == (0.05, "support")


def test_attack_options_derive_their_defaults_and_stay_frozen():
    noise_only = AttackOptions(variables="noise")
    assert (noise_only.noise_support, noise_only.noise_l1_weight, noise_only.noise_reward) == ("all", 0.3, 0.0)
    assert AttackOptions(variables="noise", noise_reward=0.2).noise_reward == 0.2
    assert AttackOptions(method="none").noise_reward == 0.0
    assert AttackOptions(method="none", variables="mean").noise_reward == 0.1
    assert AttackOptions(structure="smooth").solver == "dense"
    opts = AttackOptions(lr=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.lr = 0.2
    # replace() derives afresh: noise_lr follows the new lr, the structure brings its own defaults
    assert opts.replace(lr=0.2).noise_lr == 0.2 and AttackOptions(lr=0.1, noise_lr=0.3).replace(lr=0.2).noise_lr == 0.3
    blurred = opts.replace(structure="smooth")
    assert (blurred.blur_sigma, blurred.solver, blurred.lr) == (1.5, "dense", 0.1)
    with pytest.raises(TypeError, match="unknown option"):
        opts.replace(stepz=3)
    with pytest.raises(ValueError, match="steps"):
        AttackOptions(steps=0)


def test_gaussian_attack_takes_options_and_keywords_alike(tiny):
    model, images, labels = tiny
    kw = dict(steps=3, relinearize_every=2, solver="dense")
    by_keywords = gaussian_attack(model, images, labels, structure="sparse", **kw)
    by_object = gaussian_attack(model, images, labels, options=AttackOptions(steps=5, relinearize_every=2,
                                                                             solver="dense"), steps=3)
    assert torch.equal(by_keywords.delta_param, by_object.delta_param)
    with pytest.raises(ValueError, match="disagrees"):
        gaussian_attack(model, images, labels, structure="smooth", options=AttackOptions())
    with pytest.raises(TypeError, match="options must be an AttackOptions"):
        gaussian_attack(model, images, labels, options=dict(steps=3))


# ----------------------------------------------------------------------------------------------- layering


def _attack_imports(path: Path) -> set:
    """The netmoments.attacks modules that ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("netmoments.attacks."):
            out.add(node.module.split(".")[2])
    return out


def test_attack_modules_import_each_other_without_a_cycle():
    graph = {p.stem: _attack_imports(p) for p in ATTACKS.glob("*.py") if p.stem != "__init__"}
    assert "gaussian" in graph and "support" in graph["gaussian"]
    done, visiting = set(), []

    def visit(name):
        assert name not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(name):] + [name])}"
        if name in done:
            return
        visiting.append(name)
        for dep in graph.get(name, ()):
            visit(dep)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_no_attack_function_is_longer_than_100_lines():
    long = [(p.name, node.name, node.end_lineno - node.lineno + 1) for p in ATTACKS.glob("*.py")
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100]
    assert not long, long
