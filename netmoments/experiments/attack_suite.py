"""``python -m netmoments.experiments attack --suite NAME``: the per-image evidence behind chapter 8's tables.

One *task* is one chunk of ``--chunk`` correctly classified digits of ``--split`` (attacked as one batch, because
the attacks are batched); it returns one row per (digit, method) with the per-image metrics of
:mod:`netmoments.attacks.metrics` (success at fixed budgets on the actual draws, sizes, SSIM, diversity, cost in
wall seconds and network passes) and, for our sparse attack, the surrogate check of
:func:`netmoments.attacks.support.surrogate_check`. Every chunk also times the cost yardstick, 100 steps of
L-infinity PGD (100 forward + backward passes of LeNet per image), on the same digits in the same process, so
cost ratios are measured under the same load. Runs go through :mod:`netmoments.experiments.runner` (resumable,
atomic per task, Dask workers, one run per file); a metadata file beside ``--out``, written before the first task,
records the settings, command, commit, versions, machine, dates, wall time and tasks done.

Suites (``SUITES``):

* ``sparse``: our default sparse attack, its mean-only ablation, Foolbox L0-FMN and L1-FMN, L0-PGD with restarts
  at fixed ``k`` and at ``k`` matched per image to our attack's pixel count, and EOT-PGD over the same Gaussian
  family.
* ``ablation``: mean only (variance none, its L1 price tuned) vs the linear variance (our defaults, and tuned on
  the sampled-gradient solver's learning-rate and L1 grid), no noise reward (the noise
  started at :data:`NO_REWARD_INIT_NOISE`), no final check, our solver with sampled gradients instead of the
  closed form (1 and 4 draws per step, tuned: :data:`TUNED_FAIR`), EOT-PGD at about our wall time; the exact and
  series variances score the linear attack's final distribution.
* ``ablation-exact``: our attack with the exact variance inside the optimization, on the ablation's chunks and
  seeds (pairs with its ``gauss-var-linear`` rows).
* ``ablation-truth``: the ablation's linear-variance attack again, its final distribution judged on 10⁴ draws
  (:mod:`netmoments.experiments.attack_truth`).
* ``sparse-search``: our sparse attack with each support search of :mod:`netmoments.attacks.search` (the
  default L1 steps; the adaptive L0 projection and the warm start from L0-FMN, both tuned on training digits:
  :data:`TUNED_SEARCH`), the mean alone on the L0 search's support, and Foolbox L0-FMN, on the sparse suite's
  chunks and seeds, timed against one yardstick.
* ``sparse-search-fmn``: Foolbox L0-FMN at the settings that won on the same training digits and grid size as the
  L0 search (:data:`TUNED_SEARCH_FMN`), on the sparse suite's chunks, timed against the yardstick.
* ``smooth``: our smooth attack, blurred PGD with per-image pre-clip budgets matched to the L2 of our draws (and,
  as a second row, to the L2 of our mean shift only), smooth EOT-PGD.
* ``targeted``: our sparse attack and L0-FMN at each of the 9 targets of every digit (``target`` column).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .runner import (
    RunnerError, check_writable, drop_tasks, output_lock, read_rows, resume_metadata, run_tasks, seed_from_key, task_id,
    write_json,
)
from .sittings import end_sitting, git_commit, machine, start_sitting, versions

__all__ = ["SUITES", "TUNED", "TUNED_FAIR", "TUNED_SEARCH", "TUNED_SEARCH_FMN", "NO_REWARD_INIT_NOISE", "suite_task",
           "run_suite", "load_digits"]

#: The attack suites a run can choose.
SUITES = ("sparse", "ablation", "smooth", "targeted", "calibration", "ablation-truth", "ablation-exact",
          "sparse-search", "sparse-search-fmn")

# Set on training digits (``--split train``, see ``book/data/attack_tuning.json``), then frozen for test runs.
# L0-PGD's success at k = 20 plateaus from step 2 to 8 (0.94); the smallest step on the plateau is kept.
#: Step sizes, restarts and sample counts of the baselines, tuned on training digits and then frozen.
TUNED = dict(l0_pgd_step_size=2.0, l0_pgd_restarts=2, l0_pgd_k=(10, 20, 40), eot_samples=4, eot_steps=100,
             fmn_l0=dict(max_stepsize=3.0, gamma=0.05), fmn_l1=dict(max_stepsize=1.0, gamma=0.05))

DRAWS = 100  # draws per image for every distribution attack's metrics

#: Versions a suite's sittings record beyond :data:`netmoments.experiments.sittings.PACKAGES`.
EXTRA_VERSIONS = ("foolbox", "scikit-image")


def load_digits(split: str, count: int, offset: int = 0, device="cpu"):
    """LeNet and the first ``count`` (after ``offset``) correctly classified digits of ``split``, with their
    indices in the split: ``(model, images, labels, index)``, the model and digits on ``device``."""
    from ..data import load_mnist
    from ..models import load_lenet

    model = load_lenet().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    images, labels = load_mnist(split)
    with torch.no_grad():
        ok = model(images.to(device)).argmax(-1).cpu() == labels
    idx = ok.nonzero().flatten()[offset : offset + count]
    return model, images[idx].to(device), labels[idx].to(device), idx


class SuiteContext:
    """Model and digits shared by all tasks (sent once to each worker)."""

    def __init__(self, split, count, chunk):
        self.split, self.count, self.chunk = split, count, chunk
        self.model, self.images, self.labels, self.index = load_digits(split, count)

    def batch(self, chunk_id):
        s = slice(chunk_id * self.chunk, (chunk_id + 1) * self.chunk)
        return self.images[s], self.labels[s], self.index[s]


_EXTRA = ("pred_success", "sur_mean", "sur_var", "mc_mean", "mc_var", "margin_z", "mc_success_kstar",
          "support_size", "tighten_rounds")
# the ablation suite also scores the final distribution with the paper's exact and series variances
_EXTRA_ABLATION = _EXTRA + ("pred_success_exact", "sur_var_exact", "pred_success_series", "sur_var_series")


def _rows(model, method, res, images, labels, index, target, yard_s, seed, extra=None, columns=_EXTRA):
    from ..attacks.metrics import image_metrics

    gen = torch.Generator().manual_seed(seed)
    m = image_metrics(model, res, labels, target, n_samples=DRAWS, generator=gen)
    rows = []
    for i, r in enumerate(m.rows()):
        row = dict(image=int(index[i]), label=int(labels[i]), target=-1 if target is None else int(target[i]),
                   method=method, yardstick_s=yard_s)
        row.update(r)
        for key in columns:
            row[key] = float(extra[key][i]) if extra is not None and key in extra else float("nan")
        rows.append(row)
    return rows


def _ours_extra(model, res, labels, target, seed, variances=()):
    from ..attacks.support import surrogate_check

    chk = surrogate_check(model, res, labels, target, n_samples=DRAWS, generator=torch.Generator().manual_seed(seed))
    out = {k: v.cpu().numpy() for k, v in chk.items()}
    for variance in variances:
        other = surrogate_check(model, res, labels, target, n_samples=2, method=variance,
                                generator=torch.Generator().manual_seed(seed))
        out[f"pred_success_{variance}"] = other["pred_success"].cpu().numpy()
        out[f"sur_var_{variance}"] = other["sur_var"].cpu().numpy()
    out["support_size"] = np.asarray(res.options.get("support_size", [np.nan] * len(labels)), dtype=float)
    out["tighten_rounds"] = np.full(len(labels), float(res.options.get("tighten_rounds_used", np.nan)))
    return out


def _yardstick(model, images, labels):
    from ..attacks import pgd_attack

    start = time.perf_counter()
    pgd_attack(model, images, labels, eps=0.3, steps=100)
    return (time.perf_counter() - start) / len(labels)


def suite_task(key, ctx: SuiteContext, only=None):
    """Rows of one chunk: ``key = (suite, chunk_id)``; ``only``: a set of method names to run (tests recompute
    slices of committed results with it; the rest are skipped)."""
    suite, chunk_id = key
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    chunk = _Chunk(ctx, suite, chunk_id, only)
    _SUITE_METHODS[suite](chunk)
    return chunk.rows


class _Chunk:
    """One task's digits, seed and yardstick, and the rows its methods add (:meth:`add`)."""

    def __init__(self, ctx: SuiteContext, suite: str, chunk_id: int, only):
        self.model, self.only, self.rows, self.chunk_id = ctx.model, only, [], chunk_id
        self.images, self.labels, self.index = ctx.batch(chunk_id)
        self.seed = seed_from_key(0, _SEED_SUITE.get(suite, suite), chunk_id) % (2**31)
        torch.manual_seed(self.seed)
        timed = only is None and suite not in _UNTIMED_SUITES
        self.yard = _yardstick(self.model, self.images, self.labels) if timed else float("nan")
        self.columns = _EXTRA_ABLATION if suite == "ablation" else _EXTRA

    def add(self, method, attack, target=None, extra=None):
        """Run ``attack()`` (lazily: skipped unless wanted) and append its rows; returns the result."""
        if self.only is not None and method not in self.only:
            return None
        res = attack()
        self.rows.extend(_rows(self.model, method, res, self.images, self.labels, self.index, target, self.yard,
                               self.seed, extra(res) if extra else None, self.columns))  # fmt: skip
        return res

    def ours_extra(self, target=None, variances=()):
        """The surrogate check of our attack's result, as an ``extra`` of :meth:`add`."""
        return lambda res: _ours_extra(self.model, res, self.labels, target, self.seed, variances)

    def method_rows(self, method) -> list[dict]:
        """The rows added so far by ``method``."""
        return [r for r in self.rows if r["method"] == method]


