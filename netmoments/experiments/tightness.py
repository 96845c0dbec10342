"""How tight are the closed forms on a real deep network? NM20's tightness protocol, done so that it can be trusted.

One *task* is one test digit ``x``, one noise level ``sigma`` and one covariance family:

- ``"dense"``: NM20's random dense SPD ``Sigma`` with ``trace = 784 sigma^2`` (:func:`netmoments.random_spd`);
- ``"sparse"``: independent noise of std ``sigma`` on the 60 pixels where the true-class logit is most sensitive
  (what a sparse Gaussian attack perturbs), none elsewhere;
- ``"blur"``: spatially smooth noise, white noise blurred by a Gaussian of std 1.5 px, scaled to
  ``trace = 784 sigma^2`` (what a smooth attack perturbs).

All the randomness of a task (``Sigma``, the dither, the draws) is seeded from ``(seed, image, sigma, cov)``
(:func:`netmoments.experiments.runner.seed_from_key`), so its rows do not depend on where or when it ran.

In a task, ``N`` draws ``X_j = m + eps_j``, ``eps_j ~ N(0, Sigma)``, are pushed through the real LeNet ``f`` and
through each two-stage linearization ``g_p(X) = B relu(A_p X + c1_p) + c2`` (linearized at a point ``p``), *on the
same draws*. Per logit, the error of the closed form splits exactly into two parts::

    analytic_p - MC[f]  =  (analytic_p - MC[g_p])   -   (MC[f] - MC[g_p])
    total error            formula error (a)             linearization error (b)

(a) must vanish within its Monte Carlo standard error (the closed form is exact for ``g_p``); (b) is a paired
difference on the same draws, with its own (small) standard error. The analytic moments are never used as a
control variate for ``MC[f]``: that would hide a formula error. The same holds for the variance.
:func:`recheck_formula` measures one row's part (a) again on fresh, more numerous float64 draws.

Linearization points ``p`` (rows ``point``):

- ``"input"``: ``p = x`` (NM20 Table 2);
- ``"dither"``: a control, ``p = m = x + U(-d, d)`` with ``d = 1e-3``: the same digit with no max-pool ties (its
  own truth ``MC[f]`` around ``x + dither``), to separate tie error from region crossing;
- ``"tie_aware"``: the expected (statistical) linearization of the layers before the kept ReLU under the noise,
  ``A = E[J(x + eps)]``, ``c1 = E[h(x + eps)] - A x`` (``h`` = those layers), estimated from ``S`` antithetic draws
  ``+-eps`` (so it equals the TSL at ``x`` wherever the noise does not leave ``x``'s linear region);
- ``"centroid"`` / ``"farthest"`` with ``k`` (NM20 Table 3, dense only): the pool (4,000 training digits) is
  clustered by labelled k-means (k-means within each label, ``k_label = max(1, round(k n_label / N))``); a test
  digit is linearized at the nearest centroid of its label's clusters, or at the member of that cluster farthest
  from the centroid (a pool member, never the test digit itself).

Each row (one per task x point; JSON lines, per-logit lists of 10) holds the truth (``mc_*``), the closed forms
(``mean``, ``var_exact`` and, at ``p = x``, ``var_series`` / ``var_hybrid``), the formula error parts
(``f_dmean``, ``lin_var``, ``lin_var_se``; the means' SEs are ``sqrt(var / N)``) and the linearization error parts
(``l_dmean``, ``l_dmean_se``, ``l_dvar``, ``l_dvar_se``). :func:`image_metrics`, :func:`netmoments.stats.bootstrap_ci`
and the table functions turn them into per-image metrics with confidence intervals over images. CLI:
``python -m netmoments.experiments tightness --help``.

This module holds the task and the run; beside it are :mod:`.tightness_settings` (constants, configuration,
settings), :mod:`.tightness_inputs` (covariances, cluster points), :mod:`.tightness_analysis` (metrics, tables)
and :mod:`.tightness_cli` (the subcommand). Their public names are importable from here too.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._validation import renamed
from ..affine import AffineReLUAffine
from ..data import MNIST_SHAPE
from ..linearize import TwoStageLinearization, maxpool_ties, prune_inactive_units
from .runner import output_lock, read_rows, resume_metadata, run_tasks, seed_from_key, write_json
from . import tightness_cli
from .sittings import end_sitting, start_sitting
from .tightness_analysis import (
    PER_IMAGE_COLUMNS, ci_text, cluster_table, complete_images, image_metrics, per_image_table, provenance,
    report_markdown, summary_table, symmetric_relative_error, write_per_image_csv,
)
from .tightness_inputs import (
    cluster_linearization_points, labelled_kmeans, noise_factor, scaled_cluster_counts, sparse_pixels,
)
from .tightness_settings import (
    BLUR_STD, COV_KINDS, METHODS, NM20_CLUSTER_FRACTIONS, POINT_KINDS, ROW_LISTS, SPARSE_PIXELS, TightnessConfig,
    check_settings, default_metadata_path, run_settings, task_list,
)

# Old import paths, kept for the notebooks and tests (not in __all__: they live in netmoments.prose,
# netmoments.stats and .sittings).
from ..prose import format_ci, interval_sign, join_words, sig_text, sign_phrase  # noqa: F401
from ..stats import bonferroni_z, bootstrap_ci  # noqa: F401
from .sittings import machine as _machine  # noqa: F401

__all__ = [
    "NM20_CLUSTER_FRACTIONS",
    "COV_KINDS",
    "POINT_KINDS",
    "METHODS",
    "ROW_LISTS",
    "TightnessConfig",
    "symmetric_relative_error",
    "scaled_cluster_counts",
    "labelled_kmeans",
    "cluster_linearization_points",
    "noise_factor",
    "sparse_pixels",
    "build_context",
    "task_list",
    "tightness_task",
    "recheck_formula",
    "run_tightness",
    "image_metrics",
    "ci_text",
    "complete_images",
    "summary_table",
    "cluster_table",
    "provenance",
    "PER_IMAGE_COLUMNS",
    "per_image_table",
    "write_per_image_csv",
    "report_markdown",
    "register",
    "main",
]


# ---------------------------------------------------------------------------------------------- the task


def _linearize(model, points: torch.Tensor):
    """TSL at a batch of points ``(U, 1, 28, 28)``: ``(A (U, m, n), c1 (U, m), B (p, m), c2 (p,), pre (U, m))``,
    the dense ``A`` from the matrix-free :class:`netmoments.linearize.TwoStageLinearization`."""
    with torch.no_grad():
        tsl = TwoStageLinearization(model, points)
    B, c2 = tsl.B, tsl.c2
    return tsl.A, tsl.c1, (B[0] if B.dim() == 3 else B), (c2[0] if c2.dim() == 2 else c2), tsl.pre


@dataclass
class TightnessContext:
    """What every task reads (sent to each worker once): the network, the test digits and Table 3's points."""

    model: torch.nn.Module
    mc_model: torch.nn.Module
    images: torch.Tensor  # (T, 1, 28, 28) float32
    labels: torch.Tensor  # (T,) int64
    config: TightnessConfig
    cluster_points: dict = field(default_factory=dict)  # k -> {"centroid": (T, n), "farthest": (T, n), ...}
    n_clusters: dict = field(default_factory=dict)  # k -> actual number of clusters (sum over labels)

    def fingerprint(self) -> str:
        """SHA-256 of the weights, digits and cluster points: a resumed run must see the same."""
        h = hashlib.sha256()
        for t in self.model.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        for k in sorted(self.cluster_points):
            for kind in ("centroid", "farthest"):
                h.update(np.ascontiguousarray(self.cluster_points[k][kind]).tobytes())
        return h.hexdigest()[:16]


