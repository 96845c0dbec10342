"""Markdown tables of chapter 9's per-image attack evidence, from the committed suite results.

    python benchmarks/attack_tables.py [--data book/data]

Reads ``attack_{sparse,sparse_search,sparse_search_fmn,ablation,smooth,targeted}.csv`` (rows of :mod:`netmoments.experiments.attack_suite`)
and prints, per suite, one row per method with 95 % bootstrap intervals over digits (never pooled draws), plus
each run's provenance line (command, commit, digits done). The tables in ``benchmarks/README.md`` are this
script's output; rerun it after a suite grows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from netmoments.attacks import report  # noqa: E402
from netmoments.attacks.metrics import L2_BUDGETS  # noqa: E402


def _provenance(meta: dict) -> str:
    last = meta["sittings"][-1]
    return (f"`{last['command']}` at commit `{str(last['git_commit'])[:12]}`, {meta['images_done']} digits "
            f"({meta['tasks_done']}/{meta['n_tasks']} tasks), {meta.get('wall_s_total', float('nan')):.0f} s wall "
            f"over {len(meta['sittings'])} sitting(s), {last['machine']}")


def sparse_table(rows) -> list[str]:
    fi = report.format_interval
    out = ["| method | digits | success | q10 | success, L0 <= 10 | success, L0 <= 20 | median L0 | SSIM | "
           "diversity | passes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in report.method_table(rows):
        passes = t["forward"][0] + t["backward"][0]
        out.append(f"| {t['method']} | {t['n']} | {fi(t['success'], 3)} | {t['success_q10'][0]:.2f} | "
                   f"{fi(t['success_l0_10'])} | {fi(t['success_l0_20'])} | {fi(t['l0'], 0)} | {t['ssim'][0]:.3f} | "
                   f"{t['diversity'][0]:.2f} | {passes:.0f} |")
    return out


def smooth_table(rows) -> list[str]:
    fi = report.format_interval
    head = " | ".join(f"L2 <= {b:g}" for b in L2_BUDGETS)
    out = [f"| method | digits | success | {head} | median L2 | median TV | SSIM |",
           "|---|---|---|" + "---|" * len(L2_BUDGETS) + "---|---|---|"]
    for t in report.method_table(rows, budgets=L2_BUDGETS, size="l2"):
        cells = " | ".join(f"{t[f'success_l2_{b:g}'][0]:.2f}" for b in L2_BUDGETS)
        out.append(f"| {t['method']} | {t['n']} | {fi(t['success'], 3)} | {cells} | {fi(t['l2'])} | "
                   f"{fi(t['tv'], 1)} | {t['ssim'][0]:.3f} |")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "book" / "data"))
    args = parser.parse_args(argv)
    data = Path(args.data)
    for suite, table in (("sparse", sparse_table), ("sparse-search", sparse_table),
                         ("sparse-search-fmn", sparse_table), ("ablation", sparse_table),
                         ("targeted", sparse_table), ("smooth", smooth_table)):
        path = data / f"attack_{suite.replace('-', '_')}.csv"
        if not path.exists() or not path.with_suffix(".json").exists():
            print(f"#### {suite}: not run\n")
            continue
        rows = report.load_rows(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        print(f"#### {suite}\n\n{_provenance(meta)}\n")
        print("\n".join(table(rows)))
        if suite == "sparse-search":
            for method in ("gauss-sparse", "gauss-sparse-l0", "gauss-sparse-fmn", "fmn-l0"):
                est, lo, hi = report.cost_ratio(rows, method)
                print(f"\n{method}: {est:.2f}x [{lo:.2f}, {hi:.2f}] the 100-step-PGD yardstick per digit", end="")
            print()
        if suite == "sparse":
            for method in ("gauss-sparse", "eot-sparse", "fmn-l0", "l0-pgd-k20"):
                est, lo, hi = report.cost_ratio(rows, method)
                print(f"\n{method}: {est:.2f}x [{lo:.2f}, {hi:.2f}] the 100-step-PGD yardstick per digit "
                      "(timed per 8-digit task in the same process; bootstrap over tasks)", end="")
            cal = report.calibration(rows)
            print("\n\nsurrogate calibration (predicted success vs Monte Carlo on the real network, per digit):")
            for lo, hi, n, p, m in cal["bins"]:
                print(f"- predicted in [{lo:.3f}, {hi:.3f}]: {n} digits, mean predicted {p:.3f}, measured {m:.3f}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
