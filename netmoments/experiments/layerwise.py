"""Layer-by-layer closures against the tightness run's Monte Carlo truth, and against sampling at equal cost.

Each task ``(image, sigma, cov, method)`` rebuilds the exact input covariance of the tightness run's task
``(image, sigma, cov)`` (the covariance is seeded from that key), computes LeNet's output mean and variance with
one method, and records its CPU time together with the time of one LeNet forward pass per draw measured in the
same process, so the cost is also known in draws. The truth (10^4 draws per task) is the committed tightness
rows (``point == "input"``): no new sampling is needed to score a closure.

Methods: ``"diag"``, ``"lowrank"``, ``"full"`` (:func:`netmoments.propagate.moments` in float64),
``"lowrank32"`` (the same closure in float32), ``"unscented"`` (the sigma-point transform, 1,569 passes) and
``"tsl"`` (the two-stage linearization at the digit with its exact moments, as the tightness run computed them:
timed here, since it is also the price of the control variate), and two samplers measured the same way: ``"mc"``
(plain Monte Carlo, ``mc_draws`` draws, fresh seeds) and ``"cv"`` (``cv_draws`` draws with the TSL as a control
variate).

Other networks (``--model deep_cnn`` or ``mlp``; see :mod:`netmoments.models`) have no committed truth: the
``"truth"`` method draws one (``--truth-draws``, 10^4 by default, seeded apart from every other method), and
``--report --truth FILE`` scores against a file of such rows as it does against the tightness run's. The same
method on LeNet with ``--truth-draws 100000`` gives a finer truth than the tightness run's.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import propagate
from ..linearize import prune_inactive_units, two_stage_linearize
from .runner import seed_from_key
from .tightness import BLUR_STD, TightnessConfig, build_context, noise_factor, sparse_pixels

__all__ = [
    "METHODS",
    "LayerwiseConfig",
    "task_list",
    "layerwise_task",
    "method_moments",
    "task_input",
    "forward_seconds_per_draw",
    "image_metrics",
    "equal_cost_mc_errors",
    "control_variate_errors",
    "summary_table",
    "cost_accuracy",
]

#: The moment methods the layer-by-layer experiment compares.
METHODS = ("diag", "lowrank", "lowrank32", "full", "unscented", "tsl", "mc", "cv", "truth")
MODELS = ("lenet", "deep_cnn", "mlp")
# settings added after the first runs were committed, with the value those runs used
_SETTING_DEFAULTS = {"model": "lenet", "truth_draws": 10_000}
_TRUTH = Path(__file__).resolve().parents[2] / "book" / "data" / "tightness_scale.jsonl.gz"


@dataclass(frozen=True)
class LayerwiseConfig:
    """Settings of a layer-wise run; ``seed``, ``sparse_pixels`` and ``blur_std`` must be the tightness run's."""

    seed: int = 0
    sparse_pixels: int = 60
    blur_std: float = BLUR_STD
    draws_timed: int = 500
    mc_draws: int = 1000  # plain Monte Carlo ("mc"): about lowrank32's measured CPU time, sampling included
    cv_draws: int = 500  # control-variate Monte Carlo ("cv"): about the same time, the TSL and g included

    def fingerprint(self) -> dict:
        return asdict(self)


def task_list(images, sigmas, covs, methods) -> list[tuple]:
    """Keys ``(image, sigma, cov, method)``, image-major."""
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if "truth" in methods and len(set(methods)) > 1:
        # its rows carry two more columns (var_se, n), and a truth is a file of its own for --report --truth
        raise ValueError("the 'truth' method runs alone: write it to its own --out, then score with --truth FILE")
    return [(int(i), float(s), c, m) for i in images for c in covs for s in sigmas for m in methods]


def forward_seconds_per_draw(mc_model, x: torch.Tensor, n_draws: int = 500, repeats: int = 2) -> float:
    """CPU seconds of one float32 forward pass per draw of ``mc_model`` (channels-last, as the truth was drawn)."""
    inputs = (x.float() + 0.01 * torch.randn(n_draws, *x.shape[1:])).contiguous(memory_format=torch.channels_last)
    best = math.inf
    with torch.no_grad():
        mc_model(inputs)  # warm-up: first-call allocations are not what a long run pays
        for _ in range(repeats):
            start = time.process_time()
            mc_model(inputs)
            best = min(best, time.process_time() - start)
    return best / n_draws