def build_context(config: TightnessConfig, model=None, images=None, labels=None, pool=None, pool_labels=None,
                  n_images: int | None = None) -> TightnessContext:  # fmt: skip
    """The network (default: the shipped LeNet), test digits (default: the test split) and, when the config
    asks for cluster points, the labelled k-means of the pool (default: the training split)."""
    from ..data import load_mnist

    if model is None:
        from ..models import load_lenet

        model = load_lenet()
    if images is None or labels is None:
        images, labels = load_mnist("test")
    if n_images is not None:
        images, labels = images[:n_images], labels[:n_images]
    model = copy.deepcopy(model).float().eval()
    mc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    ctx = TightnessContext(model, mc_model, images.float().contiguous(), labels.long(), config)
    if any(p in config.points for p in ("centroid", "farthest")) and config.clusters:
        if pool is None or pool_labels is None:
            pool, pool_labels = load_mnist("train")
        for k in config.clusters:
            pts = cluster_linearization_points(pool.reshape(len(pool), -1).numpy(), pool_labels.numpy(),
                                               ctx.images.reshape(len(ctx.images), -1).numpy(), ctx.labels.numpy(),
                                               k, config.seed)  # fmt: skip
            ctx.cluster_points[k] = pts
            ctx.n_clusters[k] = pts["n_clusters"]
    return ctx


