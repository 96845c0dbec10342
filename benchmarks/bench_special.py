"""Special-function benchmarks P2, P3: the exact bivariate normal cdf Phi2 (speed and accuracy).

    python benchmarks/bench_special.py [--device cuda] [--quick]

P2  Phi2 on 1e6 random float64 pairs (h, k ~ N(0, 1.5^2), rho ~ U(-1, 1)): time relative to one
    torch.special.ndtr over the same 1e6 values, and the max abs error against SciPy's Owen's T formula.
P3  the same Phi2 against scipy.stats.multivariate_normal.cdf called per pair, and against the vectorised
    numpy/SciPy Owen's T formula. Also reported: NM20's 5-term series relative to the exact Phi2.
Ratios are measured in one run on one machine; times are best-of-several wall clock after a warm-up. On CPU the
P2 ratio is also given in one-thread CPU time, and P3 compares one-thread CPU times (SciPy's loop is
single-threaded): on a shared machine wall-clock ratios with several threads swing with other jobs' load.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The SciPy reference is the one the tests use, so the benchmark's error column checks the same thing.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import netmoments as nm  # noqa: E402
from reference import owens_t_phi2  # noqa: E402
from common import best_time, main, row  # noqa: E402


def _best_cpu_time(fn, repeat):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _pairs(n, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = 1.5 * torch.randn(n, generator=gen, dtype=torch.float64)
    k = 1.5 * torch.randn(n, generator=gen, dtype=torch.float64)
    rho = 2.0 * torch.rand(n, generator=gen, dtype=torch.float64) - 1.0
    return h.to(device), k.to(device), rho.to(device)


def run(device="cpu", quick=False) -> list[dict]:
    n = 1_000_000
    repeat = 3 if quick else 7
    h, k, rho = _pairs(n, device)
    t_ndtr = best_time(lambda: torch.special.ndtr(h), device, repeat=repeat)
    t_phi2 = best_time(lambda: nm.bivariate_normal_cdf(h, k, rho), device, repeat=repeat)
    cpu_ratio = None
    if torch.device(device).type == "cpu":
        # On a shared machine, wall-clock ratios with several threads swing with other processes' load;
        # the CPU time of one thread measures the work itself.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            c_ndtr = _best_cpu_time(lambda: torch.special.ndtr(h), repeat)
            c_phi2 = _best_cpu_time(lambda: nm.bivariate_normal_cdf(h, k, rho), repeat)
        finally:
            torch.set_num_threads(threads)
        cpu_ratio = c_phi2 / c_ndtr
    t_series = best_time(lambda: nm.bivariate_normal_cdf_series(h, k, rho, terms=5), device, repeat=repeat)
    hn, kn, rn = (x.cpu().numpy() for x in (h, k, rho))
    t_owen = best_time(lambda: owens_t_phi2(hn, kn, rn), repeat=1 if quick else 3)
    error = np.abs(nm.bivariate_normal_cdf(h, k, rho).cpu().numpy() - owens_t_phi2(hn, kn, rn)).max()

    n_scipy = 50 if quick else 300
    stats.multivariate_normal.cdf([hn[0], kn[0]], mean=[0.0, 0.0], cov=[[1.0, rn[0]], [rn[0], 1.0]])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for a, b, r in zip(hn[:n_scipy], kn[:n_scipy], rn[:n_scipy]):
        stats.multivariate_normal.cdf([a, b], mean=[0.0, 0.0], cov=[[1.0, r], [r, 1.0]])
    per_pair_scipy = (time.perf_counter() - t0) / n_scipy
    cpu_per_pair_scipy = (time.process_time() - c0) / n_scipy
    per_pair_ours = t_phi2 / n

    ratio_ndtr = t_phi2 / t_ndtr
    rows = [
        row("P2", f"Phi2 on 1e6 float64 pairs (h,k~N(0,1.5^2), rho~U(-1,1)) on {device}: wall time "
                  f"({t_phi2 * 1e3:.0f} ms) / torch.special.ndtr on the same 1e6 values ({t_ndtr * 1e3:.1f} ms), "
                  f"{torch.get_num_threads()} threads",
            f"{ratio_ndtr:.1f}x", "<= 15x", ratio_ndtr <= 15),
    ]
    if cpu_ratio is not None:
        rows.append(row("P2", f"the same, CPU time with 1 thread (Phi2 {c_phi2 * 1e3:.0f} ms, ndtr {c_ndtr * 1e3:.1f} ms)",
                        f"{cpu_ratio:.1f}x", "<= 15x", cpu_ratio <= 15))
    ratio_scipy = per_pair_scipy / per_pair_ours
    if cpu_ratio is not None:
        # SciPy's loop runs on one thread: compare it with our one-thread CPU time.
        ratio_scipy_cpu = cpu_per_pair_scipy / (c_phi2 / n)
        scipy_what = (f"scipy.stats.multivariate_normal.cdf called per pair ({cpu_per_pair_scipy * 1e6:.0f} us CPU, "
                      f"{n_scipy} pairs timed) / our Phi2 per pair (1 thread, {c_phi2 / n * 1e9:.0f} ns CPU, batched 1e6); "
                      f"wall-clock with {torch.get_num_threads()} threads: {ratio_scipy:,.0f}x")
    else:
        ratio_scipy_cpu = ratio_scipy
        scipy_what = (f"scipy.stats.multivariate_normal.cdf called per pair on CPU ({per_pair_scipy * 1e6:.0f} us, "
                      f"{n_scipy} pairs timed) / our Phi2 per pair on {device} ({per_pair_ours * 1e9:.1f} ns, batched 1e6)")
    ratio_owen = t_owen / t_phi2
    return rows + [
        row("P2", "Phi2 max abs error on those 1e6 pairs vs SciPy owens_t formula (float64)",
            f"{error:.1e}", "<= 1e-13", error <= 1e-13),
        row("P3", scipy_what, f"{ratio_scipy_cpu:,.0f}x", ">= 1000x", ratio_scipy_cpu >= 1000),
        row("P3", f"vectorised numpy/SciPy owens_t formula on the 1e6 pairs ({t_owen * 1e3:.0f} ms) / our Phi2",
            f"{ratio_owen:.2f}x", "report", True),
        row("P3", f"NM20 series Phi2, 5 terms ({t_series * 1e3:.0f} ms) / exact Phi2 on the 1e6 pairs",
            f"{t_series / t_phi2:.2f}x", "report", True),
    ]


if __name__ == "__main__":
    main(run, __doc__)