def _sparse_suite(c: _Chunk) -> None:
    """Our sparse attack, its mean-only ablation, FMN (L0, L1), L0-PGD at fixed and matched ``k``, sparse EOT."""
    from ..attacks import eot_attack, fmn_attack, gaussian_attack, l0_pgd_attack

    model, images, labels, seed = c.model, c.images, c.labels, c.seed
    step, restarts = TUNED["l0_pgd_step_size"], TUNED["l0_pgd_restarts"]
    c.add("gauss-sparse", lambda: gaussian_attack(model, images, labels, seed=seed), extra=c.ours_extra())
    c.add("gauss-sparse-mean", lambda: gaussian_attack(model, images, labels, variables="mean", method="none",
                                                       seed=seed))
    c.add("fmn-l0", lambda: fmn_attack(model, images, labels, norm="l0", steps=100, **TUNED["fmn_l0"]))
    c.add("fmn-l1", lambda: fmn_attack(model, images, labels, norm="l1", steps=100, **TUNED["fmn_l1"]))
    for k in TUNED["l0_pgd_k"]:
        c.add(f"l0-pgd-k{k}", lambda k=k: l0_pgd_attack(model, images, labels, k=k, step_size=step,
                                                        restarts=restarts, seed=seed))
    # matched per image: our pixel count on the draws (median over all draws), at least 1
    ours_l0 = [r["l0_all"] for r in c.method_rows("gauss-sparse")]
    if ours_l0:
        k_match = torch.tensor([max(1, int(math.ceil(v))) for v in ours_l0], dtype=torch.int64)
        c.add("l0-pgd-matched", lambda: l0_pgd_attack(model, images, labels, k=k_match, step_size=step,
                                                      restarts=restarts, seed=seed))
    c.add("eot-sparse", lambda: eot_attack(model, images, labels, structure="sparse", n_samples=TUNED["eot_samples"],
                                           steps=TUNED["eot_steps"], seed=seed))


