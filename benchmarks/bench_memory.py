"""P13: what glibc's handling of freed memory costs an experiment task, and what the runner's settings save.

    python benchmarks/bench_memory.py [--quick]

A Monte Carlo task pushes 10^4 draws through LeNet in batches of 2,000 (as a tightness task does, twice for a
dense-noise task), on a single torch thread, on a thread other than the main one (as on a Dask worker). Each
setting runs in a fresh process, since glibc reads its settings when a process starts; the processes alternate,
and each reports its best round:

- ``glibc default``: no ``MALLOC_`` variables;
- ``Dask's default``: ``MALLOC_TRIM_THRESHOLD_=65536``, what a Dask nanny gives its workers unless told otherwise;
- ``runner``: :data:`netmoments.experiments.runner.MALLOC_ENVIRON` (one arena, no mmap, no trimming).

The table gives wall and CPU time, the kernel's share of it and the page faults per round, and the ratio of each
setting's CPU time to the runner's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from common import main, row

from netmoments.experiments.runner import MALLOC_ENVIRON

# One process: a warm-up round, then `rounds` timed rounds of 10^4 draws on a non-main thread; prints JSON.
PROBE = """
import json, os, resource, sys, threading, time
import torch
from netmoments.models import load_lenet

torch.set_num_threads(1)
model = load_lenet().float().eval().to(memory_format=torch.channels_last)
generator = torch.Generator().manual_seed(0)
x = torch.rand(1, 1, 28, 28, generator=generator)
rounds, results = int(sys.argv[1]), []

def one_round():
    with torch.no_grad():
        for _ in range(5):
            noise = 0.1 * torch.randn(2000, 1, 28, 28, generator=generator)
            model((x + noise).contiguous(memory_format=torch.channels_last))

def work():
    one_round()
    for _ in range(rounds):
        usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        one_round()
        after = resource.getrusage(resource.RUSAGE_SELF)
        results.append({"wall": time.perf_counter() - start, "user": after.ru_utime - usage.ru_utime,
                        "kernel": after.ru_stime - usage.ru_stime, "faults": after.ru_minflt - usage.ru_minflt})

thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps(results))
"""

SETTINGS = {
    "glibc default": {},
    "Dask's default": {"MALLOC_TRIM_THRESHOLD_": "65536"},
    "runner": MALLOC_ENVIRON,
}


def _probe(extra: dict, rounds: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
    out = subprocess.run([sys.executable, "-c", PROBE, str(rounds)], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def run(device="cpu", quick=False) -> list[dict]:
    """P13 rows: per setting, the best round (by CPU time) over ``repeats`` alternating processes."""
    if device != "cpu":
        return []  # host memory only
    repeats, rounds = (1, 2) if quick else (3, 3)
    best = {}
    for _ in range(repeats):
        for name, extra in SETTINGS.items():
            for r in _probe(extra, rounds):
                r["cpu"] = r["user"] + r["kernel"]
                if name not in best or r["cpu"] < best[name]["cpu"]:
                    best[name] = r
    ours = best["runner"]["cpu"]
    rows = []
    for name, r in best.items():
        rows.append(row(
            "P13",
            f"10^4 LeNet draws on a worker-like thread, {name}: wall {r['wall']:.2f} s, CPU {r['cpu']:.2f} s "
            f"({100 * r['kernel'] / r['cpu']:.0f} % kernel), {r['faults']:,} page faults; CPU / runner's",
            f"{r['cpu'] / ours:.2f}x", "report", True))
    return rows


if __name__ == "__main__":
    main(run, __doc__)