def method_moments(method: str, model64, model32, x: torch.Tensor, cov: torch.Tensor, *, mc_model=None, draws: int = 0,
                   generator: torch.Generator | None = None):  # fmt: skip
    """The output mean and variance ``((1, 10), (1, 10))`` of one method on the digit ``x`` under ``cov``.

    ``"mc"`` and ``"cv"`` sample: ``draws`` passes of ``mc_model`` (float32, as the truth was drawn) from
    ``generator``; ``"cv"`` uses the TSL at the digit, with its exact moments, as a control variate. ``"truth"``
    samples like ``"mc"`` and also returns the variance's standard error ``(1, 10)``.
    """
    from ..montecarlo import monte_carlo_moments

    flat = x.reshape(1, -1)
    if method in ("tsl", "cv"):
        net = prune_inactive_units(two_stage_linearize(model32, x.float()).to(torch.float64), flat, cov)
        if method == "tsl":
            return net.moments(flat, cov, method="exact", output="var")
    if method in ("mc", "cv", "truth"):
        def f(points):
            inputs = points.reshape(-1, 1, 28, 28).float().contiguous(memory_format=torch.channels_last)
            return mc_model(inputs).to(torch.float64).reshape(*points.shape[:-1], -1)  # (N, 1, 10)

        res = monte_carlo_moments(f, flat, cov, draws, batch_size=1000, generator=generator,
                                  control=net if method == "cv" else None)  # fmt: skip
        if method == "truth":
            return res.mean, res.var, res.var_se
        return res.mean, res.var
    if method == "unscented":
        return propagate.unscented(model64, x, cov, output="var")
    if method == "lowrank32":
        return propagate.moments(model32, x.float(), cov.float(), closure="lowrank", output="var")
    return propagate.moments(model64, x, cov, closure=method, output="var")


def task_input(ctx, image: int, sigma: float, cov_kind: str):
    """The digit ``(1, 1, 28, 28)``, its label and the input covariance ``(784, 784)`` (float64) of the tightness run's
    task ``(image, sigma, cov_kind)``, regenerated from its key exactly as that run drew it."""
    cfg: LayerwiseConfig = ctx.layerwise
    x = ctx.images[image].to(torch.float64).reshape(1, 1, 28, 28)
    label = int(ctx.labels[image])
    pixels = sparse_pixels(ctx.model, x.reshape(-1).float(), label, cfg.sparse_pixels) if cov_kind == "sparse" else None
    generator = torch.Generator().manual_seed(seed_from_key(cfg.seed, image, sigma, cov_kind, "cov"))
    factor = noise_factor(cov_kind, sigma, 784, generator, pixels, cfg.blur_std)
    return x, label, factor @ factor.mT


def layerwise_task(key, ctx) -> list[dict]:
    """One method on one tightness task: the output mean and variance, their CPU time, and the draw cost."""
    image, sigma, cov_kind, method = key
    cfg: LayerwiseConfig = ctx.layerwise
    x, label, cov = task_input(ctx, image, sigma, cov_kind)
    with torch.no_grad():
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        draws = {"mc": cfg.mc_draws, "cv": cfg.cv_draws, "truth": ctx.truth_draws}.get(method, 0)
        generator = torch.Generator().manual_seed(seed_from_key(cfg.seed, image, sigma, cov_kind, "layerwise", method))
        mean, var, *var_se = method_moments(method, ctx.model64, ctx.model, x, cov, mc_model=ctx.mc_model,
                                            draws=draws, generator=generator)  # fmt: skip
        cpu = time.process_time() - start_cpu
        wall = time.perf_counter() - start_wall
    per_draw = forward_seconds_per_draw(ctx.mc_model, x, cfg.draws_timed)
    extra = {"var_se": [float(f"{v:.6g}") for v in var_se[0].reshape(-1).tolist()], "n": draws} if var_se else {}
    return [
        {
            "image": int(image), "label": label, "sigma": float(sigma), "cov": cov_kind, "method": method,
            "mean": [float(f"{v:.9g}") for v in mean.reshape(-1).tolist()],
            "var": [float(f"{v:.9g}") for v in var.reshape(-1).tolist()],
            "cpu_s": round(cpu, 4), "wall_s": round(wall, 4), "draw_cpu_s": float(f"{per_draw:.4g}"),
            "draws_equal_cost": int(cpu / per_draw), **extra,
        }
    ]  # fmt: skip