#: The ablation's variants' own settings, tuned on training digits like ours
#: (:mod:`netmoments.experiments.attack_fair_tuning`, ``book/data/attack_tuning_fair.json``), then frozen.
TUNED_FAIR = {"mean-only": dict(l1_weight=1.0), "ours": dict(lr=0.2, l1_weight=0.3),
              "eot-solver-n1": dict(lr=0.2, l1_weight=1.0), "eot-solver-n4": dict(lr=0.1, l1_weight=1.0)}
#: The noise std on the support at which the no-noise-reward variant starts, the median final std of our attack
#: on the 16 first training digits (0.21), so that the objective alone decides whether noise stays. Our attack
#: starts at 0, where the hinge's gradient in the std is 0; without the reward, noise started there never moves.
NO_REWARD_INIT_NOISE = 0.2


def _ablation_suite(c: _Chunk) -> None:
    """Mean only vs the linear variance, ours tuned on the sampled-gradient solver's grid, no noise reward (from a
    nonzero start), no final check, our solver with sampled gradients (tuned, 1 and 4 draws per step), and EOT-PGD
    at about our wall time."""
    from ..attacks import SampledGradients, eot_attack, gaussian_attack

    model, images, labels, seed = c.model, c.images, c.labels, c.seed
    # Optimizing with the exact / series covariance costs ~10 s per step per digit here (1024^2 / 2 hidden
    # pairs), so those two variances score the final distribution of the linear-variance attack instead.
    ours = c.add("gauss-var-linear", lambda: gaussian_attack(model, images, labels, method="linear", seed=seed),
                 extra=c.ours_extra(variances=("exact", "series")))
    # ours with the learning rate and L1 price tuned on the same grid as the sampled-gradient solver's
    tuned_ours = TUNED_FAIR["ours"]
    c.add("gauss-tuned", lambda: gaussian_attack(model, images, labels, seed=seed, lr=tuned_ours["lr"],
                                                 noise_lr=tuned_ours["lr"], l1_weight=tuned_ours["l1_weight"]),
          extra=c.ours_extra())
    c.add("gauss-var-none-mean-only", lambda: gaussian_attack(model, images, labels, method="none",
                                                              variables="mean", seed=seed,
                                                              **TUNED_FAIR["mean-only"]), extra=c.ours_extra())
    c.add("gauss-no-noise-reward", lambda: gaussian_attack(model, images, labels, noise_reward=0.0,
                                                           init_noise=NO_REWARD_INIT_NOISE, seed=seed),
          extra=c.ours_extra())
    c.add("gauss-no-final-check", lambda: gaussian_attack(model, images, labels, tighten_rounds=0, final_draws=0,
                                                          seed=seed), extra=c.ours_extra())
    for n in (1, 4):
        tuned = TUNED_FAIR[f"eot-solver-n{n}"]
        c.add(f"eot-solver-n{n}", lambda n=n, tuned=tuned: gaussian_attack(
            model, images, labels, seed=seed, lr=tuned["lr"], noise_lr=tuned["lr"], l1_weight=tuned["l1_weight"],
            gradients=SampledGradients(n)))
    if ours is not None:
        # EOT at about our wall time: as many 4-sample steps as fit in our time per image (at least 5)
        probe = eot_attack(model, images, labels, n_samples=4, steps=5, seed=seed)
        steps = max(5, int(5 * ours.time_s / max(probe.time_s, 1e-9)))
        c.add("eot-sparse-equal-time", lambda: eot_attack(model, images, labels, n_samples=4, steps=steps,
                                                          seed=seed))


