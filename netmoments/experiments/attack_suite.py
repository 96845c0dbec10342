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
* ``ablation``: mean only (variance none) vs the linear variance, no noise reward, no final check, EOT at about
  our wall time; the exact and series variances score the linear attack's final distribution.
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

__all__ = ["SUITES", "TUNED", "suite_task", "run_suite", "load_digits"]

SUITES = ("sparse", "ablation", "smooth", "targeted")

# Set on training digits (``--split train``, see ``book/data/attack_tuning.json``), then frozen for test runs.
# L0-PGD's success at k = 20 plateaus from step 2 to 8 (0.94); the smallest step on the plateau is kept.
TUNED = dict(l0_pgd_step_size=2.0, l0_pgd_restarts=2, l0_pgd_k=(10, 20, 40), eot_samples=4, eot_steps=100,
             fmn_l0=dict(max_stepsize=3.0, gamma=0.05), fmn_l1=dict(max_stepsize=1.0, gamma=0.05))

DRAWS = 100  # draws per image for every distribution attack's metrics


def load_digits(split: str, count: int, offset: int = 0):
    """LeNet and the first ``count`` (after ``offset``) correctly classified digits of ``split``, with their
    indices in the split."""
    from ..data import load_mnist
    from ..models import load_lenet

    model = load_lenet()
    for p in model.parameters():
        p.requires_grad_(False)
    images, labels = load_mnist(split)
    with torch.no_grad():
        ok = model(images).argmax(-1) == labels
    idx = ok.nonzero().flatten()[offset : offset + count]
    return model, images[idx], labels[idx], idx


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
    m = image_metrics(model, res, labels, target, n_draws=DRAWS, generator=gen)
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

    chk = surrogate_check(model, res, labels, target, n_draws=DRAWS, generator=torch.Generator().manual_seed(seed))
    out = {k: v.cpu().numpy() for k, v in chk.items()}
    for variance in variances:
        other = surrogate_check(model, res, labels, target, n_draws=2, variance=variance,
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
    from ..attacks import eot_attack, fmn_attack, gaussian_attack, l0_pgd_attack, smooth_pgd_attack
    from .runner import seed_from_key

    suite, chunk_id = key
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    model = ctx.model
    images, labels, index = ctx.batch(chunk_id)
    seed = seed_from_key(0, suite, chunk_id) % (2**31)
    torch.manual_seed(seed)
    yard = _yardstick(model, images, labels) if only is None else float("nan")
    rows = []
    columns = _EXTRA_ABLATION if suite == "ablation" else _EXTRA

    def want(method):
        return only is None or method in only

    def add(method, attack, target=None, extra=None):
        """Run ``attack()`` (lazily: skipped unless wanted) and append its rows; returns the result."""
        if not want(method):
            return None
        res = attack()
        rows.extend(_rows(model, method, res, images, labels, index, target, yard, seed,
                          extra(res) if extra else None, columns))
        return res

    def ours_extra(target=None, variances=()):
        return lambda res: _ours_extra(model, res, labels, target, seed, variances)

    step, restarts = TUNED["l0_pgd_step_size"], TUNED["l0_pgd_restarts"]
    if suite == "sparse":
        add("gauss-sparse", lambda: gaussian_attack(model, images, labels, seed=seed), extra=ours_extra())
        add("gauss-sparse-mean", lambda: gaussian_attack(model, images, labels, variables="mean", variance="none",
                                                         seed=seed))
        add("fmn-l0", lambda: fmn_attack(model, images, labels, norm="l0", steps=100, **TUNED["fmn_l0"]))
        add("fmn-l1", lambda: fmn_attack(model, images, labels, norm="l1", steps=100, **TUNED["fmn_l1"]))
        for k in TUNED["l0_pgd_k"]:
            add(f"l0-pgd-k{k}", lambda k=k: l0_pgd_attack(model, images, labels, k=k, step_size=step,
                                                          restarts=restarts, seed=seed))
        # matched per image: our pixel count on the draws (median over all draws), at least 1
        ours_l0 = [r["l0_all"] for r in rows if r["method"] == "gauss-sparse"]
        if ours_l0:
            k_match = torch.tensor([max(1, int(math.ceil(v))) for v in ours_l0], dtype=torch.int64)
            add("l0-pgd-matched", lambda: l0_pgd_attack(model, images, labels, k=k_match, step_size=step,
                                                        restarts=restarts, seed=seed))
        add("eot-sparse", lambda: eot_attack(model, images, labels, structure="sparse", samples=TUNED["eot_samples"],
                                             steps=TUNED["eot_steps"], seed=seed))
    elif suite == "ablation":
        # Optimizing with the exact / series covariance costs ~10 s per step per digit here (1024^2 / 2 hidden
        # pairs), so those two variances score the final distribution of the linear-variance attack instead.
        ours = add("gauss-var-linear", lambda: gaussian_attack(model, images, labels, variance="linear", seed=seed),
                   extra=ours_extra(variances=("exact", "series")))
        add("gauss-var-none-mean-only", lambda: gaussian_attack(model, images, labels, variance="none",
                                                                variables="mean", seed=seed), extra=ours_extra())
        add("gauss-no-noise-reward", lambda: gaussian_attack(model, images, labels, noise_reward=0.0, seed=seed),
            extra=ours_extra())
        add("gauss-no-final-check", lambda: gaussian_attack(model, images, labels, tighten_rounds=0, final_draws=0,
                                                            seed=seed), extra=ours_extra())
        if ours is not None:
            # EOT at about our wall time: as many 4-sample steps as fit in our time per image (at least 5)
            probe = eot_attack(model, images, labels, samples=4, steps=5, seed=seed)
            steps = max(5, int(5 * ours.time_s / max(probe.time_s, 1e-9)))
            add("eot-sparse-equal-time", lambda: eot_attack(model, images, labels, samples=4, steps=steps,
                                                            seed=seed))
    elif suite == "smooth":
        ours = add("gauss-smooth", lambda: gaussian_attack(model, images, labels, structure="smooth", seed=seed))
        if ours is not None:
            # Per-image budgets, enforced before clipping: the median L2 of our draws (noise included, after
            # clipping), i.e. the size an observer sees; and, for comparison, the L2 of our mean shift alone.
            ours_l2 = [r["l2_all"] for r in rows if r["method"] == "gauss-smooth"]
            eps = torch.tensor(ours_l2, dtype=images.dtype).clamp_min(1e-3)
            add("pgd-blur-matched", lambda: smooth_pgd_attack(model, images, labels, eps=eps, blur_sigma=1.5))
            eps_mean = ours.delta.flatten(1).norm(dim=1).clamp_min(1e-3)
            add("pgd-blur-matched-mean", lambda: smooth_pgd_attack(model, images, labels, eps=eps_mean,
                                                                   blur_sigma=1.5))
        add("eot-smooth", lambda: eot_attack(model, images, labels, structure="smooth", samples=TUNED["eot_samples"],
                                             steps=TUNED["eot_steps"], seed=seed))
        add("gauss-sparse+smooth", lambda: gaussian_attack(model, images, labels, structure="sparse+smooth",
                                                           seed=seed))
    elif suite == "targeted":
        for shift in range(1, 10):
            target = (labels + shift) % 10
            add("gauss-sparse", lambda: gaussian_attack(model, images, labels, target=target, seed=seed), target,
                extra=ours_extra(target))
            add("fmn-l0", lambda: fmn_attack(model, images, labels, target=target, norm="l0", steps=100,
                                             **TUNED["fmn_l0"]), target)
    return rows


def run_suite(suite, out, *, split="test", images=100, chunk=8, command=None, **runner_options):
    """Run (or resume) ``suite`` over ``images`` correctly classified digits of ``split`` into ``out``
    (``.csv``); writes ``out`` with ``.json`` (settings, provenance and progress) before the first task and at every
    checkpoint. Both files are locked for the run, and a fresh run never overwrites either
    (:func:`netmoments.experiments.runner.resume_metadata`).

    With ``resume=True`` the settings must match the file's, except that ``images`` may grow: the chunks already
    done are kept (a chunk's digits do not depend on the total), and an old last chunk that was cut short is run
    again with its full set of digits.
    """
    from .runner import RunnerError, check_writable, output_lock, resume_metadata

    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive int, got {images!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
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
    from .runner import RunnerError, run_tasks
    from .tightness import _git_commit, _load_average, _machine, _versions, _write_json

    settings = dict(suite=suite, split=split, images=images, chunk=chunk, draws=DRAWS, tuned=TUNED)
    meta = {"settings": json.loads(json.dumps(settings)), "sittings": []}
    grown_from = None
    if old is not None:
        old_settings = dict(old["settings"])
        old_images = old_settings.pop("images", None)
        same_but_images = old_settings == {k: v for k, v in meta["settings"].items() if k != "images"}
        if old["settings"] != meta["settings"] and not (
                same_but_images and isinstance(old_images, int) and old_images <= images):
            raise RunnerError(f"{out} was written with other settings ({meta_path}); use the same options "
                              "(only --images may grow on --resume)")
        if old_images != images:
            # Chunk c holds the same digits whatever the total, except an old last chunk that was cut short:
            # it now holds more digits under the same task id, so it is dropped and run again.
            old_count = min(old_images, len(ctx.labels))
            if old_count % chunk and out.exists():
                from .runner import drop_tasks, task_id

                drop_tasks(out, [task_id((suite, old_count // chunk))])
            grown_from = old_images
            old["settings"] = meta["settings"]
        meta = old
    n_chunks = math.ceil(len(ctx.labels) / chunk)
    tasks = [(suite, c) for c in range(n_chunks)]
    sitting = {"command": command, "git_commit": _git_commit(), "versions": _versions_plus(_versions()),
               "machine": _machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "load_average_at_start": _load_average(),
               "runner": {k: v for k, v in runner_options.items() if k not in ("progress", "stop")}}
    if grown_from is not None:
        sitting["grown_from_images"] = grown_from
    meta["sittings"].append(sitting)

    def count_done():
        from .runner import read_rows

        rows = read_rows(out) if out.exists() else []
        meta["tasks_done"], meta["n_tasks"] = len({r["task"] for r in rows}), len(tasks)
        meta["images_done"] = len({r["image"] for r in rows})
        meta["wall_s_total"] = round(sum(s.get("wall_s", 0.0) for s in meta["sittings"]), 1)

    count_done()
    _write_json(meta_path, meta)  # before the first task: whenever the run stops, a resume can check its settings

    def checkpoint(summary):
        sitting.update(summary.as_dict())
        sitting["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        sitting["load_average_at_end"] = _load_average()
        count_done()
        _write_json(meta_path, meta)

    run_tasks(tasks, suite_task, out, context=ctx, desc=f"attack {suite}", checkpoint=checkpoint,
              checkpoint_s=60.0, **runner_options)
    return meta


def _versions_plus(base):
    from importlib import metadata

    for name in ("foolbox", "scikit-image"):
        try:
            base[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            base[name] = None
    return base


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
            m = image_metrics(model, res, labels, n_draws=1, generator=torch.Generator().manual_seed(0))
            scores[name] = dict(
                max_stepsize=max_stepsize, gamma=gamma, success_l0_20=float(m.success_l0[:, 3].mean()),
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
    from .tightness import _git_commit, _machine, _versions, _write_json

    start = time.perf_counter()
    model, x, y, idx = load_digits("train", images)
    best_step, step_scores = tune_step_size(sparse_pgd_attack, model, x, y, L0_PGD_STEP_GRID, k=20)
    fmn = {norm: tune_fmn(model, x, y, norm) for norm in ("l0", "l1")}
    weights = {}
    for w in (0.1, 0.3, 1.0):
        res = gaussian_attack(model, x, y, l1_weight=w)
        m = image_metrics(model, res, y, n_draws=DRAWS, generator=torch.Generator().manual_seed(0))
        weights[w] = dict(success_l0_20=float(m.success_l0[:, 3].mean()), success=float(m.success.mean()),
                          l0_median=float(np.median(m.l0)), time_per_image_s=res.time_s / len(y))
    best_w = max(weights, key=lambda w: (weights[w]["success_l0_20"], weights[w]["success"]))
    data = dict(split="train", images=len(y), image_indices=idx.tolist(), l0_pgd_step_size=step_scores,
                l0_pgd_best=best_step, fmn_l0=fmn["l0"][1], fmn_l0_best=fmn["l0"][0], fmn_l1=fmn["l1"][1],
                fmn_l1_best=fmn["l1"][0], l1_weight=weights, l1_weight_best=best_w, command=command,
                git_commit=_git_commit(),
                versions=_versions_plus(_versions()), machine=_machine(), date=time.strftime("%Y-%m-%d %H:%M %Z"),
                wall_s=round(time.perf_counter() - start, 1))
    _write_json(Path(out), data)
    return data
