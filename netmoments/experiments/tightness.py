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
(``f_dmean``, ``lin_var``, ``lin_var_se``; the means' SEs are ``sqrt(var / N)``) and the linearization error parts (``l_dmean``,
``l_dmean_se``, ``l_dvar``, ``l_dvar_se``). :func:`image_metrics`, :func:`bootstrap_ci` and the table functions
turn them into per-image metrics with confidence intervals over images. CLI:
``python -m netmoments.experiments tightness --help``.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..affine import AffineReLUAffine
from ..gaussian import random_spd
from ..linearize import TwoStageLinearization, maxpool_ties, prune_inactive_units
from ..prose import format_ci, interval_sign, join_words, sig_text, sign_phrase
from ..stats import bonferroni_z, bootstrap_ci
from .runner import (
    RunnerError, add_runner_arguments, atomic_write, check_writable, command_line, output_in_use, output_lock,
    positive_int, read_rows, resume_metadata, run_tasks, runner_kwargs, scan_file, seed_from_key, seed_value,
    stop_on_sigterm, task_id, write_json,
)

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
    "build_context",
    "task_list",
    "tightness_task",
    "recheck_formula",
    "run_tightness",
    "image_metrics",
    "bootstrap_ci",
    "bonferroni_z",
    "format_ci",
    "ci_text",
    "interval_sign",
    "join_words",
    "sign_phrase",
    "sig_text",
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

# NM20 clustered 10,000 images into k in {250, 500, 1000, 2500, 5000} clusters: these fractions of the pool.
NM20_CLUSTER_FRACTIONS = (0.025, 0.05, 0.1, 0.25, 0.5)
COV_KINDS = ("dense", "sparse", "blur")
POINT_KINDS = ("input", "dither", "tie_aware", "centroid", "farthest")
METHODS = ("exact", "series", "hybrid")
SPARSE_PIXELS = 60
BLUR_STD = 1.5
# Per-logit lists in every row (10 numbers each).
# The mean's standard errors are not stored: they are sqrt(var / N) of the stored variances.
ROW_LISTS = (
    "mc_mean", "mc_var", "mc_var_se",
    "mean", "var_exact", "var_series", "var_hybrid",
    "f_dmean", "lin_var", "lin_var_se",
    "l_dmean", "l_dmean_se", "l_dvar", "l_dvar_se",
)  # fmt: skip


@dataclass(frozen=True)
class TightnessConfig:
    """Everything that fixes a task's rows (stored in the metadata; a resumed run must use the same).

    Attributes:
        seed: base seed of every task.
        mc_samples: draws per task (shared by all its points).
        mc_batch: draws per network evaluation batch (memory only; does not change the rows).
        dither: half-width of the uniform dither of the ``"dither"`` control.
        tie_samples: draws (``S/2`` antithetic pairs) for the ``"tie_aware"`` linearization.
        points: point kinds evaluated under the dense covariance (the others use ``("input",)``).
        clusters: ``k`` values for Table 3 (pool-wide cluster counts).
        sparse_pixels, blur_std: the attack-like covariances.
    """

    seed: int = 0
    mc_samples: int = 10_000
    mc_batch: int = 2_000
    dither: float = 1e-3
    tie_samples: int = 8
    points: tuple[str, ...] = ("input", "dither", "tie_aware", "centroid", "farthest")
    clusters: tuple[int, ...] = (100, 200, 400, 1000, 2000)
    sparse_pixels: int = SPARSE_PIXELS
    blur_std: float = BLUR_STD

    def __post_init__(self):
        bad = [p for p in self.points if p not in POINT_KINDS]
        if bad or not self.points or "input" not in self.points:
            raise ValueError(f"points must include 'input' and be drawn from {POINT_KINDS}, got {self.points}")
        if not isinstance(self.mc_samples, int) or self.mc_samples < 2:
            raise ValueError(f"mc_samples must be an int >= 2, got {self.mc_samples!r}")
        if not isinstance(self.tie_samples, int) or self.tie_samples < 2 or self.tie_samples % 2:
            raise ValueError(f"tie_samples must be an even int >= 2, got {self.tie_samples!r}")
        if any(not isinstance(k, int) or k < 1 for k in self.clusters):
            raise ValueError(f"clusters must be positive ints, got {self.clusters}")


# ---------------------------------------------------------------------------------------------- helpers


def symmetric_relative_error(a, b):
    """``2|a - b| / (|a| + |b|)`` elementwise, in ``[0, 2]``; 0 where both are 0 (tensors or arrays); NaN in, NaN out."""
    if isinstance(a, torch.Tensor):
        denom = a.abs() + b.abs()
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        return torch.where(denom > 0, 2 * (a - b).abs() / safe, torch.zeros_like(denom))
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.abs(a) + np.abs(b)
    out = np.where(denom > 0, 2 * np.abs(a - b) / np.where(denom > 0, denom, 1.0), 0.0)
    return np.where(np.isnan(denom), np.nan, out)


def scaled_cluster_counts(n_images: int, fractions: Sequence[float] = NM20_CLUSTER_FRACTIONS) -> list[int]:
    """NM20's cluster counts scaled to a pool of ``n_images`` (``round(f * n)``, at least 1, without duplicates)."""
    return sorted({max(1, min(n_images, round(f * n_images))) for f in fractions})


def labelled_kmeans(points, labels, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means within each label: label ``c`` gets ``k_c = max(1, round(k n_c / N))`` clusters (scikit-learn).

    Runs single-threaded (``threadpoolctl``), so the clusters are the same on every machine and sitting.

    Args:
        points: ``(N, n)``; labels: ``(N,)`` ints; k: total clusters wanted, ``1 <= k <= N``.

    Returns:
        ``assignment (N,)`` cluster ids, ``centroids (K, n)`` float64 and ``centroid_labels (K,)``; ``K`` is the
        sum of the ``k_c`` (close to ``k``).
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"points must be (N, n) and labels (N,), got {x.shape} and {y.shape}")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be an int in 1..{x.shape[0]} (the number of points), got {k!r}")
    assignment = np.empty(x.shape[0], dtype=np.int64)
    centroids, centroid_labels = [], []
    with threadpool_limits(1):
        for c in np.unique(y):
            members = np.flatnonzero(y == c)
            k_c = int(min(members.size, max(1, round(k * members.size / x.shape[0]))))
            km = KMeans(n_clusters=k_c, n_init=1, random_state=seed).fit(x[members])
            assignment[members] = km.labels_ + len(centroids)
            centroids.extend(km.cluster_centers_)
            centroid_labels.extend([int(c)] * k_c)
    return assignment, np.asarray(centroids, dtype=np.float64), np.asarray(centroid_labels, dtype=np.int64)