def _round(values) -> list:
    # 6 significant digits: every error is computed from the differences stored on their own (f_dmean, l_dmean,
    # ...), so rounding the moments themselves loses nothing measurable, and the file stays small.
    return [float(f"{v:.6g}") if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).tolist()]


def _paired_stats(f: torch.Tensor, g: torch.Tensor) -> dict:
    """Per-logit Monte Carlo statistics of ``g`` and of ``f - g`` on the same ``N`` draws (float64 ``(N, p)``)."""
    n = f.shape[0]
    gm, fm = g.mean(0), f.mean(0)
    gc, fc = g - gm, f - fm
    g_var = gc.pow(2).sum(0) / (n - 1)
    g_m2 = gc.pow(2).mean(0)
    diff = f - g
    dvar_terms = fc.pow(2) - gc.pow(2)  # influence terms of var(f) - var(g)
    return {
        "lin_mean": gm,
        "lin_mean_se": (g_var / n).sqrt(),
        "lin_var": g_var,
        "lin_var_se": ((gc.pow(4).mean(0) - g_m2**2).clamp_min(0) / n).sqrt(),
        "l_dmean": diff.mean(0),
        "l_dmean_se": (diff.var(0) / n).sqrt(),
        "l_dvar": fc.pow(2).sum(0) / (n - 1) - g_var,
        "l_dvar_se": (dvar_terms.var(0) / n).sqrt(),
    }


def _truth_stats(f: torch.Tensor) -> dict:
    n = f.shape[0]
    fc = f - f.mean(0)
    m2 = fc.pow(2).mean(0)
    var = fc.pow(2).sum(0) / (n - 1)
    return {
        "mc_mean": f.mean(0),
        "mc_mean_se": (var / n).sqrt(),
        "mc_var": var,
        "mc_var_se": ((fc.pow(4).mean(0) - m2**2).clamp_min(0) / n).sqrt(),
    }


def _exact_moments(net: AffineReLUAffine, mean: torch.Tensor, cov: torch.Tensor):
    """The closed-form output mean and variance ``(p,)``, ``(p,)`` of ``net`` under ``N(mean, cov)``."""
    # Pruning always-off units leaves the exact moments unchanged (tested) and cuts the pairwise work ~4x;
    # the approximations run on the full network, their errors on those units being part of what is measured.
    return prune_inactive_units(net, mean, cov).moments(mean, cov, method="exact", output="var")


def _task_generator(ctx: TightnessContext, key, *what) -> torch.Generator:
    image, sigma, cov = key
    return torch.Generator().manual_seed(seed_from_key(ctx.config.seed, image, sigma, cov, *what))