#: The support searches' settings, tuned on training digits (:mod:`netmoments.experiments.attack_search_tuning`,
#: ``book/data/attack_tuning_search.json``), then frozen.
TUNED_SEARCH = {"l0": dict(search_radius=80.0, search_step=16.0, search_gamma=0.2, tighten_rounds=1, l1_weight=0.0),
                "fmn": dict(search_step=1.0, search_gamma=0.2, tighten_rounds=1, l1_weight=0.0)}


def _sparse_search_suite(c: _Chunk) -> None:
    """Our sparse attack with the L1 (default), L0 and FMN warm-start support searches, the L0 search's mean
    alone, and L0-FMN itself."""
    from ..attacks import fmn_attack, gaussian_attack

    model, images, labels, seed = c.model, c.images, c.labels, c.seed
    c.add("gauss-sparse", lambda: gaussian_attack(model, images, labels, seed=seed), extra=c.ours_extra())
    for search, settings in TUNED_SEARCH.items():
        c.add(f"gauss-sparse-{search}", lambda s=search, kw=settings: gaussian_attack(
            model, images, labels, support_search=s, seed=seed, **kw), extra=c.ours_extra())
    # the L0 search's support with the mean alone (no noise): what the noise costs on that support
    c.add("gauss-sparse-l0-mean", lambda: gaussian_attack(model, images, labels, support_search="l0", variables="mean",
                                                          method="none", seed=seed, **TUNED_SEARCH["l0"]))
    c.add("fmn-l0", lambda: fmn_attack(model, images, labels, norm="l0", steps=100, **TUNED["fmn_l0"]))