def build_layerwise_context(config: LayerwiseConfig, n_images: int | None = None, model: str = "lenet",
                            truth_draws: int = 10_000):  # fmt: skip
    """The shipped network ``model`` (float32 ``model``, float64 ``model64``, channels-last ``mc_model``) and the
    test digits, as the tightness run used them; ``truth_draws`` is what the ``"truth"`` method draws."""
    from ..models import load_or_train

    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if not (isinstance(truth_draws, int) and truth_draws >= 2):
        raise ValueError(f"truth_draws must be an int >= 2, got {truth_draws!r}")
    ctx = build_context(TightnessConfig(points=("input",), seed=config.seed), model=load_or_train(model),
                        n_images=n_images)  # fmt: skip
    ctx.layerwise = config
    ctx.model_name = model
    ctx.truth_draws = truth_draws
    ctx.model64 = copy.deepcopy(ctx.model).double()
    return ctx


# --------------------------------------------------------------------------------------------- analysis


def _truth(tightness_rows) -> dict:
    """``(image, sigma, cov) -> (mc_mean, mc_var, mc_var_se, n)`` from the tightness rows at the digit itself, or
    from this experiment's own ``"truth"`` rows (other networks, finer truths). Where both hold a task, the later
    row wins: pass the tightness rows first and a finer truth after them to score against the finer one."""
    out = {}
    for r in tightness_rows:
        if r.get("point") == "input":
            out[(r["image"], r["sigma"], r["cov"])] = (
                np.asarray(r["mc_mean"], float), np.asarray(r["mc_var"], float), np.asarray(r["mc_var_se"], float),
                int(r["mc_samples"]),
            )  # fmt: skip
        elif r.get("method") == "truth":
            out[(r["image"], r["sigma"], r["cov"])] = (
                np.asarray(r["mean"], float), np.asarray(r["var"], float), np.asarray(r["var_se"], float), int(r["n"]),
            )  # fmt: skip
    return out


def image_metrics(rows, tightness_rows, sigma: float, cov: str, method: str) -> dict:
    """Per digit: ``var_err`` (mean over logits of the symmetric relative error of the variance), ``zmu`` (median
    over logits of ``|mean - truth| / sd``), ``cpu_s`` and ``draws`` (the draws the same CPU time buys), plus the
    truth's own noise in the same units (``truth_var_err``: E|relative error| of a perfect method; ``truth_zmu``)."""
    truth = _truth(tightness_rows)
    out = {k: [] for k in ("image", "var_err", "zmu", "bias_low", "cpu_s", "draws", "truth_var_rel_se", "truth_n")}
    for r in rows:
        if r["sigma"] != sigma or r["cov"] != cov or r["method"] != method:
            continue
        key = (r["image"], r["sigma"], r["cov"])
        if key not in truth:
            continue
        mc_mean, mc_var, mc_var_se, n = truth[key]
        mean, var = np.asarray(r["mean"], float), np.asarray(r["var"], float)
        denom = np.abs(var) + np.abs(mc_var)
        sre = np.where(denom > 0, 2 * np.abs(var - mc_var) / np.where(denom > 0, denom, 1), 0.0)
        out["image"].append(r["image"])
        out["var_err"].append(float(np.mean(sre)))
        out["zmu"].append(float(np.median(np.abs(mean - mc_mean) / np.sqrt(mc_var))))
        out["bias_low"].append(float(np.mean(var < mc_var)))
        out["cpu_s"].append(r["cpu_s"])
        out["draws"].append(r["draws_equal_cost"])
        out["truth_var_rel_se"].append(float(np.mean(mc_var_se / mc_var)))
        out["truth_n"].append(n)
    return {k: np.asarray(v) for k, v in out.items()}


