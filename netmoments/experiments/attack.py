"""``python -m netmoments.experiments attack``: Gaussian adversarial attacks on the trained LeNet.

Writes ``OUT.csv`` (one row per image), ``OUT.json`` (options, pooled Monte Carlo success with Wilson intervals,
sizes, times) and ``OUT.npz`` (clean images, attack means, noise stds, labels, targets) next to each other
(default ``--out results/attack_single``; existing files are overwritten only with ``--force``).
``--suite NAME`` instead runs a per-image evidence suite (:mod:`netmoments.experiments.attack_suite`, resumable,
default ``--out results/attack_NAME.csv``), ``--tune JSON`` the tuning on training digits, and ``--book-data DIR``
regenerates chapter 8's browser data (both overwrite only with ``--force``). Options of another mode are refused,
and every output is locked and checked to be writable before anything is computed.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import attack_suite
from .runner import (
    RunnerError, add_runner_arguments, atomic_write, check_writable, command_line, output_lock, positive_int,
    runner_kwargs, seed_value, stop_on_sigterm,
)

__all__ = ["register", "run_attack", "precompute_book_data", "single_stem", "SINGLE_OUT", "suite_out"]

#: ``--out`` of a single attack (a stem: ``.csv``, ``.json`` and ``.npz`` are written beside each other); a suite's
#: default is :func:`suite_out`, so the two never share a file.
SINGLE_OUT = "results/attack_single"
WIDGET_FILE = "attacks_widget.npz"


def single_stem(out) -> Path:
    """The stem a single attack writes ``.csv``, ``.json`` and ``.npz`` to (``--out`` without one of them)."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".csv", ".json", ".npz") else out


def suite_out(suite: str, out=None) -> str:
    """The results file of ``--suite`` (``.csv``): ``--out`` (``.csv`` added if missing) or
    ``results/attack_<suite>.csv``."""
    if out is None:
        return f"results/attack_{suite}.csv"
    return out if out.endswith(".csv") else out + ".csv"


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
    """Run one Gaussian attack on test digits from the parsed ``attack`` arguments, and write its files.

    Attacks the first ``args.images`` test digits with :func:`netmoments.attacks.gaussian_attack` (seeded by
    ``args.seed``), judges the result by sampling the real network (:func:`netmoments.attacks.evaluate_attack`,
    ``args.samples`` draws per image), and writes, each file whole or not at all, beside ``args.out``: a per-image
    ``.csv``, a ``.json`` summary (command, options, evaluation, timings) and an ``.npz`` of the clean images,
    attacked means, noise stds, labels, targets and per-image success. With a target, digits already of the
    target class are skipped. Returns the summary written to the ``.json``.
    """
    from ..attacks import evaluate_attack, gaussian_attack

    torch.manual_seed(args.seed)
    model, images, labels, _ = attack_suite.load_digits("test", args.images, device=args.device)
    target = _targets(args.target, labels, args.seed)
    if target is not None:
        # a fixed target equal to the label is no attack: keep only the images that differ
        keep = target != labels
        images, labels, target = images[keep], labels[keep], target[keep]
    options = dict(steps=args.steps, variables=args.variables, method=args.variance, seed=args.seed,
                   progress=not args.no_progress)
    if args.l1_weight is not None:
        options["l1_weight"] = args.l1_weight
    result = gaussian_attack(model, images, labels, target=target, structure=args.structure, **options)
    gen = torch.Generator(device=images.device).manual_seed(args.seed)
    ev = evaluate_attack(model, result, labels, target=target, n_samples=args.samples, generator=gen)
    stem = single_stem(args.out)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
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
    arrays = io.BytesIO()
    np.savez_compressed(
        arrays, clean=images.cpu().numpy(), mean=result.mean.cpu().numpy(),
        noise_std=result.noise_std.cpu().numpy(), labels=labels.cpu().numpy(),
        target=(np.full(len(labels), -1) if target is None else target.cpu().numpy()),
        success=ev.per_image_success.numpy(),
    )
    # each file whole or not at all (a temporary file renamed over it), never half written
    atomic_write(stem.with_suffix(".csv"), table.getvalue().encode())
    atomic_write(stem.with_suffix(".json"), json.dumps(summary, indent=2, default=str).encode())
    atomic_write(stem.with_suffix(".npz"), arrays.getvalue())
    print(f"success {ev.success_rate:.3f} (95% CI {ev.success_ci[0]:.3f}-{ev.success_ci[1]:.3f}) on "
          f"{len(labels)} images x {ev.n_samples} draws; median pixels touched "
          f"{float(ev.pixels_touched.float().median()):.0f}; {result.time_s / len(labels):.2f} s per image")
    return summary


