"""P14: the layer-by-layer closures on LeNet, per digit: CPU time against one forward pass, and peak memory.

Each method runs in a fresh process (so its peak resident memory is its own), one torch thread, with the
experiment runner's malloc settings and one warm-up digit, on the tightness run's dense covariance at sigma = 0.05
for a few test digits; the forward pass per draw is timed in the same processes, so every ratio ("draws at equal
cost") comes from one run.

    python benchmarks/bench_layerwise.py [--digits 3]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import main, row  # noqa: E402

METHODS = ("diag", "lowrank", "lowrank32", "full", "unscented")

_CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
torch.set_grad_enabled(False)
from netmoments.experiments import layerwise as L
from netmoments.experiments.runner import keep_freed_memory
keep_freed_memory()  # as the experiment runs: freed buffers are reused, not faulted in again
method, digits = sys.argv[1], [int(d) for d in sys.argv[2].split(",")]
ctx = L.build_layerwise_context(L.LayerwiseConfig(), n_images=max(digits) + 1)
inputs = [L.task_input(ctx, d, 0.05, "dense") for d in digits]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
L.method_moments(method, ctx.model64, ctx.model, *inputs[0][::2])  # warm-up: one-time set-up is not per digit
cpu = []
for x, _, cov in inputs:
    start = time.process_time()
    L.method_moments(method, ctx.model64, ctx.model, x, cov)
    cpu.append(time.process_time() - start)
draw = min(L.forward_seconds_per_draw(ctx.mc_model, inputs[0][0], 1000, 3) for _ in range(2))
print(json.dumps({"cpu": cpu, "draw": draw, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "base_gb": base / 1e6}))
"""


def run(device="cpu", quick=False, digits=None) -> list[dict]:
    if str(device) != "cpu":
        return []  # the closures' GPU timing is a separate, lent-device run
    digits = digits or ([0] if quick else [0, 1, 2])
    rows = []
    for method in METHODS:
        if quick and method in ("full", "unscented"):
            continue
        out = subprocess.run([sys.executable, "-c", _CHILD, method, ",".join(map(str, digits))], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        res = json.loads(out.strip().splitlines()[-1])
        per_digit = sorted(res["cpu"])[len(res["cpu"]) // 2]
        draws = per_digit / res["draw"]
        target, ok = ("<= 1,000 draws", draws <= 1000) if method == "lowrank32" else ("report", True)
        rows.append(row(
            "P14",
            f"CPU time, 1 thread: LeNet moments by `{method}`, median over {len(digits)} digits ({per_digit:.2f} s) "
            f"/ one forward pass per draw ({1e3 * res['draw']:.3f} ms); peak memory {res['peak_gb']:.2f} GB "
            f"({res['peak_gb'] - res['base_gb']:.2f} GB above the loaded model and data)",
            f"{draws:,.0f} draws", target, ok,
        ))  # fmt: skip
    return rows


if __name__ == "__main__":
    main(run, __doc__)