def equal_cost_mc_errors(draws, truth_var_rel_se, truth_n) -> tuple[np.ndarray, np.ndarray]:
    """Expected errors of plain Monte Carlo with ``draws`` samples, scored against a ``truth_n``-draw truth.

    ``N`` counts forward passes only: drawing the samples (about 0.07 of a pass each) is left out, so these errors
    are slightly optimistic for sampling; the ``"mc"`` method measures plain sampling with its full cost.

    The mean: the median over logits of ``|Z| sqrt(1/N + 1/N_truth)``, i.e. ``0.674 sqrt(1/N + 1/N_truth)`` in
    standard deviations. The variance: its relative standard error scales as ``1/sqrt(N)``; the truth's own
    (``truth_var_rel_se``, which carries each logit's kurtosis) gives it at ``N_truth``, so the expected symmetric
    relative error is ``E|Z| = sqrt(2/pi)`` times ``rel_se_truth sqrt(N_truth/N + 1)``.
    """
    draws = np.maximum(np.asarray(draws, float), 2.0)
    truth_n = np.asarray(truth_n, float)
    zmu = 0.6745 * np.sqrt(1.0 / draws + 1.0 / truth_n)
    var_err = math.sqrt(2 / math.pi) * np.asarray(truth_var_rel_se) * np.sqrt(truth_n / draws + 1.0)
    return var_err, zmu


# ---------------------------------------------------------------------------------------------------- CLI