def precompute_book_data(out_dir, device="cpu", n_widget=3, n_samples=200, seed=0, progress=True, command=None, *,
                         samples=None):
    """The targeted-attack browser of chapter 8 (``attacks_widget.npz``, about a minute on a 2-core CPU): for
    ``n_widget`` test digits x 2 targets (label + 1, + 4) x 3 fixed L1 weights, the clean digit, attack mean, noise
    std, three draws and the Monte Carlo success (on ``n_samples`` draws; formerly ``samples=``, still accepted
    with a ``DeprecationWarning``); browsed by :func:`netmoments.widgets.attack_browser_widget`.

    (The chapter's tables come from ``--suite``; the old pooled-draw sweeps were dropped.) The file carries its
    provenance record (:func:`netmoments.provenance.run_metadata`) as a JSON string in its ``provenance`` entry.
    """
    from .._validation import renamed
    from ..provenance import run_metadata

    samples = renamed("precompute_book_data", "samples", "n_samples", samples, n_samples, 200)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, images, labels, _ = attack_suite.load_digits("test", n_widget, device=device)
    gen = lambda: torch.Generator(device=images.device).manual_seed(seed)  # noqa: E731
    arrays = _widget(model, images, labels, gen, samples, progress)
    record = run_metadata(command or f"python -m netmoments.experiments attack --book-data {out_dir} --seed {seed}",
                          seed=seed, samples=samples, n_widget=n_widget, wall_s=round(time.perf_counter() - start, 1))
    data = io.BytesIO()
    np.savez_compressed(data, provenance=np.array(json.dumps(record)), **arrays)
    atomic_write(out / WIDGET_FILE, data.getvalue())


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (an option whose default depends on the mode says it in its help)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _target(text: str) -> str:
    if text in ("none", "random") or (text.isdigit() and 0 <= int(text) <= 9):
        return text
    raise argparse.ArgumentTypeError(f"expected none, random or a class 0..9, got {text!r}")


def _l1_weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (use cpu or cuda[:N])") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text}: use cpu or cuda[:N]")
    return text


# Options of one mode only, with their defaults (set after parsing, so that giving one in another mode, where it
# would be silently ignored, is an error).
_SINGLE_DEFAULTS = dict(structure="sparse", target="none", variables="both", variance="linear", steps=100, samples=500)
_DEVICE_DEFAULTS = dict(device="cpu", seed=0)  # single attack and --book-data
_SUITE_DEFAULTS = dict(split="test", chunk=8)
_RUNNER_DEFAULTS = dict(resume=False, workers=0, scheduler=None, threads=1, retries=2, connect_timeout=5.0)


def _mode(args) -> str:
    return "tune" if args.tune else "suite" if args.suite else "book-data" if args.book_data else "single"


def _check_mode_options(parser, args) -> None:
    """Refuse options that the chosen mode would ignore; fill in the defaults of the ones it uses."""
    mode = _mode(args)
    flag = {"l1_weight": "--l1-weight", "book_data": "--book-data"}

    def refuse(given):
        if given:
            shown = ", ".join(flag.get(n, "--" + n.replace("_", "-")) for n in given)
            parser.error(f"{shown} {'does' if len(given) == 1 else 'do'} not apply to "
                         + {"single": "a single attack", "suite": "--suite", "tune": "--tune",
                            "book-data": "--book-data"}[mode])

    explicit = {n for n in (*_SINGLE_DEFAULTS, *_DEVICE_DEFAULTS, *_SUITE_DEFAULTS) if getattr(args, n) is not None}
    if args.l1_weight is not None:
        explicit.add("l1_weight")
    explicit |= {n for n, d in _RUNNER_DEFAULTS.items() if getattr(args, n) != d}
    if args.out is not None:
        explicit.add("out")
    if args.force:
        explicit.add("force")
    if args.images is not None:
        explicit.add("images")
    uses = {"single": {*_SINGLE_DEFAULTS, "l1_weight", *_DEVICE_DEFAULTS, "out", "force", "images"},
            "suite": {*_SUITE_DEFAULTS, *_RUNNER_DEFAULTS, "out", "images"},
            "tune": {"images", "force"},
            "book-data": {*_DEVICE_DEFAULTS, "force"}}[mode]
    refuse(sorted(explicit - uses))
    for name, default in {**_SINGLE_DEFAULTS, **_DEVICE_DEFAULTS, **_SUITE_DEFAULTS}.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.images is None:
        args.images = 16


