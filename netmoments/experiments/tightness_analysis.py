"""From a tightness run's rows to the chapter's numbers: per-image metrics (:func:`image_metrics`), Table 2
(:func:`summary_table`) and Table 3 (:func:`cluster_table`) with 95 % bootstrap intervals over images, the
per-digit records they are computed from (:func:`per_image_table`, :func:`write_per_image_csv`) and the markdown
report with its provenance (:func:`report_markdown`). What the rows hold is in
:mod:`netmoments.experiments.tightness`.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..prose import format_ci
from ..stats import bonferroni_z, bootstrap_ci
from .runner import atomic_write
from .tightness_settings import COV_KINDS, METHODS, POINT_KINDS

__all__ = [
    "symmetric_relative_error",
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
]


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


def _select(rows, **where):
    """The rows whose columns equal ``where``'s values."""
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


#: The columns of the per-image CSV the tightness report writes.
PER_IMAGE_COLUMNS = (
    "image", "label", "sigma", "cov", "point", "k", "clusters", "ties", "mc_samples",
    "var_err_exact", "var_err_series", "var_err_hybrid", "mean_err", "zmu", "var_lin_part", "var_formula_part",
    "mc_var_rel_se", "z_formula_max", "z_lin_mean", "z_lin_var", "lin_var_high",
)  # fmt: skip


def _setting_order(setting):
    """The sort key of a setting ``(sigma, cov, point, k)``: covariance family, sigma, point, then ``k``."""
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