#: Foolbox L0-FMN's settings tuned on the support searches' training digits and grid size
#: (``book/data/attack_tuning_search.json``, ``best["fmn-l0"]``), then frozen.
TUNED_SEARCH_FMN = dict(max_stepsize=10.0, gamma=0.2)


def _sparse_search_fmn_suite(c: _Chunk) -> None:
    """Foolbox L0-FMN retuned with the support searches' budget of tuning (pairs with ``sparse-search``)."""
    from ..attacks import fmn_attack

    c.add("fmn-l0-retuned", lambda: fmn_attack(c.model, c.images, c.labels, norm="l0", steps=100, **TUNED_SEARCH_FMN))


def _smooth_suite(c: _Chunk) -> None:
    """Our smooth attack, blurred PGD at budgets matched to it, smooth EOT, and our sparse + smooth attack."""
    from ..attacks import eot_attack, gaussian_attack, smooth_pgd_attack

    model, images, labels, seed = c.model, c.images, c.labels, c.seed
    ours = c.add("gauss-smooth", lambda: gaussian_attack(model, images, labels, structure="smooth", seed=seed))
    if ours is not None:
        # Per-image budgets, enforced before clipping: the median L2 of our draws (noise included, after
        # clipping), i.e. the size an observer sees; and, for comparison, the L2 of our mean shift alone.
        ours_l2 = [r["l2_all"] for r in c.method_rows("gauss-smooth")]
        eps = torch.tensor(ours_l2, dtype=images.dtype).clamp_min(1e-3)
        c.add("pgd-blur-matched", lambda: smooth_pgd_attack(model, images, labels, eps=eps, blur_sigma=1.5))
        eps_mean = ours.delta.flatten(1).norm(dim=1).clamp_min(1e-3)
        c.add("pgd-blur-matched-mean", lambda: smooth_pgd_attack(model, images, labels, eps=eps_mean,
                                                                 blur_sigma=1.5))
    c.add("eot-smooth", lambda: eot_attack(model, images, labels, structure="smooth", n_samples=TUNED["eot_samples"],
                                           steps=TUNED["eot_steps"], seed=seed))
    c.add("gauss-sparse+smooth", lambda: gaussian_attack(model, images, labels, structure="sparse+smooth",
                                                         seed=seed))


def _targeted_suite(c: _Chunk) -> None:
    """Our sparse attack and L0-FMN at each of the 9 targets of every digit."""
    from ..attacks import fmn_attack, gaussian_attack

    model, images, labels, seed = c.model, c.images, c.labels, c.seed
    for shift in range(1, 10):
        target = (labels + shift) % 10
        c.add("gauss-sparse", lambda: gaussian_attack(model, images, labels, target=target, seed=seed), target,
              extra=c.ours_extra(target))
        c.add("fmn-l0", lambda: fmn_attack(model, images, labels, target=target, norm="l0", steps=100,
                                           **TUNED["fmn_l0"]), target)