def _index_range(text: str) -> list[int]:
    """``"0:100"`` -> 0..99 (test digits), ``"7"`` -> [7]."""
    import argparse

    try:
        if ":" in text:
            start, stop = (int(p) for p in text.split(":"))
            values = list(range(start, stop))
        else:
            values = [int(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected IMAGE or START:STOP, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative image indices, got {text!r}")
    return values


def _choices(allowed):
    import argparse

    def parse(text: str) -> list[str]:
        items = [t for t in text.split(",") if t]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated), got {text!r}")
        return items

    return parse


def _sigmas(text: str) -> list[float]:
    import argparse

    try:
        values = [float(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise argparse.ArgumentTypeError(f"sigmas must be positive and finite, got {text!r}")
    return values


def register(subparsers):
    from .runner import add_runner_arguments
    from .tightness import COV_KINDS

    parser = subparsers.add_parser(
        "layerwise",
        help="layer-by-layer closures (diag, lowrank, full, unscented) against the tightness run's truth",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--out", required=True, help="results (.jsonl or .jsonl.gz); metadata beside it (.json)")
    parser.add_argument("--images", type=_index_range, default=list(range(100)), help="test digits, START:STOP")
    parser.add_argument("--sigmas", type=_sigmas, default=[0.01, 0.05, 0.2])
    parser.add_argument("--covs", type=_choices(COV_KINDS), default=["dense"])
    parser.add_argument("--methods", type=_choices(METHODS), default=["diag", "lowrank", "lowrank32"])
    parser.add_argument("--report", action="store_true",
                        help="print the summary tables of --out (and of --also files) instead of running")  # fmt: skip
    parser.add_argument("--also", action="append", default=[], metavar="FILE",
                        help="with --report: more result files to pool with --out (e.g. a run of other methods)")
    parser.add_argument("--truth", default=str(_TRUTH),
                        help="with --report: the Monte Carlo truth, the tightness run's rows (default) or a file of "
                             "this experiment's 'truth' rows")  # fmt: skip
    parser.add_argument("--model", choices=MODELS, default="lenet", help="the shipped network (default: LeNet)")
    parser.add_argument("--truth-draws", type=int, default=10_000, help="draws of the 'truth' method")
    parser.add_argument("--mc-draws", type=int, default=LayerwiseConfig.mc_draws,
                        help="draws of plain Monte Carlo ('mc'), to measure it at other budgets")
    parser.add_argument("--cv-draws", type=int, default=LayerwiseConfig.cv_draws,
                        help="draws of control-variate Monte Carlo ('cv')")
    add_runner_arguments(parser)
    parser.set_defaults(func=main)
    return parser


def report(paths, truth_path) -> str:
    """The summary tables of the result files ``paths`` against the tightness rows at ``truth_path``."""
    import gzip
    import json

    from .runner import read_rows

    rows = [r for path in paths for r in read_rows(path) if r["method"] != "truth"]
    images = {r["image"] for r in rows}
    opener = gzip.open if str(truth_path).endswith(".gz") else open
    with opener(truth_path, "rt") as f:
        truth = [t for t in map(json.loads, f)
                 if (t.get("point") == "input" or t.get("method") == "truth") and t["image"] in images]  # fmt: skip
    parts = []
    for cov in sorted({r["cov"] for r in rows}):
        for sigma in sorted({r["sigma"] for r in rows if r["cov"] == cov}):
            parts.append(f"### {cov} noise, sigma = {sigma}\n\n" + format_summary(summary_table(rows, truth, sigma, cov)))
    return "\n\n".join(parts)


def main(args) -> int:
    import sys

    if args.report:
        try:
            print(report([args.out, *args.also], args.truth))
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0

    from ..provenance import run_metadata
    from .runner import (RunnerError, command_line, output_lock, resume_metadata, run_tasks, runner_kwargs,
                         stop_on_sigterm, write_json)

    out = Path(args.out)
    stem = out.with_suffix("") if out.suffix == ".gz" else out
    meta_path = stem.with_suffix(".json")
    if min(args.mc_draws, args.cv_draws) < 2:
        print(f"error: --mc-draws and --cv-draws must be at least 2, got {args.mc_draws} and {args.cv_draws}",
              file=sys.stderr)
        return 2
    config = LayerwiseConfig(mc_draws=args.mc_draws, cv_draws=args.cv_draws)
    # the thread count is a setting: a row's CPU time (its cost in draws) depends on it
    settings = {"config": config.fingerprint(), "images": args.images, "sigmas": args.sigmas, "covs": args.covs,
                "methods": args.methods, "threads": args.threads, "model": args.model,
                "truth_draws": args.truth_draws}  # fmt: skip
    try:
        with output_lock(out, meta_path):
            old = resume_metadata(out, meta_path, args.resume)
            meta = {"settings": settings, "sittings": []}
            if old is not None:
                differ = sorted(k for k in settings if old["settings"].get(k, _SETTING_DEFAULTS.get(k)) != settings[k])
                # a run may grow to more digits (every task already done stays a task of the new settings);
                # any other change would mix two experiments in one file
                if differ == ["images"] and set(old["settings"]["images"]) <= set(settings["images"]):
                    old["settings"]["images"] = settings["images"]
                elif differ:
                    raise RunnerError(f"{out} was written with other settings ({', '.join(differ)} differ; see "
                                      f"{meta_path}); use the same options (--images may only add digits), or "
                                      "another --out")  # fmt: skip
                meta = old
            sitting = run_metadata(command_line(args))
            meta["sittings"].append(sitting)
            write_json(meta_path, meta)  # before the first task: a resume can always check the settings
            ctx = build_layerwise_context(config, n_images=max(args.images) + 1, model=args.model,
                                          truth_draws=args.truth_draws)  # fmt: skip
            tasks = task_list(args.images, args.sigmas, args.covs, args.methods)

            def checkpoint(summary):
                sitting.update(summary.as_dict())
                write_json(meta_path, meta)

            # SIGTERM (kill, a batch system) stops after the task in progress, as Ctrl-C does
            with stop_on_sigterm() as stop:
                run_tasks(tasks, layerwise_task, out, context=ctx, desc="layerwise", checkpoint=checkpoint,
                          checkpoint_s=60.0, stop=stop, **runner_kwargs(args))  # fmt: skip
    except KeyboardInterrupt:
        print(f"stopped; the finished tasks are in {out}, continue with --resume", file=sys.stderr)
        return 130
    except (RunnerError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def control_variate_errors(budget_draws, tsl_draws, tightness_row, g_cost: float = 0.2, truth=None):
    """Expected errors of Monte Carlo with the linearized network as a control variate, at a total cost of
    ``budget_draws`` forward passes: the linearization and its exact moments cost ``tsl_draws`` of them, and each
    draw costs ``1 + g_cost`` passes (evaluating the pruned ``g`` measured about 0.12 of a LeNet pass, drawing the
    sample about 0.07). The spread of ``f - g`` comes from the tightness run's paired statistics (``l_dmean_se``,
    ``l_dvar_se``, at its ``mc_samples`` draws). The ``"cv"`` method measures the same estimator directly.

    Returns ``(var_err, zmu, n_draws)``, scored against that run's truth like :func:`equal_cost_mc_errors`, or
    against ``truth = (var, var_se, n)`` (per logit; e.g. a finer truth of the same task) when given (``nan`` when
    the budget does not cover the linearization).
    """
    r = tightness_row
    n_truth = float(r["mc_samples"])
    n = (float(budget_draws) - float(tsl_draws)) / (1.0 + g_cost)
    if n < 2:
        return math.nan, math.nan, 0
    mc_var = np.asarray(r["mc_var"], float)
    mean_se = np.asarray(r["l_dmean_se"], float) * math.sqrt(n_truth / n)
    var_se = np.asarray(r["l_dvar_se"], float) * math.sqrt(n_truth / n)
    truth_mean_se2 = mc_var / n_truth
    truth_var_se = np.asarray(r["mc_var_se"], float)
    if truth is not None:
        mc_var, truth_var_se, n_other = np.asarray(truth[0], float), np.asarray(truth[1], float), float(truth[2])
        truth_mean_se2 = mc_var / n_other
    zmu = float(np.median(0.6745 * np.sqrt((mean_se**2 + truth_mean_se2) / mc_var)))
    var_err = float(np.mean(math.sqrt(2 / math.pi) * np.sqrt(var_se**2 + truth_var_se**2) / mc_var))
    return var_err, zmu, int(n)


def summary_table(rows, tightness_rows, sigma: float, cov: str = "dense", reference: str = "lowrank32",
                  methods=METHODS) -> list[dict]:  # fmt: skip
    """One line per method at ``(sigma, cov)``: variance error (mean over digits) and ``|Delta mu| / sd`` (median
    over digits) with 95 % bootstrap intervals over digits, the share of variances below the truth, the CPU
    seconds and the draws they buy (medians); then plain and control-variate Monte Carlo at the cost of
    ``reference`` (expected errors against the same truth, per digit)."""
    from ..stats import bootstrap_ci

    lines = []
    for method in methods:
        m = image_metrics(rows, tightness_rows, sigma, cov, method)
        if not len(m["image"]):
            continue
        lines.append({
            "method": method, "n": len(m["image"]),
            "var_err": bootstrap_ci(m["var_err"]), "zmu": bootstrap_ci(m["zmu"], np.median),
            "below": float(np.mean(m["bias_low"])), "cpu_s": float(np.median(m["cpu_s"])),
            "draws": float(np.median(m["draws"])),
        })  # fmt: skip
    ref = image_metrics(rows, tightness_rows, sigma, cov, reference)
    if len(ref["image"]):
        var_err, zmu = equal_cost_mc_errors(ref["draws"], ref["truth_var_rel_se"], ref["truth_n"])
        lines.append({"method": f"Monte Carlo at {reference}'s cost", "n": len(ref["image"]),
                      "var_err": bootstrap_ci(var_err), "zmu": bootstrap_ci(zmu, np.median), "below": math.nan,
                      "cpu_s": float(np.median(ref["cpu_s"])), "draws": float(np.median(ref["draws"]))})  # fmt: skip
        tsl = {r["image"]: r["draws_equal_cost"] for r in rows
               if r["method"] == "tsl" and r["sigma"] == sigma and r["cov"] == cov}  # fmt: skip
        truth = {(r["image"]): r for r in tightness_rows
                 if r.get("point") == "input" and r["sigma"] == sigma and r["cov"] == cov}  # fmt: skip
        own = _truth(tightness_rows)  # the truth scored against: a finer one, when given, overrides the run's
        cv = [control_variate_errors(budget, tsl[i], truth[i], truth=own[i, sigma, cov][1:])
              for i, budget in zip(ref["image"], ref["draws"]) if i in tsl and i in truth]  # fmt: skip
        cv = [c for c in cv if c[2] > 0]
        if cv:
            lines.append({"method": f"control-variate MC at {reference}'s cost", "n": len(cv),
                          "var_err": bootstrap_ci([c[0] for c in cv]), "zmu": bootstrap_ci([c[1] for c in cv], np.median),
                          "below": math.nan, "cpu_s": float(np.median(ref["cpu_s"])),
                          "draws": float(np.median([c[2] for c in cv]))})  # fmt: skip
    return lines


def format_summary(lines, digits: int = 3) -> str:
    """The :func:`summary_table` lines as a markdown table."""
    def ci(t):
        return f"{t[0]:.{digits}f} [{t[1]:.{digits}f}, {t[2]:.{digits}f}]"

    out = ["| method | digits | variance error | median abs(Δμ)/sd | below truth | CPU s | draws |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for line in lines:
        below = "" if math.isnan(line["below"]) else f"{100 * line['below']:.0f} %"
        out.append(f"| {line['method']} | {line['n']} | {ci(line['var_err'])} | {ci(line['zmu'])} | {below} | "
                   f"{line['cpu_s']:.2f} | {line['draws']:,.0f} |")  # fmt: skip
    return "\n".join(out)


def cost_accuracy(rows, truth_rows, sigma: float, cov: str = "dense", methods=METHODS, budgets=None,
                  tightness_rows=None, g_cost: float = 0.2) -> dict:  # fmt: skip
    """Everything the decision figure draws at ``(sigma, cov)``: each method as a point, sampling as curves.

    Args:
        rows: this experiment's rows (any methods); truth_rows: the truth (tightness rows or ``"truth"`` rows).
        budgets: costs in forward passes at which to evaluate the sampling curves (default: 10 to 10^5).
        tightness_rows: the tightness run's rows of the same tasks, for the control-variate curve (it needs their
            paired spread of ``f - g``); none: no control-variate curve.

    Returns:
        dict: ``{"points": {method: {"draws", "var_err", "zmu"}}, "curves": {name: {"draws", "var_err", "zmu"}},
        "floor": {"var_err", "zmu"}, "n": digits}``: a point's ``draws`` is its median cost in forward passes,
        ``var_err`` (mean over digits) and ``zmu`` (median over digits) are ``(estimate, low, high)`` 95 %
        bootstrap intervals; a curve holds arrays over ``budgets`` (the same statistics of the expected errors);
        ``floor`` is what a perfect method scores against this truth (its own noise).
    """
    from ..stats import bootstrap_ci

    budgets = np.logspace(1, 5, 41) if budgets is None else np.asarray(budgets, float)
    points, per_digit = {}, None
    for method in methods:
        m = image_metrics(rows, truth_rows, sigma, cov, method)
        if not len(m["image"]):
            continue
        per_digit = m if per_digit is None else per_digit
        points[method] = {"draws": float(np.median(m["draws"])), "var_err": bootstrap_ci(m["var_err"]),
                          "zmu": bootstrap_ci(m["zmu"], np.median), "n": len(m["image"])}  # fmt: skip
    if per_digit is None:
        raise ValueError(f"no rows of the methods {tuple(methods)} at sigma={sigma}, cov={cov!r} have a truth")
    rel_se, n_truth = per_digit["truth_var_rel_se"], per_digit["truth_n"]
    curves = {"Monte Carlo": {"draws": budgets, "var_err": np.empty(len(budgets)), "zmu": np.empty(len(budgets))}}
    for i, budget in enumerate(budgets):
        var_err, zmu = equal_cost_mc_errors(np.full(len(rel_se), budget), rel_se, n_truth)
        curves["Monte Carlo"]["var_err"][i], curves["Monte Carlo"]["zmu"][i] = np.mean(var_err), np.median(zmu)
    floor_var, floor_zmu = equal_cost_mc_errors(np.full(len(rel_se), np.inf), rel_se, n_truth)
    floor = {"var_err": float(np.mean(floor_var)), "zmu": float(np.median(floor_zmu))}
    tsl = {r["image"]: r["draws_equal_cost"] for r in rows
           if r["method"] == "tsl" and r["sigma"] == sigma and r["cov"] == cov}  # fmt: skip
    if tightness_rows is not None and tsl:
        paired = {r["image"]: r for r in tightness_rows
                  if r.get("point") == "input" and r["sigma"] == sigma and r["cov"] == cov}  # fmt: skip
        own = _truth(truth_rows)
        images = [i for i in per_digit["image"] if i in tsl and i in paired]
        var_err, zmu = np.full(len(budgets), np.nan), np.full(len(budgets), np.nan)
        for b, budget in enumerate(budgets):
            errors = [control_variate_errors(budget, tsl[i], paired[i], g_cost, truth=own[i, sigma, cov][1:])
                      for i in images]  # fmt: skip
            if errors and all(e[2] > 0 for e in errors):
                var_err[b], zmu[b] = np.mean([e[0] for e in errors]), np.median([e[1] for e in errors])
        curves["control variate"] = {"draws": budgets, "var_err": var_err, "zmu": zmu}
    return {"points": points, "curves": curves, "floor": floor, "n": len(per_digit["image"])}
