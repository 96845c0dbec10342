"""Shared timing and reporting helpers for the benchmark scripts (ratios are always measured in one run)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from netmoments.provenance import cpu_model, run_metadata


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device="cpu", repeat=5, warmup=1, min_total=0.0) -> float:
    """Best wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    started = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - started < min_total:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def row(id_, what, measured, target, ok) -> dict:
    return {"id": id_, "what": what, "measured": measured, "target": target, "ok": bool(ok)}


def machine(device="cpu") -> str:
    """The CPU model and count, torch's version and threads, and the GPU when ``device`` is a CUDA device."""
    name, count = cpu_model()
    cpu = f"{name} x{count}" if count else name
    desc = f"{cpu}; torch {torch.__version__}; {torch.get_num_threads()} threads"
    if torch.device(device).type == "cuda":
        desc += f"; {torch.cuda.get_device_name()}"
    return desc


def markdown_table(rows) -> str:
    lines = ["| # | what | measured | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['id']} | {r['what']} | {r['measured']} | {r['target']} | {'yes' if r['ok'] else 'no'} |")
    return "\n".join(lines)


def main(run, doc, argv=None) -> None:
    """The command line every suite shares: ``--device``, ``--quick``, ``--threads``; prints the table."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="shorter runs (fewer images, draws or repeats)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default); on a busy 2-core machine the "
                             "default can make small operations an order of magnitude slower")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = run(args.device, quick=args.quick)
    wall_s = time.perf_counter() - started
    meta = run_metadata([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)], wall_s=wall_s)
    print(f"Machine: {machine(args.device)}; device {args.device}; total {wall_s:.0f} s")
    print(f"Provenance: commit {meta['git_commit'] or 'unknown'}{' (uncommitted changes)' if meta['git_dirty'] else ''}, "
          f"{meta['date']}, " + ", ".join(f"{k} {v}" for k, v in meta["packages"].items()) + "\n")
    print(markdown_table(rows))
