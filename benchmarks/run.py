"""Run every benchmark and print one markdown table of ratios, all measured in this run.

    python benchmarks/run.py [--device cuda] [--only special,core,deep,attacks,memory] [--quick]

Record the table and the machine line in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, markdown_table  # noqa: E402

SUITES = ["special", "core", "deep", "layerwise", "attacks", "memory"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=",".join(SUITES), help="comma-separated subset of " + ", ".join(SUITES))
    parser.add_argument("--quick", action="store_true", help="shorter runs where a suite supports it")
    args = parser.parse_args(argv)
    rows = []
    started = time.perf_counter()
    for name in args.only.split(","):
        module = importlib.import_module(f"bench_{name.strip()}")
        kwargs = {"quick": args.quick} if "quick" in inspect.signature(module.run).parameters else {}
        print(f"running bench_{name} ...", file=sys.stderr, flush=True)
        rows.extend(module.run(args.device, **kwargs))
    print(f"Machine: {machine(args.device)}; device {args.device}; {datetime.date.today()}; "
          f"total {time.perf_counter() - started:.0f} s\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
