"""Chapter 7's ties control: which nonlinearity's noise average fixes the input linearization's mean error?

The tie-aware point of :mod:`.tightness` averages the Jacobians of every max-pool *and* every ReLU before the kept
ReLU over the noise. This module splits that average (:func:`netmoments.linearize.split_expected_linearization`):

- ``"pool_aware"``: only the max-pool choices averaged over the noise draws, the ReLU gates fixed at ``x``;
- ``"relu_aware"``: only the ReLU gates averaged, the max-pool choices fixed at ``x`` (the first maximum);

and compares both with ``"input"`` (``p = x``) and ``"tie_aware"`` on the committed tightness run's digits, dense
noise, with the *same* covariance, antithetic draws and Monte Carlo truth as that run (its ``mc_mean``,
``mc_var``, read from ``book/data/tightness_scale.jsonl.gz``; nothing is resampled), so every difference between
points is paired on the digit.

It also counts each digit's *near ties at the noise scale*: a max-pool window whose top two inputs differ by less
than ``k`` standard deviations of their difference under the input linearization's noise (exact for the first
pool, whose input is the first convolution: linear), ``k = 1, 2, 3``, among the windows that can be active (the
largest input above ``-k`` of its own standard deviations; a window far below zero is cut by the next ReLU
whatever it picks). ``exact_ties_pool*`` counts the windows whose top two inputs are equal at ``x``.

Rows (one per digit, sigma and point): ``zmu`` (median over the 10 logits of ``|mean - MC mean| / MC sd``) and
``var_err_exact`` (mean over logits of the symmetric relative error of the exact closed-form variance), as the
tightness run's per-digit table defines them, and the tie counts of the digit at that sigma.
CLI: ``python -m netmoments.experiments.tightness_ties --help``.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data import MNIST_SHAPE
from ..linearize import _forward_pattern, _structured_jacobian, split_expected_linearization
from .sittings import git_commit, load_average, machine, now, versions
from .tightness import _exact_moments, _task_generator, _task_linearizations, build_context
from .tightness_analysis import symmetric_relative_error
from .tightness_settings import TightnessConfig

POINTS = ("input", "pool_aware", "relu_aware", "tie_aware")
SIGMAS = (0.01, 0.05, 0.2)
KS = (1, 2, 3)
POOLS = (1, 2)
COLUMNS = ("image", "label", "sigma", "point", "zmu", "var_err_exact",
           *[f"exact_ties_pool{p}" for p in POOLS], *[f"near{k}_pool{p}" for p in POOLS for k in KS])  # fmt: skip
TRUTH = Path(__file__).resolve().parents[2] / "book" / "data" / "tightness_scale.jsonl.gz"


def read_truth(path=TRUTH, n_images: int | None = None, sigmas=SIGMAS) -> dict:
    """The committed run's truth and its rows, by ``(image, sigma)`` (dense covariance): a dict of
    ``{point: row}`` with the ``input`` and ``tie_aware`` rows (per-logit lists of 10)."""
    out = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            if '"dense"' not in line:
                continue
            r = json.loads(line)
            if r.get("cov") != "dense" or r["point"] not in ("input", "tie_aware") or r["sigma"] not in sigmas:
                continue
            if n_images is not None and r["image"] >= n_images:
                continue
            out.setdefault((r["image"], r["sigma"]), {})[r["point"]] = r
    return out


def near_ties(model, x: torch.Tensor, factor: torch.Tensor, ks=KS) -> dict:
    """Per max-pool layer (the first two), exact ties and windows tied within ``k`` noise sds at ``x``.

    Args:
        model: the LeNet ``nn.Sequential`` (float32); x: the digit, float64 ``(784,)``; factor: ``L``, float64
            ``(784, 784)`` with the noise covariance ``L L^T``.

    Returns:
        ``{"exact_ties_pool<l>": int, "near<k>_pool<l>": int}``.
    """
    pools = [i for i, layer in enumerate(model) if isinstance(layer, torch.nn.MaxPool2d)][: len(POOLS)]
    point = x.float().reshape(1, *MNIST_SHAPE)
    out = {}
    for number, at in enumerate(pools, start=1):
        part = model[:at]  # the pool's input
        with torch.no_grad():
            z, pattern = _forward_pattern(part, point)
            jac = _structured_jacobian(part, point.reshape(1, -1), MNIST_SHAPE, pattern)[0].to(torch.float64)
        k = model[at].kernel_size if isinstance(model[at].kernel_size, int) else model[at].kernel_size[0]
        C, H, W = z.shape[1:]
        flat = torch.arange(C * H * W).reshape(1, C, H, W).to(torch.float64)
        windows = z.to(torch.float64).unfold(2, k, k).unfold(3, k, k).reshape(C * (H // k) * (W // k), k * k)
        where = flat.unfold(2, k, k).unfold(3, k, k).reshape(-1, k * k)
        top = windows.topk(2, dim=-1)
        first = where.gather(1, top.indices[:, :1]).long().squeeze(1)
        second = where.gather(1, top.indices[:, 1:]).long().squeeze(1)
        gap = top.values[:, 0] - top.values[:, 1]
        sd_gap = ((jac[first] - jac[second]) @ factor).norm(dim=1)
        sd_top = (jac[first] @ factor).norm(dim=1)
        out[f"exact_ties_pool{number}"] = int((gap == 0).sum())
        for kk in ks:
            live = top.values[:, 0] > -kk * sd_top
            out[f"near{kk}_pool{number}"] = int(((gap < kk * sd_gap) & live).sum())
    return out


def _sig(v: float) -> float:
    return float(f"{v:.6g}")


def ties_task(ctx, key, truth: dict) -> list[dict]:
    """The rows of one task ``(image, sigma, "dense")``: one per point of :data:`POINTS`."""
    image, sigma, cov = key
    x, label, factor, means, lin, B, c2 = _task_linearizations(key, ctx)
    by_name = {name: (A, c1) for name, _, A, c1, _, _ in lin}
    # the tie-aware point's own antithetic draws, drawn again from its seed
    n = x.numel()
    half = torch.randn(ctx.config.tie_samples // 2, n, generator=_task_generator(ctx, key, "tie_aware"),
                       dtype=torch.float64) @ factor.mT  # fmt: skip
    eps = torch.cat([half, -half]).float()
    for average in ("pool", "relu"):
        by_name[f"{average}_aware"] = split_expected_linearization(ctx.model, x.float().reshape(MNIST_SHAPE), eps,
                                                                   average)  # fmt: skip
    sigma_cov = factor @ factor.mT
    B64, c2_64 = B.to(torch.float64), c2.to(torch.float64)
    ref = truth[(image, sigma)]["input"]
    mc_mean, mc_var = np.array(ref["mc_mean"]), np.array(ref["mc_var"])
    ties = near_ties(ctx.model, x, factor)
    rows = []
    from ..affine import AffineReLUAffine

    for name in POINTS:
        A, c1 = by_name[name]
        net = AffineReLUAffine(A.to(torch.float64), c1.to(torch.float64), B64, c2_64)
        mean, var = (t.numpy() for t in _exact_moments(net, x, sigma_cov))
        zmu = float(np.median(np.abs(mean - mc_mean) / np.sqrt(mc_var)))
        var_err = float(np.mean(symmetric_relative_error(var, mc_var)))
        rows.append({"image": image, "label": label, "sigma": sigma, "point": name, "zmu": _sig(zmu),
                     "var_err_exact": _sig(var_err), **ties})  # fmt: skip
    return rows


def run(out_csv, n_images: int, sigmas=SIGMAS, command: str | None = None, budget_s: float | None = None,
        first: int = 0) -> dict:
    """Run (or resume) the control over digits ``first .. n_images - 1`` into ``out_csv`` and its ``.json``.

    A task already in ``out_csv`` is skipped; each finished task is appended at once, so an interrupted run loses
    at most one task. ``budget_s`` stops starting new tasks after that many CPU seconds of this sitting.
    """
    torch.set_num_threads(1)
    out_csv = Path(out_csv)
    meta_path = out_csv.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"sittings": []}
    settings = {"n_images": n_images, "sigmas": [float(s) for s in sigmas], "cov": "dense", "points": list(POINTS),
                "ks": list(KS), "truth": "book/data/tightness_scale.jsonl.gz",
                "config": {"seed": 0, "tie_samples": 8, "mc_samples": 10_000}}  # fmt: skip
    # a task's rows do not depend on how many digits the run covers, so a resumed run may cover more
    same = {k: v for k, v in meta.get("settings", settings).items() if k != "n_images"}
    if same != {k: v for k, v in settings.items() if k != "n_images"}:
        raise SystemExit(f"error: {out_csv} was written with other settings ({meta_path}); use another --out")
    meta["settings"] = settings
    config = TightnessConfig(points=("input", "tie_aware"))
    ctx = build_context(config, n_images=n_images)
    truth = read_truth(n_images=n_images, sigmas=settings["sigmas"])
    done = set()
    if out_csv.exists():
        with open(out_csv) as f:
            rows = [(int(r["image"]), float(r["sigma"])) for r in csv.DictReader(f)]
        done = {key for key in set(rows) if rows.count(key) == len(POINTS)}
    sitting = {"command": command, "git_commit": git_commit(), "versions": versions(), "machine": machine(),
               "started": now(), "load_average_at_start": load_average(), "threads": 1, "tasks_run": 0,
               "images": [first, n_images]}  # fmt: skip
    meta["sittings"].append(sitting)
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")  # a killed sitting is still on record
    new = not out_csv.exists()
    cpu0 = time.process_time()
    with open(out_csv, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for image in range(first, n_images):
            for sigma in settings["sigmas"]:
                if (image, sigma) in done:
                    continue
                if budget_s is not None and time.process_time() - cpu0 > budget_s:
                    break
                for row in ties_task(ctx, (image, sigma, "dense"), truth):
                    writer.writerow(row)
                f.flush()
                sitting["tasks_run"] += 1
    sitting.update({"finished": now(), "cpu_s": round(time.process_time() - cpu0, 1),
                    "load_average_at_end": load_average()})  # fmt: skip
    meta["tasks_done"] = len(done) + sitting["tasks_run"]
    meta["n_tasks"] = n_images * len(settings["sigmas"])
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netmoments.experiments.tightness_ties",
                                     description="Chapter 7's ties control (see the module docstring).")
    parser.add_argument("--out", default="book/data/ties_control.csv", help="the CSV (its metadata: .json beside)")
    parser.add_argument("--n-images", type=int, default=60, help="the first N test digits of the committed run")
    parser.add_argument("--first-image", type=int, default=0, help="start at this digit (a second worker)")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting tasks after this CPU time")
    args = parser.parse_args(argv)
    if not 1 <= args.n_images <= 1000:
        parser.error(f"--n-images must be in 1..1000, got {args.n_images}")
    cmd = "python -m netmoments.experiments.tightness_ties " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = run(args.out, args.n_images, command=cmd.strip(), budget_s=args.budget_s, first=args.first_image)
    print(f"{meta['tasks_done']} of {meta['n_tasks']} tasks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