def _refuse_existing(paths, force: bool) -> None:
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not force:
        raise RunnerError(f"{', '.join(existing)} {'exists' if len(existing) == 1 else 'exist'}; pass --force to "
                          "overwrite, or choose another path (this mode does not resume: --suite runs do)")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``attack`` subcommand to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "attack",
        help="Gaussian adversarial attacks (sparse / smooth, targeted / untargeted) on the trained LeNet",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--suite", default=None, choices=list(attack_suite.SUITES),
                      help="run a per-image evidence suite (netmoments.experiments.attack_suite) into --out "
                           "(.csv), resumable")
    mode.add_argument("--tune", default=None, metavar="JSON",
                      help="tune the baselines' step size and our L1 price on --images training digits")
    mode.add_argument("--book-data", default=None, metavar="DIR",
                      help=f"regenerate chapter 8's browser data ({WIDGET_FILE}) into DIR instead of a single attack")
    parser.add_argument("--images", type=positive_int, default=None,
                        help="number of correctly classified digits (default: 16)")
    parser.add_argument("--out", default=None,
                        help=f"a single attack: output stem, writes .csv, .json and .npz (default: {SINGLE_OUT}); "
                             "--suite: results .csv, with its metadata .json beside it (default: "
                             "results/attack_SUITE.csv)")
    parser.add_argument("--force", action="store_true",
                        help="a single attack, --tune, --book-data: overwrite existing output files")
    single = parser.add_argument_group("a single attack")
    single.add_argument("--structure", choices=["sparse", "smooth", "sparse+smooth"], default=None,
                        help="default: sparse")
    single.add_argument("--target", type=_target, default=None,
                        help="none (untargeted), random, or a class 0..9 (default: none)")
    single.add_argument("--variables", choices=["mean", "noise", "both"], default=None, help="default: both")
    single.add_argument("--variance", choices=["none", "linear", "exact", "series", "hybrid"], default=None,
                        help="default: linear")
    single.add_argument("--steps", type=positive_int, default=None, help="optimization steps (default: 100)")
    single.add_argument("--l1-weight", type=_l1_weight, default=None, help="default: the structure's default")
    single.add_argument("--samples", type=positive_int, default=None,
                        help="Monte Carlo draws per image for the verdict (default: 500)")
    single.add_argument("--device", type=_device, default=None, help="cpu or cuda[:N] (default: cpu)")
    single.add_argument("--seed", type=seed_value, default=None, help="0 to 2^32 - 1 (default: 0)")
    suite = parser.add_argument_group("--suite")
    suite.add_argument("--split", choices=["train", "test"], default=None,
                       help="digits to attack (tune on train, report on test; default: test)")
    suite.add_argument("--chunk", type=positive_int, default=None, help="digits per task, one batch (default: 8)")
    add_runner_arguments(parser)

    def handler(args):
        _check_mode_options(parser, args)
        try:
            return _handle(args, command_line(args))
        except KeyboardInterrupt:
            where = f" (finished tasks are kept in {suite_out(args.suite, args.out)}; continue with --resume)" \
                if args.suite else ""
            print(f"interrupted{where}", file=sys.stderr)
            return 130
        except (RunnerError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    parser.set_defaults(func=handler)
    return parser


def _handle(args, command: str) -> int:
    """The ``attack`` subcommand once its options are checked: every output is locked and checked to be writable
    before anything is computed, and nothing is overwritten without ``--force`` (a suite resumes instead)."""
    if args.tune:
        paths = [Path(args.tune)]
    elif args.suite:
        out = suite_out(args.suite, args.out)
        with stop_on_sigterm() as stop:
            meta = attack_suite.run_suite(args.suite, out, split=args.split, images=args.images, chunk=args.chunk,
                                          command=command, stop=stop, **runner_kwargs(args))
        print(f"{meta['tasks_done']} of {meta['n_tasks']} tasks in {out}; metadata in {Path(out).with_suffix('.json')}")
        return 0
    elif args.book_data:
        paths = [Path(args.book_data) / WIDGET_FILE]
    else:
        stem = single_stem(args.out or SINGLE_OUT)
        paths = [stem.with_suffix(suffix) for suffix in (".csv", ".json", ".npz")]
    with output_lock(*paths):
        _refuse_existing(paths, args.force)
        for path in paths:
            check_writable(path)
        if args.tune:

            tuned = attack_suite.tune(args.tune, images=args.images, command=command)
            print(json.dumps(tuned, indent=1, default=str))
        elif args.book_data:
            precompute_book_data(args.book_data, device=args.device, seed=args.seed, progress=not args.no_progress,
                                 command=command)
        else:
            if args.out is None:
                args.out = SINGLE_OUT
            run_attack(args)
    return 0