def _task_linearizations(key, ctx: TightnessContext):
    """Everything a task fixes before its draws: ``(x, label, factor, means, lin, B, c2)``.

    ``x`` the digit (float64 ``(n,)``), ``factor`` the noise factor ``L`` (float64 ``(n, n)``), ``means`` the input
    means by name (``"x"`` and, when dithered, ``"dither"``), ``lin`` one ``(name, k, A, c1, mean name, ties)`` per
    linearization point, ``B (p, m)`` and ``c2 (p,)`` the layers after the kept ReLU.
    """
    image, sigma, cov = key
    cfg = ctx.config
    if cov not in COV_KINDS:
        raise ValueError(f"cov must be one of {COV_KINDS}, got {cov!r}")
    x = ctx.images[image].reshape(-1).to(torch.float64)
    label = int(ctx.labels[image])
    n = x.numel()

    def gen(*what):
        return _task_generator(ctx, key, *what)

    pixels = sparse_pixels(ctx.model, x.float(), label, cfg.sparse_pixels) if cov == "sparse" else None
    factor = noise_factor(cov, sigma, n, gen("cov"), pixels, cfg.blur_std)
    points = list(cfg.points) if cov == "dense" else ["input"]
    means = {"x": x}
    if "dither" in points:
        means["dither"] = x + cfg.dither * (2 * torch.rand(n, generator=gen("dither"), dtype=torch.float64) - 1)

    # The linearizations: (name, k, A, c1, which mean, ties at the point)
    lin = []
    point_batch = [x.float()] + ([means["dither"].float()] if "dither" in points else [])
    A, c1, B, c2, pre = _linearize(ctx.model, torch.stack(point_batch).reshape(-1, *MNIST_SHAPE))
    ties = [sum(t for t, _ in maxpool_ties(ctx.model, p.reshape(MNIST_SHAPE))) for p in point_batch]
    lin.append(("input", None, A[0], c1[0], "x", ties[0]))
    if "dither" in points:
        lin.append(("dither", None, A[1], c1[1], "dither", ties[1]))
    if "tie_aware" in points:
        half = torch.randn(cfg.tie_samples // 2, n, generator=gen("tie_aware"), dtype=torch.float64) @ factor.mT
        eps = torch.cat([half, -half])  # antithetic: the draws average to exactly zero
        A_s, _, _, _, pre_s = _linearize(ctx.model, (x + eps).float().reshape(-1, *MNIST_SHAPE))
        A_bar = A_s.to(torch.float64).mean(0)
        c_bar = pre_s.to(torch.float64).mean(0) - A_bar @ x
        lin.append(("tie_aware", None, A_bar.to(A.dtype), c_bar.to(c1.dtype), "x", ties[0]))
    for kind in ("centroid", "farthest"):
        if kind not in points or not ctx.cluster_points:
            continue
        ks = sorted(ctx.cluster_points)
        pts = torch.stack([torch.as_tensor(ctx.cluster_points[k][kind][image]) for k in ks]).reshape(-1, *MNIST_SHAPE)
        A_k, c1_k, _, _, _ = _linearize(ctx.model, pts)
        for j, k in enumerate(ks):
            lin.append((kind, k, A_k[j], c1_k[j], "x", sum(t for t, _ in maxpool_ties(ctx.model, pts[j]))))
    return x, label, factor, means, lin, B, c2


def tightness_task(key, ctx: TightnessContext) -> list[dict]:
    """Run one task ``(image, sigma, cov)``; returns one row per linearization point (see the module docstring)."""
    _, label, factor, means, lin, B, c2 = _task_linearizations(key, ctx)
    f_out, g_out = _draw_outputs(key, ctx, factor, means, lin, B, c2)
    sigma_cov = factor @ factor.mT
    B64, c2_64 = B.to(torch.float64), c2.to(torch.float64)
    return [_point_row(key, ctx, label, point, means[point[4]], sigma_cov, B64, c2_64, f_out[point[4]], g)
            for point, g in zip(lin, g_out)]  # fmt: skip


def _draw_outputs(key, ctx: TightnessContext, factor, means, lin, B, c2) -> tuple[dict, list]:
    """The outputs (float64 ``(N, p)``) of the real network at each input mean (a dict by mean name) and of each
    linearized network (a list, as ``lin``), all on the same ``N`` draws of the noise, drawn in batches."""
    cfg = ctx.config
    n = factor.shape[0]
    draw_gen = _task_generator(ctx, key, "draws")
    outs_f = {name: [] for name in means}
    outs_g = [[] for _ in lin]
    done = 0
    with torch.no_grad():
        while done < cfg.mc_samples:
            size = min(cfg.mc_batch, cfg.mc_samples - done)
            eps = torch.randn(size, n, generator=draw_gen, dtype=torch.float64) @ factor.mT
            for name, m in means.items():
                inputs = (m + eps).float().reshape(-1, *MNIST_SHAPE).contiguous(memory_format=torch.channels_last)
                outs_f[name].append(ctx.mc_model(inputs).to(torch.float64))
            for j, (_, _, A_p, c1_p, mean_name, _) in enumerate(lin):
                inputs = (means[mean_name] + eps).to(A_p.dtype)
                hidden = torch.relu(inputs @ A_p.mT + c1_p)
                outs_g[j].append((hidden @ B.mT.to(hidden.dtype) + c2.to(hidden.dtype)).to(torch.float64))
            done += size
    return {name: torch.cat(v) for name, v in outs_f.items()}, [torch.cat(v) for v in outs_g]


def _point_row(key, ctx: TightnessContext, label: int, point, m, sigma_cov, B64, c2_64, f, g) -> dict:
    """The row of one linearization ``point`` (an item of ``lin``) at input mean ``m``: the closed forms of its
    network, and the truth ``f`` and its outputs ``g`` on the same draws, with the two parts of the error."""
    image, sigma, cov = key
    name, k, A_p, c1_p, _, n_ties = point
    net = AffineReLUAffine(A_p.to(torch.float64), c1_p.to(torch.float64), B64, c2_64)
    mean, var_exact = _exact_moments(net, m, sigma_cov)
    var = {"exact": var_exact}
    for method in ("series", "hybrid"):
        var[method] = net.moments(m, sigma_cov, method=method, output="var")[1] if name == "input" else None
    paired = _paired_stats(f, g)
    cols = {
        **_truth_stats(f),
        "mean": mean, "var_exact": var["exact"], "var_series": var["series"], "var_hybrid": var["hybrid"],
        "f_dmean": mean - paired["lin_mean"],
        "lin_var": paired["lin_var"], "lin_var_se": paired["lin_var_se"],
        "l_dmean": paired["l_dmean"], "l_dmean_se": paired["l_dmean_se"],
        "l_dvar": paired["l_dvar"], "l_dvar_se": paired["l_dvar_se"],
    }  # fmt: skip
    row = {"image": int(image), "label": label, "sigma": float(sigma), "cov": cov, "point": name,
           "k": k, "clusters": (ctx.n_clusters.get(k) if k is not None else None), "ties": int(n_ties),
           "mc_samples": ctx.config.mc_samples}  # fmt: skip
    for col in ROW_LISTS:
        val = cols[col]
        row[col] = None if val is None else _round(val.detach().cpu().numpy())
    return row


def recheck_formula(key, ctx: TightnessContext, point: str = "input", k: int | None = None,
                    n_samples: int = 200_000, batch: int = 10_000, seed: int = 1, *,
                    draws: int | None = None) -> dict:  # fmt: skip
    """Re-measure one row's formula error (a) on ``n_samples`` fresh draws, in float64 throughout.

    A run decides "within SE" from each task's own draws (``mc_samples``, float32 networks) for every row, logit
    and moment at once, so its largest formula ``|Δ|/SE`` is the extreme of up to ~10^6 comparisons. Measuring that
    one comparison again, on independent and more numerous draws, tells a chance extreme (``|Δ|/SE`` falls back to
    O(1)) from an error in the closed form (``|Δ|/SE`` grows like ``sqrt(n_samples)``).

    Args:
        key: the task ``(image, sigma, cov)``.
        ctx: a context holding the task's digit and, for a cluster point, its ``k``
            (``build_context(TightnessConfig(clusters=(k,)), n_images=image + 1)`` gives the run's points).
        point, k: the row, as in the rows' ``point`` and ``k`` columns.
        n_samples: fresh draws of the input (``>= 2``; formerly ``draws=``, still accepted with a
            ``DeprecationWarning``); batch: how many go through the network at once (memory only).
        seed: picks the fresh draws; they are seeded apart from the task's own.

    Returns:
        float64 ``(p,)`` tensors: ``mean``, ``var`` (the closed form), ``mc_mean``, ``mc_mean_se``, ``mc_var``,
        ``mc_var_se`` (Monte Carlo of the same linearized network) and ``z_mean``, ``z_var`` (difference / SE).
    """
    n_samples = renamed("recheck_formula", "draws", "n_samples", draws, n_samples, 200_000)
    for name, value, low in (("n_samples", n_samples, 2), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    _, _, factor, means, lin, B, c2 = _task_linearizations(key, ctx)
    found = [item for item in lin if item[0] == point and item[1] == k]
    if not found:
        raise ValueError(f"task {tuple(key)} has no row point={point!r}, k={k!r}; "
                         f"its rows are {[(item[0], item[1]) for item in lin]}")  # fmt: skip
    _, _, A_p, c1_p, mean_name, _ = found[0]
    m = means[mean_name]
    net = AffineReLUAffine(A_p.to(torch.float64), c1_p.to(torch.float64), B.to(torch.float64), c2.to(torch.float64))
    mean, var = _exact_moments(net, m, factor @ factor.mT)
    gen = _task_generator(ctx, key, "recheck", int(seed))
    outputs, done = [], 0
    with torch.no_grad():
        while done < n_samples:
            size = min(batch, n_samples - done)
            outputs.append(net(m + torch.randn(size, m.numel(), generator=gen, dtype=torch.float64) @ factor.mT))
            done += size
    mc = _truth_stats(torch.cat(outputs))

    def z(diff, se):  # a constant logit has SE 0: agreement is z = 0, anything else is infinitely many SEs
        return torch.where(se > 0, diff / se.where(se > 0, 1.0), torch.where(diff == 0, 0.0, torch.inf) * diff.sign())

    return {"mean": mean, "var": var, **mc, "z_mean": z(mean - mc["mc_mean"], mc["mc_mean_se"]),
            "z_var": z(var - mc["mc_var"], mc["mc_var_se"])}  # fmt: skip

# ---------------------------------------------------------------------------------------------- running


def run_tightness(
    out,
    *,
    n_images: int = 1000,
    sigmas: Sequence[float] = (0.01, 0.05, 0.2),
    covs: Sequence[str] = COV_KINDS,
    config: TightnessConfig | None = None,
    context: TightnessContext | None = None,
    command: str | None = None,
    metadata_path=None,
    **runner_options,
) -> dict:
    """Run (or resume) the protocol over ``n_images`` test digits x ``sigmas`` x ``covs`` into ``out`` (``.jsonl``).

    Writes ``metadata_path`` (default: ``out`` with ``.json``, or without ``.gz`` first) before the first task,
    at every checkpoint and at the end: the command, git commit, package versions, machine, configuration, the
    context's fingerprint and one entry per sitting (start, end, wall time, tasks run, workers, per-task seconds).
    Both files are locked for the run (:func:`netmoments.experiments.runner.output_lock`). A resumed run must have
    the same configuration and fingerprint as the run it continues, and its metadata must be there
    (:func:`netmoments.experiments.runner.resume_metadata`); a fresh run never overwrites either file.

    Args:
        runner_options: :func:`netmoments.experiments.runner.run_tasks` options (``resume``, ``workers``, ...).

    Returns:
        The metadata dict.
    """
    config = config or TightnessConfig()
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(not (s > 0 and math.isfinite(s)) for s in sigmas):
        raise ValueError(f"sigmas must be positive numbers, got {sigmas}")
    bad = [c for c in covs if c not in COV_KINDS]
    if bad or not covs:
        raise ValueError(f"covs must be drawn from {COV_KINDS}, got {list(covs)}")
    ctx = context or build_context(config, n_images=n_images)
    if not 1 <= n_images <= len(ctx.images):
        raise ValueError(f"n_images must be in 1..{len(ctx.images)}, got {n_images}")
    out = Path(out)
    meta_path = Path(metadata_path) if metadata_path else default_metadata_path(out)
    with output_lock(out, meta_path):
        settings = run_settings(n_images, sigmas, covs, config, ctx)
        meta = {"settings": settings, "sittings": []}
        old = resume_metadata(out, meta_path, runner_options.get("resume", False))
        if old is not None:
            check_settings(old, settings, out, meta_path)
            meta = old
        return _run_locked(out, meta_path, meta, n_images, sigmas, covs, ctx, command, runner_options)


def _run_locked(out, meta_path, meta, n_images, sigmas, covs, ctx, command, runner_options) -> dict:
    """:func:`run_tightness` once its files are locked and its settings checked: the sitting, then the tasks."""
    tasks = task_list(n_images, sigmas, covs)
    sitting = start_sitting(command, runner_options)
    meta["sittings"].append(sitting)
    _update_totals(meta, out, len(tasks))
    write_json(meta_path, meta)  # before the first task: whenever the run stops, a resume can check its settings

    def checkpoint(summary):
        end_sitting(sitting, summary)
        sitting["cost_by_cov"] = _cost_by_cov(summary.task_costs)
        _update_totals(meta, out, len(tasks))
        write_json(meta_path, meta)

    run_tasks(tasks, tightness_task, out, context=ctx, desc="tightness", checkpoint=checkpoint,
              checkpoint_s=120.0, **runner_options)  # fmt: skip
    return meta


def _update_totals(meta: dict, out: Path, n_tasks: int) -> None:
    """The run's totals over all its sittings, in ``meta``: tasks done (counted in ``out``), wall time, and the mean
    wall and CPU seconds per task."""
    meta["tasks_done"] = len(_task_ids(out))
    meta["n_tasks"] = n_tasks
    meta["wall_s_total"] = round(sum(s.get("wall_s", 0.0) for s in meta["sittings"]), 1)
    runs = sum(s.get("n_run", 0) for s in meta["sittings"])
    for name in ("task_seconds", "task_cpu_seconds"):
        total = sum(s.get(f"{name}_total", 0.0) for s in meta["sittings"] if s.get("n_run"))
        meta[f"{name}_mean"] = round(total / runs, 3) if runs else None


def _cost_by_cov(task_costs: dict) -> dict:
    """The cost of the tasks run so far by covariance family (dense tasks carry all of Table 3's points, so they
    cost most): count, wall, CPU and kernel seconds."""
    by_cov = {}
    for key, (wall, cpu, kernel) in task_costs.items():
        entry = by_cov.setdefault(json.loads(key)[2], {"n": 0, "wall_s": 0.0, "cpu_s": 0.0, "kernel_s": 0.0})
        entry["n"] += 1
        entry["wall_s"] = round(entry["wall_s"] + wall, 3)
        entry["cpu_s"] = round(entry["cpu_s"] + cpu, 3)
        entry["kernel_s"] = round(entry["kernel_s"] + kernel, 3)
    return by_cov


def _task_ids(out: Path) -> set[str]:
    """The ids of the tasks complete in ``out`` (none if it does not exist yet)."""
    if not out.exists():
        return set()
    return {r["task"] for r in read_rows(out)}


# ---------------------------------------------------------------------------------------------- the subcommand


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``tightness`` subcommand to an argparse ``subparsers`` object (its options:
    :mod:`.tightness_cli`)."""
    return tightness_cli.add_parser(subparsers, handler=main)


def main(args: argparse.Namespace) -> int:
    """Run the ``tightness`` subcommand from parsed arguments; returns the exit status (2: an error, said in one
    ``error: ...`` line; 130: interrupted)."""
    # Looked up here as the command runs (and handed over: tightness_cli does not import this module), so what a
    # caller replaces in this module is what runs.
    return tightness_cli.main(args, run=run_tightness, build=build_context)
