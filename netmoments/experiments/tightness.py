"""How tight are the closed forms on a real deep network? NM20's tightness protocol (spec section 6).

For each test digit ``x`` and noise level ``sigma``:

1. ``Sigma`` = a fresh random dense SPD matrix with ``trace = 784 sigma^2`` (:func:`netmoments.random_spd`);
2. reference: Monte Carlo through the *real* LeNet with ``x + noise ~ N(x, Sigma)``, per-logit mean and variance
   with their standard errors (:func:`netmoments.monte_carlo_moments`);
3. analytic: two-stage linearization at a point ``p`` (the image itself, the centroid of its cluster in a
   labelled k-means, or the cluster member farthest from that centroid), then the closed-form mean and the
   variance with the exact ("new"), the series (N=5) and NM18's hybrid ("old") hidden covariance;
4. error: symmetric relative error ``2|a - b| / (|a| + |b|)`` per logit.

:func:`run_tightness` returns a :class:`TightnessResult` (one row per image x sigma x point x logit) that writes
the CSV, the markdown tables in the paper's layout and the per-sigma histogram figures. The CLI is
``python -m netmoments.experiments tightness --help``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..affine import AffineReLUAffine
from ..gaussian import random_spd
from ..linearize import prune_inactive_units, two_stage_linearize
from ..montecarlo import monte_carlo_moments
from ..provenance import run_metadata

__all__ = [
    "NM20_CLUSTER_FRACTIONS",
    "METHOD_LABELS",
    "symmetric_relative_error",
    "labelled_kmeans",
    "cluster_points",
    "scaled_cluster_counts",
    "run_tightness",
    "TightnessResult",
    "register",
    "main",
]

# NM20 clustered 10,000 images into k in {250, 500, 1000, 2500, 5000} clusters: these fractions of the images.
NM20_CLUSTER_FRACTIONS = (0.025, 0.05, 0.1, 0.25, 0.5)
METHOD_LABELS = {
    "exact": "new variance (exact)",
    "series": "new variance (series, N=5)",
    "hybrid": "old variance (NM18 hybrid)",
}
POINT_KINDS = ("input", "centroid", "farthest")
CSV_FIELDS = [
    "image", "label", "sigma", "point", "k", "logit", "mc_samples",
    "mc_mean", "mc_mean_se", "mc_var", "mc_var_se",
    "mean", "var_exact", "var_series", "var_hybrid",
    "err_mean", "err_var_exact", "err_var_series", "err_var_hybrid",
]  # fmt: skip


def symmetric_relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``2|a - b| / (|a| + |b|)`` elementwise, in ``[0, 2]``; 0 where both are 0."""
    denom = a.abs() + b.abs()
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, 2 * (a - b).abs() / safe, torch.zeros_like(denom))


def scaled_cluster_counts(n_images: int, fractions: Sequence[float] = NM20_CLUSTER_FRACTIONS) -> list[int]:
    """NM20's cluster counts scaled to ``n_images`` (``round(f * n)``, at least 1, without duplicates)."""
    return sorted({max(1, min(n_images, round(f * n_images))) for f in fractions})


def labelled_kmeans(points, labels, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labelled k-means: initial centres taken round-robin across the labels, then one k-means run from them.

    Round-robin: the first member of label 0, of label 1, ..., then the second member of each label, and so on
    (labels in increasing order, members in data order), until ``k`` centres are chosen.

    Args:
        points: ``(N, n)`` array or tensor.
        labels: ``(N,)`` integer labels.
        k: number of clusters, ``1 <= k <= N``.

    Returns:
        ``assignment (N,)`` int64 cluster ids and ``centroids (k, n)`` float64.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"points must be (N, n) and labels (N,), got {x.shape} and {y.shape}")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be an int in 1..{x.shape[0]} (the number of points), got {k!r}")
    members = [list(np.flatnonzero(y == c)) for c in np.unique(y)]
    init = []
    while len(init) < k:
        for queue in members:
            if queue and len(init) < k:
                init.append(queue.pop(0))
    km = KMeans(n_clusters=int(k), init=x[init], n_init=1, random_state=seed).fit(x)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float64)