def cluster_linearization_points(pool, pool_labels, test, test_labels, k: int, seed: int = 0) -> dict:
    """Table 3's linearization points for each test digit at one ``k`` (see the module docstring).

    Returns:
        ``{"centroid": (T, n), "farthest": (T, n)}`` float32 arrays, plus ``"cluster" (T,)`` (the nearest centroid
        of the digit's label) and ``"n_clusters"``. The farthest point is a pool member, never a test digit.
    """
    pool = np.asarray(pool, dtype=np.float64).reshape(len(pool), -1)
    test = np.asarray(test, dtype=np.float64).reshape(len(test), -1)
    pool_labels, test_labels = np.asarray(pool_labels), np.asarray(test_labels)
    assignment, centroids, centroid_labels = labelled_kmeans(pool, pool_labels, k, seed)
    farthest = np.empty_like(centroids)
    for c in range(len(centroids)):
        members = np.flatnonzero(assignment == c)
        if members.size == 0:  # k-means can empty a cluster; it can then never be the nearest centroid's
            farthest[c] = centroids[c]
            continue
        farthest[c] = pool[members[np.argmax(((pool[members] - centroids[c]) ** 2).sum(1))]]
    cluster = np.empty(len(test), dtype=np.int64)
    for c in np.unique(test_labels):
        ids = np.flatnonzero(centroid_labels == c)
        if ids.size == 0:
            raise ValueError(f"the pool has no digit of label {c}")
        rows = np.flatnonzero(test_labels == c)
        dist = ((test[rows, None, :] - centroids[None, ids, :]) ** 2).sum(-1)
        cluster[rows] = ids[np.argmin(dist, axis=1)]
    return {
        "centroid": centroids[cluster].astype(np.float32),
        "farthest": farthest[cluster].astype(np.float32),
        "cluster": cluster,
        "n_clusters": len(centroids),
    }


def _blur_matrix(side: int, std: float) -> torch.Tensor:
    """``(side^2, side^2)`` matrix of a separable Gaussian blur (zero padding, radius ``ceil(3 std)``)."""
    idx = torch.arange(side, dtype=torch.float64)
    one = torch.exp(-0.5 * ((idx[:, None] - idx[None, :]) / std) ** 2)
    one = torch.where((idx[:, None] - idx[None, :]).abs() <= math.ceil(3 * std), one, torch.zeros_like(one))
    one = one / one.sum(1, keepdim=True).max()
    return torch.kron(one, one)


def noise_factor(kind: str, sigma: float, n: int, generator: torch.Generator | None = None, pixels=None,
                 blur_std: float = BLUR_STD) -> torch.Tensor:  # fmt: skip
    """A factor ``L`` (float64, ``(n, n)``) with ``Sigma = L L^T`` for one covariance family.

    Args:
        kind: ``"dense"`` (Cholesky of :func:`random_spd` with trace ``n sigma^2``, drawn from ``generator``),
            ``"sparse"`` (``sigma`` on the given ``pixels``, 0 elsewhere) or ``"blur"`` (a blur matrix scaled to
            trace ``n sigma^2``; the image must be square).
    """
    if kind == "dense":
        return torch.linalg.cholesky(random_spd(n, n * sigma**2, generator=generator, dtype=torch.float64))
    if kind == "sparse":
        if pixels is None:
            raise ValueError("sparse noise needs the pixels it lives on")
        diag = torch.zeros(n, dtype=torch.float64)
        diag[torch.as_tensor(pixels)] = sigma
        return torch.diag(diag)
    if kind == "blur":
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"blurred noise needs a square image, got n = {n}")
        g = _blur_matrix(side, blur_std)
        return g * math.sqrt(n * sigma**2 / float((g * g).sum()))
    raise ValueError(f"cov must be one of {COV_KINDS}, got {kind!r}")


def _linearize(model, points: torch.Tensor):
    """TSL at a batch of points ``(U, 1, 28, 28)``: ``(A (U, m, n), c1 (U, m), B (p, m), c2 (p,), pre (U, m))``,
    the dense ``A`` from the matrix-free :class:`netmoments.linearize.TwoStageLinearization`."""
    with torch.no_grad():
        tsl = TwoStageLinearization(model, points)
    B, c2 = tsl.B, tsl.c2
    return tsl.A, tsl.c1, (B[0] if B.dim() == 3 else B), (c2[0] if c2.dim() == 2 else c2), tsl.pre


# ---------------------------------------------------------------------------------------------- the task


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


def task_list(n_images: int, sigmas: Sequence[float], covs: Sequence[str]) -> list[tuple]:
    """Task keys ``(image, sigma, cov)``, image-major: a partial run has whole images for every setting."""
    return [(i, float(s), c) for i in range(n_images) for c in covs for s in sigmas]


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


