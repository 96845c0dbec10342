"""``python -m netmoments.experiments attack``: Gaussian adversarial attacks on the trained LeNet (spec 7).

Writes ``OUT.csv`` (one row per image), ``OUT.json`` (options, pooled Monte Carlo success with Wilson intervals,
sizes, times) and ``OUT.npz`` (clean images, attack means, noise stds, labels, targets) next to each other.
``--suite NAME`` instead runs a per-image evidence suite (:mod:`netmoments.experiments.attack_suite`, resumable),
``--tune JSON`` the tuning on training digits, and ``--book-data DIR`` regenerates chapter 8's browser data.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["register", "run_attack", "precompute_book_data"]


def _load(device, count, offset=0):
    from ..data import load_mnist
    from ..models import load_lenet

    model = load_lenet().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    images, labels = load_mnist("test")
    with torch.no_grad():
        ok = model(images.to(device)).argmax(-1).cpu() == labels
    idx = ok.nonzero().flatten()[offset : offset + count]
    return model, images[idx].to(device), labels[idx].to(device)


def _targets(spec, labels, seed):
    if spec in (None, "none"):
        return None
    if spec == "random":
        gen = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, 10, labels.shape, generator=gen).to(labels.device)
        return (labels + shift) % 10
    try:
        value = int(spec)
    except ValueError:
        raise ValueError(f"--target must be none, random or a class 0..9, got {spec!r}") from None
    if not 0 <= value <= 9:
        raise ValueError(f"--target must be none, random or a class 0..9, got {spec!r}")
    return torch.full_like(labels, value)


def run_attack(args) -> dict:
    from ..attacks import evaluate_attack, gaussian_attack

    torch.manual_seed(args.seed)
    model, images, labels = _load(args.device, args.images)
    target = _targets(args.target, labels, args.seed)
    if target is not None:
        # a fixed target equal to the label is no attack: keep only the images that differ
        keep = target != labels
        images, labels, target = images[keep], labels[keep], target[keep]
    options = dict(steps=args.steps, variables=args.variables, variance=args.variance, seed=args.seed,
                   progress=not args.no_progress)
    if args.l1_weight is not None:
        options["l1_weight"] = args.l1_weight
    result = gaussian_attack(model, images, labels, target=target, structure=args.structure, **options)
    gen = torch.Generator(device=images.device).manual_seed(args.seed)
    ev = evaluate_attack(model, result, labels, target=target, n_samples=args.samples, generator=gen)
    out = Path(args.out)
    stem = out.with_suffix("") if out.suffix in (".csv", ".json", ".npz") else out
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "target", "success_rate", "pixels_touched", "total_variation", "l2",
                         "linf", "mean_noise_std"])
        for i in range(len(labels)):
            writer.writerow([i, int(labels[i]), "" if target is None else int(target[i]),
                             f"{float(ev.per_image_success[i]):.4f}", int(ev.pixels_touched[i]),
                             f"{float(ev.total_variation[i]):.4f}", f"{float(ev.l2[i]):.4f}",
                             f"{float(ev.linf[i]):.4f}", f"{float(ev.mean_noise_std[i]):.5f}"])
    summary = dict(command=" ".join(getattr(args, "argv", []) or []), structure=args.structure,
                   target=args.target, options=result.options, evaluation=ev.summary(),
                   time_s=result.time_s, time_linearize_s=result.time_linearize_s)
    with open(stem.with_suffix(".json"), "w") as fh:
        json.dump(summary, fh, indent=2, default=str)
    np.savez_compressed(
        stem.with_suffix(".npz"), clean=images.cpu().numpy(), mean=result.mean.cpu().numpy(),
        noise_std=result.noise_std.cpu().numpy(), labels=labels.cpu().numpy(),
        target=(np.full(len(labels), -1) if target is None else target.cpu().numpy()),
        success=ev.per_image_success.numpy(),
    )
    print(f"success {ev.success_rate:.3f} (95% CI {ev.success_ci[0]:.3f}-{ev.success_ci[1]:.3f}) on "
          f"{len(labels)} images x {ev.n_samples} draws; median pixels touched "
          f"{float(ev.pixels_touched.float().median()):.0f}; {result.time_s / len(labels):.2f} s per image")
    return summary


def precompute_book_data(out_dir, device="cpu", n_widget=3, samples=200, seed=0, progress=True, command=None):
    """The targeted-attack browser of chapter 8 (``attacks_widget.npz``, about a minute on a 2-core CPU): for
    ``n_widget`` test digits x 2 targets (label + 1, + 4) x 3 fixed L1 weights, the clean digit, attack mean, noise
    std, three draws and the Monte Carlo success; browsed by :func:`netmoments.widgets.attack_browser_widget`.

    (The chapter's tables come from ``--suite``; the old pooled-draw sweeps were dropped.) The file carries its
    provenance record (:func:`netmoments.provenance.run_metadata`) as a JSON string in its ``provenance`` entry.
    """
    from ..provenance import run_metadata

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, images, labels = _load(device, n_widget)
    gen = lambda: torch.Generator(device=images.device).manual_seed(seed)  # noqa: E731
    arrays = _widget(model, images, labels, gen, samples, progress)
    record = run_metadata(command or f"python -m netmoments.experiments attack --book-data {out_dir} --seed {seed}",
                          seed=seed, samples=samples, n_widget=n_widget, wall_s=round(time.perf_counter() - start, 1))
    np.savez_compressed(out / "attacks_widget.npz", provenance=np.array(json.dumps(record)), **arrays)


def _widget(model, w_images, w_labels, gen, samples, progress):
    from ..attacks import evaluate_attack, gaussian_attack

    weights = (0.1, 0.3, 1.0)
    shifts = (1, 4)
    means, stds, draws, success = [], [], [], []
    targets = torch.stack([(w_labels + s) % 10 for s in shifts], 1)  # (n_widget, len(shifts))
    for t_idx in range(len(shifts)):
        row_means, row_stds, row_draws, row_succ = [], [], [], []
        for weight in weights:
            res = gaussian_attack(model, w_images, w_labels, target=targets[:, t_idx], structure="sparse",
                                  l1_weight=weight, l1_decay=1.0, progress=progress)
            ev = evaluate_attack(model, res, w_labels, target=targets[:, t_idx], n_samples=samples, generator=gen())
            row_means.append(res.mean.cpu())
            row_stds.append(res.noise_std.cpu())
            row_draws.append(res.sample(3, generator=gen()).transpose(0, 1).cpu())
            row_succ.append(ev.per_image_success)
        means.append(torch.stack(row_means, 1))
        stds.append(torch.stack(row_stds, 1))
        draws.append(torch.stack(row_draws, 1))
        success.append(torch.stack(row_succ, 1))
    # arrays indexed [image, target, weight, ...]
    return dict(
        clean=w_images.cpu().numpy(), labels=w_labels.cpu().numpy(), targets=targets.cpu().numpy(),
        weights=np.array(weights), mean=torch.stack(means, 1).numpy(),
        noise_std=torch.stack(stds, 1).numpy(),
        draws=torch.stack(draws, 1).numpy(),
        success=torch.stack(success, 1).numpy(),
    )


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``attack`` subcommand to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "attack",
        help="Gaussian adversarial attacks (sparse / smooth, targeted / untargeted) on the trained LeNet",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=16, help="number of correctly classified test digits")
    parser.add_argument("--structure", choices=["sparse", "smooth", "sparse+smooth"], default="sparse")
    parser.add_argument("--target", default="none", help="none (untargeted), random, or a class 0..9")
    parser.add_argument("--variables", choices=["mean", "noise", "both"], default="both")
    parser.add_argument("--variance", choices=["none", "linear", "exact", "series", "hybrid"], default="linear")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--l1-weight", type=float, default=None, help="default: the structure's default")
    parser.add_argument("--samples", type=int, default=500, help="Monte Carlo draws per image for the verdict")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/attack", help="output stem: writes .csv, .json and .npz")
    parser.add_argument("--book-data", default=None, metavar="DIR",
                        help="regenerate the chapter-8 sweeps into DIR instead of a single attack")
    parser.add_argument("--suite", default=None, choices=["sparse", "ablation", "smooth", "targeted"],
                        help="run a per-image evidence suite (netmoments.experiments.attack_suite) into --out "
                             "(.csv), resumable")
    parser.add_argument("--split", choices=["train", "test"], default="test",
                        help="digits to attack with --suite (tune on train, report on test)")
    parser.add_argument("--chunk", type=int, default=8, help="digits per task (one batch) with --suite")
    parser.add_argument("--tune", default=None, metavar="JSON",
                        help="tune the baselines' step size and our L1 price on --images training digits")
    from .runner import add_runner_arguments, command_line

    add_runner_arguments(parser)

    def handler(args):
        if args.tune:
            from .attack_suite import tune

            print(json.dumps(tune(args.tune, images=args.images, command=command_line(args)), indent=1, default=str))
            return 0
        if args.suite:
            from .attack_suite import run_suite
            from .runner import runner_kwargs

            out = args.out if args.out.endswith(".csv") else args.out + ".csv"
            run_suite(args.suite, out, split=args.split, images=args.images, chunk=args.chunk,
                      command=command_line(args), **runner_kwargs(args))
            return 0
        if args.book_data:
            precompute_book_data(args.book_data, device=args.device, seed=args.seed, progress=not args.no_progress,
                                 command=command_line(args))
        else:
            run_attack(args)
        return 0

    parser.set_defaults(func=handler)
    return parser