def _ablation_truth_suite(c: _Chunk) -> None:
    """The ablation's linear-variance attack, same chunk and seed, judged on 10^4 draws of the real network
    (:mod:`netmoments.experiments.attack_truth`)."""
    from .attack_truth import truth_rows

    draw_seed = seed_from_key(1, "ablation-truth", c.chunk_id) % (2**31)
    c.rows.extend(truth_rows(c.model, c.images, c.labels, c.index, c.seed, draw_seed))


def _ablation_exact_suite(c: _Chunk) -> None:
    """Our attack with the exact (Phi2) variance inside the optimization, on the ablation's chunks and seeds, so
    each row pairs with that digit's ``gauss-var-linear`` row of the ablation (about 25 times its cost)."""
    from ..attacks import gaussian_attack

    c.add("gauss-var-exact", lambda: gaussian_attack(c.model, c.images, c.labels, method="exact", seed=c.seed),
          extra=c.ours_extra())


# suites whose rows carry no cost comparison, so no yardstick is timed for them
_UNTIMED_SUITES = {"ablation-truth"}
# suites that rerun another suite's attacks, so they take its chunk seeds
_SEED_SUITE = {"ablation-truth": "ablation", "ablation-exact": "ablation", "sparse-search": "sparse",
               "sparse-search-fmn": "sparse"}

_SUITE_METHODS = {"sparse": _sparse_suite, "ablation": _ablation_suite, "smooth": _smooth_suite,
                  "targeted": _targeted_suite, "ablation-truth": _ablation_truth_suite,
                  "ablation-exact": _ablation_exact_suite, "sparse-search": _sparse_search_suite,
                  "sparse-search-fmn": _sparse_search_fmn_suite}

# ``calibration``: our sparse attack at weakened goals, judged on 1,000 draws per digit (attack_calibration.py)
from .attack_calibration import CAL_DRAWS, CAL_METHODS, GOALS, calibration_suite  # noqa: E402
from .attack_truth import ABLATION_CHUNK, TRUTH_DRAWS  # noqa: E402

# the chunk size of the committed runs whose seeds other suites reuse (a chunk's seed and digits go together)
_SEED_CHUNK = {"ablation": ABLATION_CHUNK, "sparse": 8}

_SUITE_METHODS["calibration"] = calibration_suite
#: settings a suite records beyond (or instead of) the common ones
_SUITE_SETTINGS = {"calibration": dict(draws=CAL_DRAWS, goals=list(GOALS), methods=list(CAL_METHODS))}
_SUITE_SETTINGS["ablation-truth"] = dict(draws=TRUTH_DRAWS, paired_with="ablation")