def _sparse_pixels(model, x: torch.Tensor, label: int, count: int) -> torch.Tensor:
    """The ``count`` pixels with the largest |d logit_label / d x| at ``x`` (where a sparse attack puts noise)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logit = model(x.reshape(1, 1, 28, 28))[0, label]
        (grad,) = torch.autograd.grad(logit, x)
    # argsort on (-|g|, index) so equal gradients pick the lower index on every machine
    return torch.argsort(-grad.abs().to(torch.float64), stable=True)[:count]


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

    pixels = _sparse_pixels(ctx.model, x.float(), label, cfg.sparse_pixels) if cov == "sparse" else None
    factor = noise_factor(cov, sigma, n, gen("cov"), pixels, cfg.blur_std)
    points = list(cfg.points) if cov == "dense" else ["input"]
    means = {"x": x}
    if "dither" in points:
        means["dither"] = x + cfg.dither * (2 * torch.rand(n, generator=gen("dither"), dtype=torch.float64) - 1)

    # The linearizations: (name, k, A, c1, which mean, ties at the point)
    lin = []
    point_batch = [x.float()] + ([means["dither"].float()] if "dither" in points else [])
    A, c1, B, c2, pre = _linearize(ctx.model, torch.stack(point_batch).reshape(-1, 1, 28, 28))
    ties = [sum(t for t, _ in maxpool_ties(ctx.model, p.reshape(1, 28, 28))) for p in point_batch]
    lin.append(("input", None, A[0], c1[0], "x", ties[0]))
    if "dither" in points:
        lin.append(("dither", None, A[1], c1[1], "dither", ties[1]))
    if "tie_aware" in points:
        half = torch.randn(cfg.tie_samples // 2, n, generator=gen("tie_aware"), dtype=torch.float64) @ factor.mT
        eps = torch.cat([half, -half])  # antithetic: the draws average to exactly zero
        A_s, _, _, _, pre_s = _linearize(ctx.model, (x + eps).float().reshape(-1, 1, 28, 28))
        A_bar = A_s.to(torch.float64).mean(0)
        c_bar = pre_s.to(torch.float64).mean(0) - A_bar @ x
        lin.append(("tie_aware", None, A_bar.to(A.dtype), c_bar.to(c1.dtype), "x", ties[0]))
    for kind in ("centroid", "farthest"):
        if kind not in points or not ctx.cluster_points:
            continue
        ks = sorted(ctx.cluster_points)
        pts = torch.stack([torch.as_tensor(ctx.cluster_points[k][kind][image]) for k in ks]).reshape(-1, 1, 28, 28)
        A_k, c1_k, _, _, _ = _linearize(ctx.model, pts)
        for j, k in enumerate(ks):
            lin.append((kind, k, A_k[j], c1_k[j], "x", sum(t for t, _ in maxpool_ties(ctx.model, pts[j]))))
    return x, label, factor, means, lin, B, c2


def tightness_task(key, ctx: TightnessContext) -> list[dict]:
    """Run one task ``(image, sigma, cov)``; returns one row per linearization point (see the module docstring)."""
    image, sigma, cov = key
    cfg = ctx.config
    x, label, factor, means, lin, B, c2 = _task_linearizations(key, ctx)
    n = x.numel()

    # The same draws for the truth and every linearized network, in batches.
    draw_gen = _task_generator(ctx, key, "draws")
    outs_f = {name: [] for name in means}
    outs_g = [[] for _ in lin]
    done = 0
    with torch.no_grad():
        while done < cfg.mc_samples:
            size = min(cfg.mc_batch, cfg.mc_samples - done)
            eps = torch.randn(size, n, generator=draw_gen, dtype=torch.float64) @ factor.mT
            for name, m in means.items():
                inputs = (m + eps).float().reshape(-1, 1, 28, 28).contiguous(memory_format=torch.channels_last)
                outs_f[name].append(ctx.mc_model(inputs).to(torch.float64))
            for j, (_, _, A_p, c1_p, mean_name, _) in enumerate(lin):
                inputs = (means[mean_name] + eps).to(A_p.dtype)
                hidden = torch.relu(inputs @ A_p.mT + c1_p)
                outs_g[j].append((hidden @ B.mT.to(hidden.dtype) + c2.to(hidden.dtype)).to(torch.float64))
            done += size
    f_all = {name: torch.cat(v) for name, v in outs_f.items()}

    sigma_cov = factor @ factor.mT
    rows = []
    B64, c2_64 = B.to(torch.float64), c2.to(torch.float64)
    for j, (name, k, A_p, c1_p, mean_name, n_ties) in enumerate(lin):
        m = means[mean_name]
        net = AffineReLUAffine(A_p.to(torch.float64), c1_p.to(torch.float64), B64, c2_64)
        mean, var_exact = _exact_moments(net, m, sigma_cov)
        var = {"exact": var_exact}
        for method in ("series", "hybrid"):
            var[method] = net.moments(m, sigma_cov, method=method, output="var")[1] if name == "input" else None
        truth = _truth_stats(f_all[mean_name])
        paired = _paired_stats(f_all[mean_name], torch.cat(outs_g[j]))
        cols = {
            **truth,
            "mean": mean, "var_exact": var["exact"], "var_series": var["series"], "var_hybrid": var["hybrid"],
            "f_dmean": mean - paired["lin_mean"],
            "lin_var": paired["lin_var"], "lin_var_se": paired["lin_var_se"],
            "l_dmean": paired["l_dmean"], "l_dmean_se": paired["l_dmean_se"],
            "l_dvar": paired["l_dvar"], "l_dvar_se": paired["l_dvar_se"],
        }  # fmt: skip
        row = {"image": int(image), "label": label, "sigma": float(sigma), "cov": cov, "point": name,
               "k": k, "clusters": (ctx.n_clusters.get(k) if k is not None else None), "ties": int(n_ties),
               "mc_samples": cfg.mc_samples}  # fmt: skip
        for col in ROW_LISTS:
            val = cols[col]
            row[col] = None if val is None else _round(val.detach().cpu().numpy())
        rows.append(row)
    return rows


def recheck_formula(key, ctx: TightnessContext, point: str = "input", k: int | None = None, draws: int = 200_000,
                    batch: int = 10_000, seed: int = 1) -> dict:  # fmt: skip
    """Re-measure one row's formula error (a) on ``draws`` fresh draws, in float64 throughout.

    A run decides "within SE" from each task's own draws (``mc_samples``, float32 networks) for every row, logit
    and moment at once, so its largest formula ``|Δ|/SE`` is the extreme of up to ~10^6 comparisons. Measuring that
    one comparison again, on independent and more numerous draws, tells a chance extreme (``|Δ|/SE`` falls back to
    O(1)) from an error in the closed form (``|Δ|/SE`` grows like ``sqrt(draws)``).

    Args:
        key: the task ``(image, sigma, cov)``.
        ctx: a context holding the task's digit and, for a cluster point, its ``k``
            (``build_context(TightnessConfig(clusters=(k,)), n_images=image + 1)`` gives the run's points).
        point, k: the row, as in the rows' ``point`` and ``k`` columns.
        draws: fresh draws of the input (``>= 2``); batch: how many go through the network at once (memory only).
        seed: picks the fresh draws; they are seeded apart from the task's own.

    Returns:
        float64 ``(p,)`` tensors: ``mean``, ``var`` (the closed form), ``mc_mean``, ``mc_mean_se``, ``mc_var``,
        ``mc_var_se`` (Monte Carlo of the same linearized network) and ``z_mean``, ``z_var`` (difference / SE).
    """
    for name, value, low in (("draws", draws, 2), ("batch", batch, 1)):
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
        while done < draws:
            size = min(batch, draws - done)
            outputs.append(net(m + torch.randn(size, m.numel(), generator=gen, dtype=torch.float64) @ factor.mT))
            done += size
    mc = _truth_stats(torch.cat(outputs))

    def z(diff, se):  # a constant logit has SE 0: agreement is z = 0, anything else is infinitely many SEs
        return torch.where(se > 0, diff / se.where(se > 0, 1.0), torch.where(diff == 0, 0.0, torch.inf) * diff.sign())

    return {"mean": mean, "var": var, **mc, "z_mean": z(mean - mc["mc_mean"], mc["mc_mean_se"]),
            "z_var": z(var - mc["mc_var"], mc["mc_var_se"])}  # fmt: skip


# ---------------------------------------------------------------------------------------------- running


def _git_commit() -> str | None:
    """HEAD's commit, with ``+dirty`` when the package's code differs from it (not the result files a run
    appends to)."""
    from ..provenance import git_state

    commit, dirty = git_state(paths=("netmoments",))
    return None if commit is None else commit + ("+dirty" if dirty else "")


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "scipy", "scikit-learn", "dask", "distributed", "netmoments"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _machine() -> str:
    """One line for the run's metadata: OS, architecture, CPU model and logical CPU count."""
    from ..provenance import cpu_model

    return f"{platform.system()} {platform.machine()}, {cpu_model()[0]}, {os.cpu_count()} logical CPUs"


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


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
    meta_path = Path(metadata_path) if metadata_path else _default_metadata(out)
    with output_lock(out, meta_path):
        settings = _settings(n_images, sigmas, covs, config, ctx)
        meta = {"settings": settings, "sittings": []}
        old = resume_metadata(out, meta_path, runner_options.get("resume", False))
        if old is not None:
            _check_settings(old, settings, out, meta_path)
            meta = old
        return _run_locked(out, meta_path, meta, n_images, sigmas, covs, ctx, command, runner_options)


def _default_metadata(out: Path) -> Path:
    """``out``'s metadata file: beside it, ``.json`` for ``.jsonl`` and ``.jsonl.gz``."""
    stem = out.with_suffix("") if out.suffix == ".gz" else out
    return stem.with_suffix(".json")


def _settings(n_images, sigmas, covs, config: TightnessConfig, ctx: TightnessContext | None = None) -> dict:
    """A run's settings as its metadata keeps them (without ``ctx``: only those known before the set-up)."""
    settings = {"n_images": n_images, "sigmas": [float(s) for s in sigmas], "covs": list(covs),
                "config": _jsonable(asdict(config))}  # fmt: skip
    if ctx is not None:
        settings["fingerprint"] = ctx.fingerprint()
        settings["n_clusters"] = {str(k): v for k, v in ctx.n_clusters.items()}
    return settings


def _check_settings(old: dict, settings: dict, out: Path, meta_path: Path) -> None:
    """Refuse to continue ``out`` with settings other than those its metadata ``old`` records (only the keys in
    ``settings`` are compared, so the check can run before the set-up, without the fingerprint)."""
    recorded = old["settings"]
    differ = []
    for key in sorted(settings):
        if recorded.get(key) == settings[key]:
            continue
        if isinstance(settings[key], dict) and isinstance(recorded.get(key), dict):  # e.g. config.seed
            differ += [f"{key}.{k}" for k in sorted(settings[key]) if recorded[key].get(k) != settings[key][k]]
        else:
            differ.append(key)
    if differ:
        raise RunnerError(f"{out} was written with other settings than this run's ({', '.join(differ)} differ; see "
                          f"{meta_path}); use the same options, or another --out")  # fmt: skip


def _run_locked(out, meta_path, meta, n_images, sigmas, covs, ctx, command, runner_options) -> dict:
    tasks = task_list(n_images, sigmas, covs)
    sitting = {
        "command": command, "git_commit": _git_commit(), "versions": _versions(), "machine": _machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average_at_start": _load_average(),
        "runner": {k: v for k, v in runner_options.items() if k not in ("progress", "stop")},
    }  # fmt: skip
    meta["sittings"].append(sitting)

    def totals():
        meta["tasks_done"] = len(_task_ids(out))
        meta["n_tasks"] = len(tasks)
        meta["wall_s_total"] = round(sum(s.get("wall_s", 0.0) for s in meta["sittings"]), 1)
        runs = sum(s.get("n_run", 0) for s in meta["sittings"])
        for name in ("task_seconds", "task_cpu_seconds"):
            total = sum(s.get(f"{name}_total", 0.0) for s in meta["sittings"] if s.get("n_run"))
            meta[f"{name}_mean"] = round(total / runs, 3) if runs else None

    totals()
    _write_json(meta_path, meta)  # before the first task: whenever the run stops, a resume can check its settings

    def checkpoint(summary):
        sitting.update(summary.as_dict())
        # Cost per task by covariance family (dense tasks carry all of Table 3's points, so they cost most).
        by_cov = {}
        for key, (wall, cpu, kernel) in summary.task_costs.items():
            entry = by_cov.setdefault(json.loads(key)[2], {"n": 0, "wall_s": 0.0, "cpu_s": 0.0, "kernel_s": 0.0})
            entry["n"] += 1
            entry["wall_s"] = round(entry["wall_s"] + wall, 3)
            entry["cpu_s"] = round(entry["cpu_s"] + cpu, 3)
            entry["kernel_s"] = round(entry["kernel_s"] + kernel, 3)
        sitting["cost_by_cov"] = by_cov
        sitting["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        sitting["load_average_at_end"] = _load_average()
        totals()
        _write_json(meta_path, meta)

    run_tasks(tasks, tightness_task, out, context=ctx, desc="tightness", checkpoint=checkpoint,
              checkpoint_s=120.0, **runner_options)  # fmt: skip
    return meta


def _task_ids(out: Path):
    if not out.exists():
        return set()
    return {r["task"] for r in read_rows(out)}


def _jsonable(value):
    return json.loads(json.dumps(value, default=list))


def _write_json(path: Path, data: dict) -> None:
    write_json(path, data)


# ---------------------------------------------------------------------------------------------- analysis


def _select(rows, **where):
    return [r for r in rows if all(r.get(key) == val for key, val in where.items())]


def image_metrics(rows, sigma: float, cov: str = "dense", point: str = "input", k=None) -> dict:
    """Per-image, per-logit metrics ``(n_images, 10)`` for one setting, images in increasing order.

    Keys: ``image``, ``err_mean`` / ``err_var_<method>`` (symmetric relative error vs the truth),
    ``zmu`` (``|Delta mu| / sd``, sd the true output std), ``z_formula_mean`` / ``z_formula_var`` (formula error /
    its SE), ``z_lin_mean`` / ``z_lin_var`` (linearization error / its SE), ``rel_formula_var`` /
    ``rel_lin_var`` (``|part| / MC var``), ``ties``.
    """
    sel = sorted(_select(rows, sigma=float(sigma), cov=cov, point=point, k=k), key=lambda r: r["image"])
    if not sel:
        raise ValueError(f"no rows for sigma={sigma}, cov={cov!r}, point={point!r}, k={k!r}")

    def col(name):
        return np.array([[np.nan if v is None else v for v in (r[name] or [None] * 10)] for r in sel], dtype=float)

    mc_mean, mc_var = col("mc_mean"), col("mc_var")
    mean, var_exact = col("mean"), col("var_exact")
    n_draws = np.array([r["mc_samples"] for r in sel], dtype=float)[:, None]
    lin_mean_se = np.sqrt(col("lin_var") / n_draws)
    total_dmean = col("f_dmean") - col("l_dmean")  # = mean - mc_mean, exactly, without the rounding of either
    out = {"image": np.array([r["image"] for r in sel]), "ties": np.array([r["ties"] for r in sel])}
    out["err_mean"] = 2 * np.abs(total_dmean) / (np.abs(mean) + np.abs(mc_mean))
    for m in METHODS:
        out[f"err_var_{m}"] = symmetric_relative_error(col(f"var_{m}"), mc_var)
    out["zmu"] = np.abs(total_dmean) / np.sqrt(mc_var)
    out["z_formula_mean"] = col("f_dmean") / lin_mean_se
    out["z_formula_var"] = (var_exact - col("lin_var")) / col("lin_var_se")
    out["z_lin_mean"] = col("l_dmean") / col("l_dmean_se")
    out["z_lin_var"] = col("l_dvar") / col("l_dvar_se")
    out["rel_formula_var"] = np.abs(var_exact - col("lin_var")) / mc_var
    out["rel_lin_var"] = np.abs(col("l_dvar")) / mc_var
    out["rel_total_var"] = np.abs(var_exact - mc_var) / mc_var
    out["mc_var_rel_se"] = col("mc_var_se") / mc_var
    return out


def ci_text(values, stat=np.mean, digits: int = 3) -> str:
    """``stat`` of per-image ``values (n,)`` with its 95 % bootstrap interval over images, as :func:`format_ci`."""
    return format_ci(*bootstrap_ci(values, stat), digits=digits)



def complete_images(rows, tasks_per_image: int) -> int:
    """How many leading test digits (images ``0 .. N-1``) have all ``tasks_per_image`` tasks complete in ``rows``.

    A run appends tasks in any order (and several workers finish them out of order), so the digits a chapter can
    use are the longest prefix of image indices none of whose tasks is missing.
    """
    if tasks_per_image < 1:
        raise ValueError(f"tasks_per_image must be >= 1, got {tasks_per_image}")
    tasks = {}
    for r in rows:
        tasks.setdefault(r["image"], set()).add(r["task"])
    n = 0
    while len(tasks.get(n, ())) >= tasks_per_image:
        if len(tasks[n]) > tasks_per_image:
            raise ValueError(f"image {n} has {len(tasks[n])} tasks, more than tasks_per_image={tasks_per_image}")
        n += 1
    return n


def summary_table(rows, covs=COV_KINDS, points=("input", "dither", "tie_aware"), digits: int = 3) -> str:
    """Table 2's headline numbers per (cov, sigma, point), each with a 95 % bootstrap interval over images.

    Columns: n images; symmetric relative error of the exact variance and of NM18's hybrid variance (mean over
    images of the logit average); the mean's error standardized, ``|Delta mu| / sd`` (median over images of the
    logit median); the variance's linearization and formula parts (``|part| / MC var``, means); and the formula
    check: the largest ``|Delta| / SE`` of the formula error over all rows and logits (mean and variance) against
    the Bonferroni threshold for that many tests.
    """
    head = ["cov", "σ", "point", "n", "var err (exact)", "var err (NM18)", "|Δμ|/sd (median)",
            "lin. part of var err", "formula part of var err", "max formula |Δ|/SE (threshold)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    sigmas = sorted({r["sigma"] for r in rows})
    for cov in covs:
        for s in sigmas:
            for point in points:
                if not _select(rows, sigma=s, cov=cov, point=point, k=None):
                    continue
                m = image_metrics(rows, s, cov, point)
                n = len(m["image"])
                hybrid = m["err_var_hybrid"]
                z_formula = np.abs(np.concatenate([m["z_formula_mean"].ravel(), m["z_formula_var"].ravel()]))
                threshold = bonferroni_z(z_formula.size)
                cells = [
                    cov, f"{s:g}", point, str(n),
                    ci_text(np.nanmean(m["err_var_exact"], 1), digits=digits),
                    ci_text(np.nanmean(hybrid, 1), digits=digits) if not np.isnan(hybrid).all() else "–",
                    ci_text(np.median(m["zmu"], 1), np.median, digits=2),
                    ci_text(np.nanmean(m["rel_lin_var"], 1), digits=digits),
                    ci_text(np.nanmean(m["rel_formula_var"], 1), digits=digits),
                    f"{np.nanmax(z_formula):.2f} ({threshold:.2f})",
                ]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cluster_table(rows, digits: int = 3) -> str:
    """Table 3 (dense noise): exact-variance and mean errors at the cluster points, with paired intervals.

    Per ``k`` and sigma: the error at the nearest centroid and at the farthest member (means over images of the
    logit average, 95 % bootstrap intervals), and the paired difference farthest - centroid over the same
    images (positive: the farthest member is worse), and the same for ``|Delta mu| / sd``.
    """
    ks = sorted({r["k"] for r in rows if r["k"] is not None})
    sigmas = sorted({r["sigma"] for r in rows})
    head = ["k (clusters)", "σ", "n", "var err, centroid", "var err, farthest", "farthest − centroid (paired)",
            "|Δμ|/sd, centroid", "|Δμ|/sd farthest − centroid"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for k in ks:
        n_clusters = next(r["clusters"] for r in rows if r["k"] == k)
        for s in sigmas:
            if not _select(rows, sigma=s, cov="dense", point="centroid", k=k):
                continue
            c = image_metrics(rows, s, "dense", "centroid", k)
            f = image_metrics(rows, s, "dense", "farthest", k)
            if not np.array_equal(c["image"], f["image"]):
                raise ValueError("centroid and farthest rows cover different images")
            vc, vf = np.nanmean(c["err_var_exact"], 1), np.nanmean(f["err_var_exact"], 1)
            zc, zf = np.median(c["zmu"], 1), np.median(f["zmu"], 1)
            cells = [f"{k} ({n_clusters})", f"{s:g}", str(len(vc)), ci_text(vc, digits=digits),
                     ci_text(vf, digits=digits), ci_text(vf - vc, digits=digits), ci_text(zc, np.median, 2),
                     ci_text(zf - zc, digits=2)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance(metadata: dict, rows=None) -> str:
    """A markdown header with the run's provenance (commands, commits, versions, machine, sittings, tasks done).

    With ``rows``, the tasks done are counted in the rows (the metadata's count is only as fresh as its last
    checkpoint) and an incomplete run says so.
    """
    s = metadata["settings"]
    done, n_tasks, note = metadata.get("tasks_done"), metadata.get("n_tasks"), ""
    if rows is not None:
        n_tasks = _expected_tasks(s, n_tasks)
        done = len({r["task"] for r in rows})
        if done != n_tasks:
            note = " (INCOMPLETE: the tables cover these tasks only)"
    lines = [
        "# Tightness of the closed forms on LeNet (NM20 Tables 2 and 3, decomposed)\n",
        f"- settings: {s['n_images']} test digits x σ {s['sigmas']} x covariances {s['covs']}; "
        f"{s['config']['mc_samples']} draws per task; fingerprint {s['fingerprint']}",
        f"- tasks done: {done} of {n_tasks}{note}; wall time over all sittings "
        f"{metadata.get('wall_s_total')} s; mean seconds per task {metadata.get('task_seconds_mean')} wall, "
        f"{metadata.get('task_cpu_seconds_mean')} CPU",
    ]
    for i, sit in enumerate(metadata["sittings"], 1):
        lines.append(
            f"- sitting {i}: `{sit.get('command')}` at {sit.get('git_commit')}, {sit.get('machine')}, "
            f"{sit.get('started')} to {sit.get('finished')}, {sit.get('n_run')} tasks, workers {sit.get('workers')}, "
            f"load {sit.get('load_average_at_start')} / {sit.get('load_average_at_end')}; versions {sit.get('versions')}"
        )
    return "\n".join(lines) + "\n"


PER_IMAGE_COLUMNS = (
    "image", "label", "sigma", "cov", "point", "k", "clusters", "ties", "mc_samples",
    "var_err_exact", "var_err_series", "var_err_hybrid", "mean_err", "zmu", "var_lin_part", "var_formula_part",
    "mc_var_rel_se", "z_formula_max", "z_lin_mean", "z_lin_var", "lin_var_high",
)  # fmt: skip


def _setting_order(setting):
    sigma, cov, point, k = setting
    return (COV_KINDS.index(cov) if cov in COV_KINDS else len(COV_KINDS), sigma,
            POINT_KINDS.index(point) if point in POINT_KINDS else len(POINT_KINDS), -1 if k is None else k)  # fmt: skip


def per_image_table(rows) -> list[dict]:
    """The per-digit numbers every table and interval is computed from: one record per (image, setting).

    A setting is ``(sigma, cov, point, k)``; records are ordered by image, then covariance family, sigma, point and
    ``k``. Each record holds the row's keys (:data:`PER_IMAGE_COLUMNS`: ``image`` ... ``mc_samples``) and, over the
    10 logits of that digit, the numbers the chapter aggregates (``nan`` where a closed form was not computed):

    - ``var_err_<method>``: mean symmetric relative error of the variance (``exact``, ``series``, ``hybrid``);
    - ``mean_err``: median symmetric relative error of the mean; ``zmu``: median ``|Delta mu| / sd``;
    - ``var_lin_part`` / ``var_formula_part``: mean ``|part| / MC var`` of the variance's two error parts;
    - ``mc_var_rel_se``: mean relative standard error of the Monte Carlo variance;
    - ``z_formula_max``: largest formula ``|Delta| / SE`` (means and variances, 20 comparisons);
    - ``z_lin_mean`` / ``z_lin_var``: median linearization ``|Delta| / SE`` of the mean and the variance;
    - ``lin_var_high``: how many logits have ``Var[g_p] > Var[f]`` on the same draws (0 to 10).
    """
    by_key = {(r["image"], r["sigma"], r["cov"], r["point"], r["k"]): r for r in rows}
    records = []
    for setting in sorted({key[1:] for key in by_key}, key=_setting_order):
        m = image_metrics(rows, *setting)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan logits (a method not computed) give nan
            numbers = {
                **{f"var_err_{method}": np.nanmean(m[f"err_var_{method}"], 1) for method in METHODS},
                "mean_err": np.nanmedian(m["err_mean"], 1), "zmu": np.nanmedian(m["zmu"], 1),
                "var_lin_part": np.nanmean(m["rel_lin_var"], 1), "var_formula_part": np.nanmean(m["rel_formula_var"], 1),
                "mc_var_rel_se": np.nanmean(m["mc_var_rel_se"], 1),
                "z_formula_max": np.nanmax(np.abs(np.concatenate([m["z_formula_mean"], m["z_formula_var"]], 1)), 1),
                "z_lin_mean": np.nanmedian(np.abs(m["z_lin_mean"]), 1), "z_lin_var": np.nanmedian(np.abs(m["z_lin_var"]), 1),
                "lin_var_high": (m["z_lin_var"] < 0).sum(1),
            }  # fmt: skip
        for i, image in enumerate(m["image"].tolist()):
            row = by_key[(image, *setting)]
            record = {name: row[name] for name in PER_IMAGE_COLUMNS[:9]}
            record.update({name: values[i].item() for name, values in numbers.items()})
            records.append(record)
    records.sort(key=lambda r: (r["image"], *_setting_order((r["sigma"], r["cov"], r["point"], r["k"]))))
    return records


def write_per_image_csv(rows, path) -> int:
    """Write :func:`per_image_table` of ``rows`` to the CSV ``path`` (6 significant digits, an empty cell for
    ``nan`` or a missing ``k``), atomically; returns the number of records written."""
    import csv
    import io

    records = per_image_table(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PER_IMAGE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({name: ("" if value is None or (isinstance(value, float) and math.isnan(value))
                                else f"{value:.6g}" if isinstance(value, float) else value)
                         for name, value in record.items()})  # fmt: skip
    atomic_write(Path(path), buffer.getvalue().encode())
    return len(records)


def _expected_tasks(settings: dict, default=None):
    """How many tasks the settings of a run's metadata make (``default`` if they cannot say)."""
    try:
        return int(settings["n_images"]) * len(settings["sigmas"]) * len(settings["covs"])
    except (KeyError, TypeError, ValueError):
        return default


def report_markdown(rows, metadata: dict | None = None) -> str:
    """The run's tables as markdown: :func:`provenance` (when ``metadata`` is given), Table 2 by covariance family
    (:func:`summary_table`) and Table 3 (:func:`cluster_table`, when the rows have cluster points)."""
    parts = [provenance(metadata, rows)] if metadata is not None else []
    parts.append("## Table 2: the closed forms against the real network, by covariance family\n\n" + summary_table(rows) + "\n")
    if any(r["k"] is not None for r in rows):
        parts.append("## Table 3: one linearization per cluster (dense noise)\n\n" + cluster_table(rows) + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- CLI


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``tightness`` subcommand to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "tightness",
        help="NM20's tightness experiment (Tables 2 and 3, formula / linearization split) on the trained LeNet",
        description=(
            "Per test digit, sigma and covariance family: Monte Carlo through the real LeNet and through each "
            "two-stage linearization on the same draws, and the closed-form moments. Appends one JSON line per "
            "task x linearization point to --out as each task finishes (resumable with --resume), and keeps a "
            "metadata JSON beside it. --report prints the tables of an existing --out without running."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--images", type=positive_int, default=1000, help="number of test digits (the first N)")
    parser.add_argument("--sigma", type=_positive_float, nargs="+", default=[0.01, 0.05, 0.2],
                        help="noise levels: average per-pixel std (sparse: std on each noisy pixel)")  # fmt: skip
    parser.add_argument("--cov", nargs="+", choices=COV_KINDS, default=list(COV_KINDS), help="covariance families")
    parser.add_argument("--point", nargs="+", choices=POINT_KINDS, default=list(POINT_KINDS),
                        help="linearization points under dense noise (others: input only)")  # fmt: skip
    parser.add_argument("--clusters", type=positive_int, nargs="+", default=None,
                        help="Table 3's k (default: NM20's k scaled to the pool of training digits)")  # fmt: skip
    parser.add_argument("--mc-samples", type=positive_int, default=10_000, help="draws per task")
    parser.add_argument("--tie-samples", type=positive_int, default=8, help="draws for the tie-aware linearization")
    parser.add_argument("--seed", type=seed_value, default=0, help="base seed of every task (0 to 2^32 - 1)")
    parser.add_argument("--mnist", default=None, help="directory of the full MNIST idx files (default: shipped)")
    parser.add_argument("--out", default="tightness.jsonl", help="JSON lines output, .jsonl or gzipped .jsonl.gz (one line per task x point)")
    parser.add_argument("--metadata", default=None, help="metadata JSON path (default: beside --out, .json)")
    parser.add_argument("--report", action="store_true", help="only print the tables of an existing --out")
    parser.add_argument("--tables", default=None, metavar="MD", help="with --report: also write the tables there")
    parser.add_argument("--csv", default=None, metavar="CSV",
                        help="with --report: write the per-digit metrics there (one row per digit and setting)")  # fmt: skip
    add_runner_arguments(parser)
    parser.set_defaults(func=main)
    return parser


def _write_export_provenance(args, export, rows_path: Path, meta_path: Path, n_rows: int) -> None:
    """A sidecar beside an export (:func:`netmoments.provenance.write_sidecar`): the export command's own record
    (command, commit, versions, machine, date) and the rows it was computed from, whose own provenance is the run's
    metadata JSON."""
    from ..provenance import run_metadata, write_sidecar

    record = run_metadata(command_line(args),
                          source={"rows": rows_path.as_posix(), "n_rows": n_rows, "metadata": meta_path.as_posix()})
    write_sidecar(export, record)


def main(args: argparse.Namespace) -> int:
    """Run the ``tightness`` subcommand from parsed arguments; returns the exit status (2: an error, said in one
    ``error: ...`` line; 130: interrupted)."""
    out = Path(args.out)
    meta_path = Path(args.metadata) if args.metadata else _default_metadata(out)
    try:
        if args.report:
            return _report(args, out, meta_path)
        if args.tables or args.csv:
            print("error: --tables and --csv go with --report (they export an existing --out)", file=sys.stderr)
            return 2
        if (out.with_suffix("") if out.suffix == ".gz" else out).suffix != ".jsonl":
            print(f"error: --out must end in .jsonl or .jsonl.gz, got {out}", file=sys.stderr)
            return 2
        # A batch system (or `kill`) stops a run with SIGTERM: treat it like Ctrl-C, so the sitting is recorded.
        with stop_on_sigterm() as stop:
            return _run_cli(args, out, meta_path, stop)
    except (RunnerError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _report(args, out: Path, meta_path: Path) -> int:
    """``--report``: the tables of an existing ``--out`` (and ``--tables`` / ``--csv`` exports), with a warning
    for whatever makes them partial: a run still writing, a torn tail, damage, missing tasks, no metadata."""
    from ..provenance import sidecar_path

    if not out.exists():
        print(f"error: --report needs an existing --out; {out} does not exist", file=sys.stderr)
        return 2
    # An export must not overwrite what it is made from, nor another export (a sidecar included).
    keep = {out.resolve(): "the results (--out)", meta_path.resolve(): "the metadata"}
    for option, export in (("--tables", args.tables), ("--csv", args.csv)):
        if not export:
            continue
        for target in (Path(export), sidecar_path(export)):
            if target.resolve() in keep:
                print(f"error: {option} {export} would overwrite {keep[target.resolve()]} ({target}); choose another "
                      "file", file=sys.stderr)  # fmt: skip
                return 2
            keep[target.resolve()] = f"what {option} writes"
    holder = output_in_use(out)
    if holder:
        _warn(f"{out} is being written by a run in progress (pid {holder}): the report covers the tasks done so far")
    scan = scan_file(out)
    rows = scan.rows
    if scan.damage:
        _warn(f"{out} is damaged: {scan.damage}. The tables cover the complete tasks that could be read; the file "
              "was left as it is")  # fmt: skip
    if scan.torn_tail:
        _warn(f"{out} ends in {scan.torn_tail}, left out (a run stopped mid-write; --resume runs that task again)")
    meta = None
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as err:
            raise RunnerError(f"cannot read the metadata {meta_path} ({err})") from None
        needed = ("n_images", "sigmas", "covs", "config", "fingerprint")
        if not (isinstance(meta, dict) and isinstance(meta.get("settings"), dict)
                and all(k in meta["settings"] for k in needed) and isinstance(meta.get("sittings"), list)):
            raise RunnerError(f"{meta_path} is not the metadata of a tightness run (no {', '.join(needed)} settings)")
    else:
        _warn(f"no metadata at {meta_path}: the report has no provenance, and cannot tell whether the run is complete")
    missing = {"image", "sigma", "cov", "point", "k", *ROW_LISTS} - set(rows[0]) if rows else set()
    if missing:
        raise RunnerError(f"{out} holds no tightness rows (no {', '.join(sorted(missing)[:3])} ...)")
    done = len(scan.tasks)
    if meta is not None:
        s = meta["settings"]
        try:
            expected = {task_id(t) for t in task_list(int(s["n_images"]), s["sigmas"], s["covs"])}
        except (KeyError, TypeError, ValueError):
            expected = None
        if expected is not None:
            foreign = set(scan.tasks) - expected
            if foreign:
                _warn(f"{len(foreign)} task(s) in {out} are not in the settings of {meta_path} (e.g. "
                      f"{sorted(foreign)[0]}): the metadata may belong to another run")
            present = len(set(scan.tasks) & expected)
            if present < len(expected):
                _warn(f"{out} holds {present} of the {len(expected)} tasks of its run (counted in the rows): the "
                      "run is incomplete, and the tables cover those tasks only; continue it with --resume")
    if not rows:
        _warn(f"{out} holds no complete task: the tables are empty")
    text = report_markdown(rows, meta)
    print(text)
    if args.tables:
        atomic_write(Path(args.tables), text.encode())
        _write_export_provenance(args, args.tables, out, meta_path, len(rows))
        print(f"tables written to {args.tables}", file=sys.stderr)
    if args.csv:
        n = write_per_image_csv(rows, args.csv)
        _write_export_provenance(args, args.csv, out, meta_path, len(rows))
        print(f"{n} per-digit records written to {args.csv}", file=sys.stderr)
    print(f"{done} complete task(s) read from {out}", file=sys.stderr)
    return 0


def _run_cli(args, out: Path, meta_path: Path, stop=None) -> int:
    try:
        # Lock first: a second run on these files stops here, at once, and a folder that cannot be written is found
        # before minutes of set-up. The cheap checks of a resume come next, for the same reason.
        with output_lock(out, meta_path):
            old = resume_metadata(out, meta_path, args.resume)
            check_writable(out)
            check_writable(meta_path)
            from ..data import load_mnist

            images, labels = load_mnist("test", path=args.mnist)
            pool, pool_labels = load_mnist("train", path=args.mnist)
            if args.images > len(images):
                print(f"error: --images {args.images} exceeds the {len(images)} test digits", file=sys.stderr)
                return 2
            clusters = tuple(args.clusters) if args.clusters else tuple(scaled_cluster_counts(len(pool)))
            if "input" not in args.point:
                print("error: --point must include 'input'", file=sys.stderr)
                return 2
            config = TightnessConfig(seed=args.seed, mc_samples=args.mc_samples, tie_samples=args.tie_samples,
                                     points=tuple(args.point), clusters=clusters)  # fmt: skip
            if old is not None:
                _check_settings(old, _settings(args.images, args.sigma, args.cov, config), out, meta_path)
            options = runner_kwargs(args)
            if options["scheduler"] is not None:  # fail fast, before minutes of k-means
                from .runner_dask import dask_client

                with dask_client(0, options["scheduler"], options["connect_timeout"]):
                    pass
            ctx = build_context(config, images=images, labels=labels, pool=pool, pool_labels=pool_labels,
                                n_images=args.images)  # fmt: skip
            meta = run_tightness(out, n_images=args.images, sigmas=args.sigma, covs=args.cov, config=config,
                                 context=ctx, command=command_line(args),
                                 metadata_path=meta_path, stop=stop, **options)  # fmt: skip
    except (RunnerError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: the finished tasks are in {out} and the sitting in {meta_path}; continue with --resume",
              file=sys.stderr)  # fmt: skip
        return 130
    print(f"{meta['tasks_done']} of {meta['n_tasks']} tasks in {out}; metadata in {meta_path}")
    return 0