def cluster_points(points, labels, k: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Linearization points from a labelled k-means: ``kind`` is "centroid" or "farthest" (member).

    Returns:
        ``unique_points (k, n)`` float64 and ``ids (N,)``: point ``i`` is linearized at ``unique_points[ids[i]]``.
    """
    if kind not in ("centroid", "farthest"):
        raise ValueError(f"kind must be 'centroid' or 'farthest', got {kind!r}")
    x = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    assignment, centroids = labelled_kmeans(x, labels, k, seed)
    if kind == "centroid":
        return centroids, assignment
    farthest = np.empty_like(centroids)
    for c in range(centroids.shape[0]):
        members = np.flatnonzero(assignment == c)
        if members.size == 0:  # k-means can empty a cluster; keep its centre so ids stay valid
            farthest[c] = centroids[c]
            continue
        dist = ((x[members] - centroids[c]) ** 2).sum(1)
        farthest[c] = x[members[np.argmax(dist)]]
    return farthest, assignment


def _fmt(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclass
class TightnessResult:
    """Rows (one per image x sigma x point x logit; keys :data:`CSV_FIELDS`) and run metadata."""

    rows: list[dict]
    metadata: dict = field(default_factory=dict)

    # -------------------------------------------------------------- views
    def column(self, name: str, **where) -> np.ndarray:
        """Values of ``name`` over the rows matching ``where`` (e.g. ``point="input", sigma=0.1``), in row order."""
        out = [r[name] for r in self.rows if all(_same(r[key], val) for key, val in where.items())]
        return np.asarray(out, dtype=np.float64)

    def per_logit(self, name: str, **where) -> np.ndarray:
        """``(n_images, n_logits)`` array of ``name`` for the matching rows."""
        values = self.column(name, **where)
        logits = self.column("logit", **where)
        n_logits = int(logits.max()) + 1 if logits.size else 0
        return values.reshape(-1, n_logits) if n_logits else values.reshape(0, 0)

    @property
    def sigmas(self) -> list[float]:
        return sorted({float(r["sigma"]) for r in self.rows})

    @property
    def point_specs(self) -> list[tuple[str, int | None]]:
        seen = []
        for r in self.rows:
            spec = (r["point"], _k_or_none(r["k"]))
            if spec not in seen:
                seen.append(spec)
        return seen

    # -------------------------------------------------------------- tables
    def table_by_logit(self, sigma: float, point: str = "input", k=None, digits: int = 3) -> str:
        """Markdown table (NM20 Table 2 layout): rows = quantity, columns = logits, cells = mean ± std over images."""
        where = dict(sigma=sigma, point=point, k=k if k is not None else "")
        mc_var = self.per_logit("mc_var", **where)
        if mc_var.size == 0:
            raise ValueError(f"no rows for sigma={sigma}, point={point!r}, k={k!r}")
        n_logits = mc_var.shape[1]
        header = "| quantity | " + " | ".join(str(c) for c in range(n_logits)) + " |"
        lines = [header, "|---" * (n_logits + 1) + "|"]
        entries = [("mean", "err_mean")] + [
            (METHOD_LABELS[m], f"err_var_{m}") for m in METHOD_LABELS if not np.isnan(self.per_logit(f"err_var_{m}", **where)).all()
        ]
        for label, name in entries:
            err = self.per_logit(name, **where)
            cells = [_fmt(err[:, c].mean(), err[:, c].std(), digits) for c in range(n_logits)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        rel_se = self.per_logit("mc_var_se", **where) / self.per_logit("mc_var", **where)
        cells = [_fmt(rel_se[:, c].mean(), rel_se[:, c].std(), digits) for c in range(n_logits)]
        lines.append("| MC variance relative SE | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def table_by_cluster(self, method: str = "exact", digits: int = 3) -> str:
        """Markdown table (NM20 Table 3 layout): rows = linearization point (k), columns = sigma.

        Each cell is the error of the variance from ``method``, as mean ± std over images per logit, then
        averaged over the logits; the mean's error is in the second half of the columns.
        """
        sigmas = self.sigmas
        head = [f"var σ={s:g}" for s in sigmas] + [f"mean σ={s:g}" for s in sigmas]
        lines = ["| point | k | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
        specs = sorted(self.point_specs, key=lambda s: (s[1] is not None, s[1] or 0, POINT_KINDS.index(s[0])))
        for point, k in specs:
            cells = []
            for name in (f"err_var_{method}", "err_mean"):
                for s in sigmas:
                    err = self.per_logit(name, sigma=s, point=point, k=k if k is not None else "")
                    if err.size == 0 or np.isnan(err).all():
                        cells.append("–")
                        continue
                    cells.append(_fmt(err.mean(0).mean(), err.std(0).mean(), digits))
            label = {"input": "p = x (the image)", "centroid": "cluster centroid", "farthest": "farthest member (baseline)"}
            lines.append(f"| {label[point]} | {'' if k is None else k} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self, digits: int = 3) -> str:
        """All tables: one Table-2 block per sigma (p = x) and, if clusters were run, Table 3 per method."""
        parts = []
        if ("input", None) in self.point_specs:
            for s in self.sigmas:
                parts.append(f"### Table 2, σ = {s:g} (p = x): symmetric relative error, mean ± std over images\n")
                parts.append(self.table_by_logit(s, "input", digits=digits) + "\n")
        if any(k is not None for _, k in self.point_specs):
            for method in METHOD_LABELS:
                if np.isnan(self.column(f"err_var_{method}", point="centroid")).all():
                    continue
                parts.append(
                    f"### Table 3: linearizing at cluster points, {METHOD_LABELS[method]} "
                    "(error averaged over logits)\n"
                )
                parts.append(self.table_by_cluster(method, digits=digits) + "\n")
        return "\n".join(parts)

    def provenance(self) -> str:
        """A markdown header naming the command, machine, dates and time of the run (from ``metadata``)."""
        meta = self.metadata
        if "command" not in meta:
            return ""
        total = meta.get("timings", {}).get("total_s")
        lines = [
            "# Tightness of the closed-form moments on LeNet (NM20 Tables 2 and 3)\n",
            f"- command: `{meta['command']}`",
            f"- machine: {meta.get('machine', '?')}; torch {meta.get('torch', '?')}, {meta.get('threads', '?')} threads, "
            f"device {meta.get('device', '?')}",
            f"- started {meta.get('started', '?')}, finished {meta.get('finished', '?')}"
            + (f"; total {total:.0f} s" if total is not None else ""),
            f"- load average at start / end: {meta.get('load_average_at_start')} / {meta.get('load_average_at_end')}",
            "",
        ]
        return "\n".join(lines) + "\n"

    # -------------------------------------------------------------- files
    def to_csv(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for r in self.rows:
                writer.writerow({key: _csv_value(r[key]) for key in CSV_FIELDS})

    @classmethod
    def from_csv(cls, path, metadata: dict | None = None) -> "TightnessResult":
        ints = {"image", "label", "logit", "mc_samples"}
        rows = []
        with open(path, newline="") as handle:
            for raw in csv.DictReader(handle):
                row = {}
                for key, value in raw.items():
                    if key in ("point",):
                        row[key] = value
                    elif key == "k":
                        row[key] = int(value) if value else ""
                    elif key in ints:
                        row[key] = int(value)
                    else:
                        row[key] = float(value) if value not in ("", "nan") else float("nan")
                rows.append(row)
        return cls(rows, dict(metadata or {}))

    def variance_arrays(self, sigma: float, point: str = "input", k=None) -> dict[str, np.ndarray]:
        """``{"mc", "exact", "series", "hybrid", "labels"}`` arrays ``(n_images, n_logits)`` for the histograms."""
        where = dict(sigma=sigma, point=point, k=k if k is not None else "")
        out = {"mc": self.per_logit("mc_var", **where)}
        for m in METHOD_LABELS:
            out[m] = self.per_logit(f"var_{m}", **where)
        out["labels"] = self.per_logit("label", **where)[:, 0].astype(np.int64)
        return out

    def save(self, csv_path, markdown_path=None, metadata_path=None, figure_dir=None) -> list[Path]:
        """Write the CSV and (optionally) the markdown tables, the metadata JSON and one histogram PNG per sigma."""
        written = [Path(csv_path)]
        self.to_csv(csv_path)
        if markdown_path is not None:
            Path(markdown_path).write_text(self.provenance() + self.markdown())
            written.append(Path(markdown_path))
        if metadata_path is not None:
            Path(metadata_path).write_text(json.dumps(self.metadata, indent=2, sort_keys=True) + "\n")
            written.append(Path(metadata_path))
        if figure_dir is not None and ("input", None) in self.point_specs:
            import matplotlib.pyplot as plt

            from ..viz import plot_variance_histograms

            Path(figure_dir).mkdir(parents=True, exist_ok=True)
            for s in self.sigmas:
                arrays = self.variance_arrays(s)
                new = arrays["exact"] if not np.isnan(arrays["exact"]).all() else arrays["series"]
                fig = plot_variance_histograms(arrays["mc"], new, arrays["hybrid"], sigma=s)
                path = Path(figure_dir) / f"tightness_hist_sigma{s:g}.png"
                fig.savefig(path, dpi=110, bbox_inches="tight")
                written.append(path)
                plt.close(fig)
        return written


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def _k_or_none(k):
    return None if k == "" or k is None else int(k)


def _csv_value(v):
    # 7 significant digits: far below the Monte Carlo noise (~1e-2 relative), a third of repr()'s file size.
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.7g}"
    return v


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            model = names[0]
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} logical CPUs"


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _sigma_generator(seed: int, image: int, sigma_index: int) -> torch.Generator:
    # One CPU generator per (image, sigma): Sigma is then the same whatever the batching or the device.
    return torch.Generator().manual_seed(((seed * 1_000_003 + image) * 1_009 + sigma_index) % (2**63))


def _linearize_points(model, points: torch.Tensor, input_shape, dtype, chunk_size: int):
    """Batched TSL at ``points (U, n)``; returns the four tensors in ``dtype``."""
    tsl = two_stage_linearize(model, points.reshape(-1, *input_shape), chunk_size=chunk_size)
    return tuple(t.to(dtype) for t in (tsl.A, tsl.c1, tsl.B, tsl.c2))


def run_tightness(
    model: torch.nn.Module | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    sigmas: Sequence[float] = (0.05, 0.1),
    n_images: int = 20,
    mc_samples: int = 10_000,
    points: Sequence[str] = ("input",),
    clusters: Sequence[int] | None = None,
    methods: Sequence[str] = ("exact", "series", "hybrid"),
    cluster_methods: Sequence[str] = ("exact",),
    device: str | torch.device = "cpu",
    seed: int = 0,
    batch_images: int = 4,
    mc_batch_size: int = 4096,
    dtype: torch.dtype = torch.float64,
    progress: bool = True,
) -> TightnessResult:
    """Run NM20's tightness protocol on ``n_images`` digits (default: the first of the MNIST test split).

    Args:
        model: an ``nn.Sequential`` piecewise-linear classifier of ``(B, 1, 28, 28)`` images (default: the
            trained LeNet of :func:`netmoments.models.load_lenet`).
        images, labels: ``(N, 1, 28, 28)`` float32 in [0, 1] and ``(N,)`` int64 (default: the test split).
        sigmas: average per-pixel noise std; ``trace(Sigma) = 784 sigma^2``.
        n_images: how many images to use (the first ``n_images``).
        mc_samples: Monte Carlo draws per image and sigma (NM20: 1e4).
        points: any of "input" (p = x), "centroid", "farthest" (cluster member farthest from its centroid).
        clusters: k values for the labelled k-means (default: NM20's k scaled to ``n_images``).
        methods: variance methods evaluated at p = x (of "exact", "series", "hybrid").
        cluster_methods: variance methods evaluated at the cluster points (cheaper default: "exact" only).
        device: where the network, the sampling and the moments run.
        seed: seeds Sigma (per image and sigma), the Monte Carlo draws and k-means.
        batch_images: images per vectorised step (linearization, Monte Carlo and moments).
        mc_batch_size: network evaluations per Monte Carlo batch (split over the images of a step).
        dtype: dtype of Sigma, the sampling and the moments (the network runs in its own dtype).
        progress: show a tqdm progress bar over image x sigma.

    Returns:
        :class:`TightnessResult`; its ``metadata`` holds the arguments and the time spent in each phase.
    """
    device = torch.device(device)
    for name, values, allowed in (("points", points, POINT_KINDS), ("methods", methods, METHOD_LABELS),
                                  ("cluster_methods", cluster_methods, METHOD_LABELS)):  # fmt: skip
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ValueError(f"{name} has unknown entries {bad}; choose from {list(allowed)}")
    if not points:
        raise ValueError("points must name at least one of " + ", ".join(POINT_KINDS))
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(not s > 0 for s in sigmas):
        raise ValueError(f"sigmas must be positive numbers, got {sigmas}")
    if not isinstance(mc_samples, int) or mc_samples < 2:
        raise ValueError(f"mc_samples must be an int >= 2, got {mc_samples!r}")
    if not isinstance(batch_images, int) or batch_images < 1:
        raise ValueError(f"batch_images must be a positive int, got {batch_images!r}")
    if model is None:
        from ..models import load_lenet

        model = load_lenet()
    if images is None or labels is None:
        from ..data import load_mnist

        images, labels = load_mnist("test")
    if not isinstance(n_images, int) or not 1 <= n_images <= images.shape[0]:
        raise ValueError(f"n_images must be an int in 1..{images.shape[0]}, got {n_images!r}")
    model = model.to(device).eval()
    net_dtype = next(model.parameters()).dtype
    images = images[:n_images].to(device)
    labels = labels[:n_images].to("cpu")
    flat = images.reshape(n_images, -1)
    n_in = flat.shape[1]

    # Linearization points: p = x per image (computed per step), cluster points once (cached, deduplicated).
    specs: list[tuple[str, int | None]] = [("input", None)] if "input" in points else []
    cluster_kinds = [p for p in points if p != "input"]
    if cluster_kinds:
        ks = list(clusters) if clusters else scaled_cluster_counts(n_images)
        for k in ks:
            specs.extend((kind, int(k)) for kind in cluster_kinds)
    timings = {"linearize_s": 0.0, "moments_s": 0.0, "monte_carlo_s": 0.0, "covariance_s": 0.0}
    cluster_tsl = {}
    start_all = time.perf_counter()
    for kind, k in specs:
        if k is None:
            continue
        unique, ids = cluster_points(flat.cpu(), labels, k, kind, seed)
        t0 = time.perf_counter()
        tensors = _linearize_points(
            model, torch.as_tensor(unique, dtype=net_dtype, device=device), images.shape[1:], dtype, batch_images
        )
        timings["linearize_s"] += time.perf_counter() - t0
        cluster_tsl[(kind, k)] = (tensors, torch.as_tensor(ids, device=device))

    # Convolutions run ~1.6x faster on NHWC tensors (oneDNN); a copy, so the caller's model is untouched.
    mc_model = copy.deepcopy(model).to(memory_format=torch.channels_last) if images.dim() == 4 else model

    def model_on_flat(x):  # (N, b, 784) in dtype -> (N, b, p) in dtype
        inputs = x.to(net_dtype).reshape(-1, *images.shape[1:])
        if images.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return mc_model(inputs).to(dtype).reshape(*x.shape[:-1], -1)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_images * len(sigmas), desc="tightness", unit="image·σ")
    rows: list[dict] = []
    nan = float("nan")
    for start in range(0, n_images, batch_images):
        idx = torch.arange(start, min(start + batch_images, n_images), device=device)
        x = flat[idx].to(dtype)
        step_tsl = {}
        if "input" in points:
            t0 = time.perf_counter()
            step_tsl[("input", None)] = _linearize_points(model, flat[idx], images.shape[1:], dtype, batch_images)
            timings["linearize_s"] += time.perf_counter() - t0
        for key, (tensors, ids) in cluster_tsl.items():
            step_tsl[key] = tuple(t[ids[idx]] for t in tensors)
        for si, sigma in enumerate(sigmas):
            t0 = time.perf_counter()
            cov = torch.stack(
                [random_spd(n_in, n_in * sigma**2, generator=_sigma_generator(seed, int(i), si), dtype=dtype)
                 for i in idx.tolist()]  # fmt: skip
            ).to(device)
            timings["covariance_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            gen = torch.Generator(device=device).manual_seed(seed * 7_919 + start * 31 + si)
            mc = monte_carlo_moments(
                model_on_flat, x, cov, mc_samples, batch_size=max(1, mc_batch_size // len(idx)), generator=gen
            )
            timings["monte_carlo_s"] += time.perf_counter() - t0
            for kind, k in specs:
                spec_methods = methods if kind == "input" else cluster_methods
                t0 = time.perf_counter()
                net = AffineReLUAffine(*step_tsl[(kind, k)])
                mean = None
                var = {}
                for m in METHOD_LABELS:
                    if m in spec_methods:
                        # Dropping always-off units leaves the exact moments unchanged (to ~1e-16, tested) and
                        # cuts the pairwise work ~4x; the approximations are run on the full network because
                        # their errors on those units are part of what is measured.
                        used = prune_inactive_units(net, x, cov) if m == "exact" else net
                        mean, var[m] = used.moments(x, cov, method=m, output="var")
                if mean is None:  # no variance asked for: the mean alone
                    mean = net.moments(x, cov, method="hybrid", output="var")[0]
                timings["moments_s"] += time.perf_counter() - t0
                err_mean = symmetric_relative_error(mean, mc.mean)
                errs = {m: symmetric_relative_error(v, mc.var) for m, v in var.items()}
                cols = {
                    "mc_mean": mc.mean, "mc_mean_se": mc.mean_se, "mc_var": mc.var, "mc_var_se": mc.var_se,
                    "mean": mean, "err_mean": err_mean,
                }  # fmt: skip
                for m in METHOD_LABELS:
                    cols[f"var_{m}"] = var.get(m)
                    cols[f"err_var_{m}"] = errs.get(m)
                cols = {key: (val.detach().cpu().tolist() if val is not None else None) for key, val in cols.items()}
                for b, i in enumerate(idx.tolist()):
                    for logit in range(mc.mean.shape[-1]):
                        row = {
                            "image": i, "label": int(labels[i]), "sigma": sigma, "point": kind,
                            "k": "" if k is None else k, "logit": logit, "mc_samples": mc_samples,
                        }  # fmt: skip
                        for key, val in cols.items():
                            row[key] = nan if val is None else float(val[b][logit])
                        rows.append(row)
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.close()
    timings["total_s"] = time.perf_counter() - start_all
    metadata = {
        "sigmas": sigmas,
        "n_images": n_images,
        "mc_samples": mc_samples,
        "points": list(points),
        "clusters": sorted({k for _, k in specs if k is not None}),
        "methods": list(methods),
        "cluster_methods": list(cluster_methods),
        "device": str(device),
        "seed": seed,
        "batch_images": batch_images,
        "mc_batch_size": mc_batch_size,
        "dtype": str(dtype).replace("torch.", ""),
        "timings": {key: round(val, 3) for key, val in timings.items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": _machine(),
        "load_average_at_end": _load_average(),
    }
    return TightnessResult(rows, metadata)


# ---------------------------------------------------------------------------------------------- CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``tightness`` subcommand to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "tightness",
        help="NM20's tightness experiment (Tables 2 and 3) on the trained LeNet",
        description=(
            "Per test digit and sigma: a random SPD Sigma with trace 784*sigma^2, Monte Carlo through the real "
            "LeNet, and the two-stage-linearized closed forms (new exact / series, old NM18 hybrid variance). "
            "Writes one CSV row per image x sigma x point x logit, plus optional markdown tables, metadata "
            "JSON and per-sigma histogram figures."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.05, 0.1], help="per-pixel noise std levels")
    parser.add_argument("--images", type=int, default=20, help="number of test digits")
    parser.add_argument("--mc-samples", type=int, default=10_000, help="Monte Carlo draws per image and sigma")
    parser.add_argument("--point", nargs="+", choices=POINT_KINDS, default=["input"], help="linearization points")
    parser.add_argument("--clusters", type=int, nargs="+", default=None,
                        help="k values for the labelled k-means (default: NM20's k scaled to --images)")  # fmt: skip
    parser.add_argument("--methods", nargs="+", choices=list(METHOD_LABELS), default=list(METHOD_LABELS),
                        help="variance methods at p = x")  # fmt: skip
    parser.add_argument("--cluster-methods", nargs="+", choices=list(METHOD_LABELS), default=["exact"],
                        help="variance methods at the cluster points")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-images", type=int, default=4, help="images per vectorised step")
    parser.add_argument("--mc-batch-size", type=int, default=4096, help="network evaluations per MC batch")
    parser.add_argument("--out", default="tightness.csv", help="CSV output path")
    parser.add_argument("--table", default=None, help="markdown tables output path (default: beside --out, .md)")
    parser.add_argument("--metadata", default=None, help="run metadata JSON path (default: beside --out, .json)")
    parser.add_argument("--figures", default=None, help="folder for the per-sigma histogram PNGs (default: none)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Run the ``tightness`` subcommand from parsed arguments; returns the exit status."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    out = Path(args.out)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_at_start = _load_average()
    result = run_tightness(
        sigmas=args.sigma,
        n_images=args.images,
        mc_samples=args.mc_samples,
        points=args.point,
        clusters=args.clusters,
        methods=args.methods,
        cluster_methods=args.cluster_methods,
        device=args.device,
        seed=args.seed,
        batch_images=args.batch_images,
        mc_batch_size=args.mc_batch_size,
        progress=not args.no_progress,
    )
    argv = getattr(args, "argv", None) or sys.argv[1:]
    result.metadata["command"] = "python -m netmoments.experiments " + " ".join(argv)
    result.metadata["started"] = started
    result.metadata["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result.metadata["load_average_at_start"] = load_at_start
    result.metadata["provenance"] = run_metadata(result.metadata["command"],
                                                 wall_s=result.metadata["timings"]["total_s"])
    table = Path(args.table) if args.table else out.with_suffix(".md")
    meta = Path(args.metadata) if args.metadata else out.with_suffix(".json")
    written = result.save(out, table, meta, args.figures)
    print(result.markdown())
    print(f"total time {result.metadata['timings']['total_s']:.1f} s; wrote " + ", ".join(str(p) for p in written))
    return 0