def run_suite(suite, out, *, split="test", images=100, chunk=8, command=None, **runner_options):
    """Run (or resume) ``suite`` over ``images`` correctly classified digits of ``split`` into ``out``
    (``.csv``); writes ``out`` with ``.json`` (settings, provenance and progress) before the first task and at every
    checkpoint. Both files are locked for the run, and a fresh run never overwrites either
    (:func:`netmoments.experiments.runner.resume_metadata`).

    With ``resume=True`` the settings must match the file's, except that ``images`` may grow: the chunks already
    done are kept (a chunk's digits do not depend on the total), and an old last chunk that was cut short is run
    again with its full set of digits.
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive int, got {images!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if suite in _SEED_SUITE and chunk != _SEED_CHUNK[_SEED_SUITE[suite]]:
        raise ValueError(f"chunk must be {_SEED_CHUNK[_SEED_SUITE[suite]]} for suite {suite!r} (the "
                         f"{_SEED_SUITE[suite]} run's "
                         f"chunks, whose seeds it reuses), got {chunk}")
    out = Path(out)
    meta_path = out.with_suffix(".json")
    with output_lock(out, meta_path):
        # Checked before anything is computed: a resume with other settings, or without the metadata that says
        # which settings wrote the file, would mix two experiments under one label.
        old = resume_metadata(out, meta_path, runner_options.get("resume", False))
        check_writable(out)
        check_writable(meta_path)
        if old is not None:
            old_settings = dict(old["settings"])
            if old_settings.get("suite") != suite or old_settings.get("split") != split:
                raise RunnerError(f"{out} was written with other settings ({meta_path}: suite "
                                  f"{old_settings.get('suite')!r}, split {old_settings.get('split')!r}); use the same "
                                  "options (only --images may grow on --resume)")
        ctx = SuiteContext(split, images, chunk)
        return _run_suite_locked(suite, out, meta_path, old, ctx, split, images, chunk, command, runner_options)


def _run_suite_locked(suite, out, meta_path, old, ctx, split, images, chunk, command, runner_options):
    """:func:`run_suite` once its files are locked and its digits loaded: the metadata, then the chunks."""
    settings = dict(suite=suite, split=split, images=images, chunk=chunk, draws=DRAWS, tuned=TUNED)
    settings.update(_SUITE_SETTINGS.get(suite, {}))
    settings = json.loads(json.dumps(settings))
    meta, grown_from = _suite_metadata(old, settings, out, meta_path, ctx)
    tasks = [(suite, c) for c in range(math.ceil(len(ctx.labels) / chunk))]
    sitting = start_sitting(command, runner_options, extra_versions=EXTRA_VERSIONS)
    if grown_from is not None:
        sitting["grown_from_images"] = grown_from
    meta["sittings"].append(sitting)

    def count_done():
        rows = read_rows(out) if out.exists() else []
        meta["tasks_done"], meta["n_tasks"] = len({r["task"] for r in rows}), len(tasks)
        meta["images_done"] = len({r["image"] for r in rows})
        meta["wall_s_total"] = round(sum(s.get("wall_s", 0.0) for s in meta["sittings"]), 1)

    count_done()
    write_json(meta_path, meta)  # before the first task: whenever the run stops, a resume can check its settings

    def checkpoint(summary):
        end_sitting(sitting, summary)
        count_done()
        write_json(meta_path, meta)

    run_tasks(tasks, suite_task, out, context=ctx, desc=f"attack {suite}", checkpoint=checkpoint,
              checkpoint_s=60.0, **runner_options)
    return meta


def _suite_metadata(old, settings: dict, out: Path, meta_path: Path, ctx: SuiteContext) -> tuple[dict, int | None]:
    """The metadata a run goes on with: a new one, or ``old`` (the resumed run's), whose settings must be
    ``settings`` except for more ``images``. Returns it and the number of digits the run grew from (``None``)."""
    if old is None:
        return {"settings": settings, "sittings": []}, None
    old_settings = dict(old["settings"])
    old_images = old_settings.pop("images", None)
    images, chunk = settings["images"], settings["chunk"]
    same_but_images = old_settings == {k: v for k, v in settings.items() if k != "images"}
    if old["settings"] != settings and not (same_but_images and isinstance(old_images, int) and old_images <= images):
        raise RunnerError(f"{out} was written with other settings ({meta_path}); use the same options "
                          "(only --images may grow on --resume)")
    if old_images == images:
        return old, None
    # Chunk c holds the same digits whatever the total, except an old last chunk that was cut short:
    # it now holds more digits under the same task id, so it is dropped and run again.
    old_count = min(old_images, len(ctx.labels))
    if old_count % chunk and out.exists():
        drop_tasks(out, [task_id((settings["suite"], old_count // chunk))])
    old["settings"] = settings
    return old, old_images


#: the L0 budget (changed pixels, one of :data:`netmoments.attacks.metrics.L0_BUDGETS`) that tuning scores by
SPARSE_BUDGET = 20
L0_PGD_STEP_GRID = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
FMN_GRID = dict(max_stepsize=(0.3, 1.0, 3.0), gamma=(0.05, 0.3))


def tune_fmn(model, images, labels, norm, grid=FMN_GRID, steps=100):
    """Foolbox FMN's ``max_stepsize`` x ``gamma`` grid at ``steps`` steps, scored like every sparse method: the
    success rate within ``k = 20`` pixels (ties: the smaller median L0). Returns ``(best options, scores)``."""
    from ..attacks import fmn_attack
    from ..attacks.metrics import image_metrics

    scores = {}
    for max_stepsize in grid["max_stepsize"]:
        for gamma in grid["gamma"]:
            name = f"max_stepsize={max_stepsize},gamma={gamma}"
            try:
                res = fmn_attack(model, images, labels, norm=norm, steps=steps, max_stepsize=max_stepsize,
                                 gamma=gamma)
            except IndexError as err:
                # Foolbox 3.3.4's L0 projection indexes past the last pixel once its epsilon outgrows the image
                # (large gamma): such a setting cannot be used, so it is recorded and never chosen.
                scores[name] = dict(max_stepsize=max_stepsize, gamma=gamma, error=f"IndexError: {err}")
                continue
            m = image_metrics(model, res, labels, n_samples=1, generator=torch.Generator().manual_seed(0))
            scores[name] = dict(
                max_stepsize=max_stepsize, gamma=gamma,
                success_l0_20=float(m.success_within_l0(SPARSE_BUDGET).mean()),
                success=float(m.success.mean()), l0_median=float(np.median(m.l0)),  # inf where not fooled
                time_per_image_s=res.time_s / len(labels))
    usable = [v for v in scores.values() if "error" not in v]
    if not usable:
        raise RuntimeError(f"every FMN setting failed: {scores}")
    best = max(usable, key=lambda v: (v["success_l0_20"], -v["l0_median"]))
    return dict(max_stepsize=best["max_stepsize"], gamma=best["gamma"]), scores


def tune(out, images=32, progress=False, command=None):
    """Tune on *training* digits (never the reported test digits) and write ``out`` (JSON):

    * L0-PGD's step size over ``L0_PGD_STEP_GRID`` at ``k = 20`` (one restart), by success rate;
    * Foolbox L0-FMN's and L1-FMN's ``max_stepsize`` and ``gamma`` over ``FMN_GRID`` (:func:`tune_fmn`);
    * our sparse attack's L1 price ``l1_weight`` over ``(0.1, 0.3, 1.0)``, by the mean expected success at
      ``k = 20`` pixels on the draws (ties: the higher overall success).
    """
    from ..attacks import gaussian_attack, sparse_pgd_attack, tune_step_size
    from ..attacks.metrics import image_metrics

    start = time.perf_counter()
    model, x, y, idx = load_digits("train", images)
    best_step, step_scores = tune_step_size(sparse_pgd_attack, model, x, y, L0_PGD_STEP_GRID, k=SPARSE_BUDGET)
    fmn = {norm: tune_fmn(model, x, y, norm) for norm in ("l0", "l1")}
    weights = {}
    for w in (0.1, 0.3, 1.0):
        res = gaussian_attack(model, x, y, l1_weight=w)
        m = image_metrics(model, res, y, n_samples=DRAWS, generator=torch.Generator().manual_seed(0))
        weights[w] = dict(success_l0_20=float(m.success_within_l0(SPARSE_BUDGET).mean()),
                          success=float(m.success.mean()),
                          l0_median=float(np.median(m.l0)), time_per_image_s=res.time_s / len(y))
    best_w = max(weights, key=lambda w: (weights[w]["success_l0_20"], weights[w]["success"]))
    data = dict(split="train", images=len(y), image_indices=idx.tolist(), l0_pgd_step_size=step_scores,
                l0_pgd_best=best_step, fmn_l0=fmn["l0"][1], fmn_l0_best=fmn["l0"][0], fmn_l1=fmn["l1"][1],
                fmn_l1_best=fmn["l1"][0], l1_weight=weights, l1_weight_best=best_w, command=command,
                git_commit=git_commit(),
                versions=versions(EXTRA_VERSIONS), machine=machine(), date=time.strftime("%Y-%m-%d %H:%M %Z"),
                wall_s=round(time.perf_counter() - start, 1))
    write_json(Path(out), data)
    return data
