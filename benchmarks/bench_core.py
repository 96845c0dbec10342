"""Core benchmarks P1, P4, P7, P9: analytic network moments vs Monte Carlo, method costs, autograd overhead, memory.

    python benchmarks/bench_core.py [--device cuda] [--quick]
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netmoments as nm  # noqa: E402
from common import best_time, main, row, sync  # noqa: E402


def _network(n, m, p, device, gen):
    A = torch.randn(m, n, generator=gen, dtype=torch.float64, device=device) / math.sqrt(n)
    c1 = 0.5 * torch.randn(m, generator=gen, dtype=torch.float64, device=device)
    B = torch.randn(p, m, generator=gen, dtype=torch.float64, device=device) / math.sqrt(m)
    c2 = torch.zeros(p, dtype=torch.float64, device=device)
    return nm.AffineReLUAffine(A, c1, B, c2)


def bench_p1(device, quick=False, eps=3e-3):
    """Analytic (exact mean + covariance) vs Monte Carlo reaching relative variance error eps."""
    gen = torch.Generator(device=device).manual_seed(0)
    n, m, p = 784, 1024, 10
    net = _network(n, m, p, device, gen)
    mean = torch.rand(n, generator=gen, dtype=torch.float64, device=device)
    cov = nm.random_spd(n, trace=n * 0.1**2, generator=gen, device=device)
    t_analytic = best_time(lambda: net.moments(mean, cov), device, repeat=3)
    # Pilot: the relative standard error of every output variance from N_pilot draws gives
    # N*(eps) = N_pilot * (max_k rse_k / eps)^2 draws for all ten variances to reach eps.
    n_pilot = 20_000
    mc = nm.monte_carlo_moments(net, mean, cov, n_pilot, batch_size=5000, generator=gen)
    rse = (mc.var_se / mc.var).max().item()
    n_star = int(math.ceil(n_pilot * (rse / eps) ** 2))
    n_run = n_star if not quick else min(n_star, 50_000)
    sync(device)
    t0 = time.perf_counter()
    mc_star = nm.monte_carlo_moments(net, mean, cov, n_run, batch_size=8192, generator=gen)
    sync(device)
    t_mc = (time.perf_counter() - t0) * n_star / n_run
    _, var = net.moments(mean, cov, output="var")
    achieved = ((mc_star.var - var).abs() / var).max().item()
    ratio = t_mc / t_analytic
    return row(
        "P1",
        f"Affine(784->1024)-ReLU-Affine(1024->10), random SPD Sigma: Monte Carlo time at eps={eps:g} relative variance "
        f"error (N*={n_star:,} draws, Cholesky sampler, {'extrapolated from ' + format(n_run, ',') if n_run < n_star else 'run in full'}; "
        f"max rel. error reached {achieved:.1e}) / analytic exact mean+cov time ({t_analytic * 1e3:.0f} ms)",
        f"{ratio:,.0f}x",
        ">= 1000x",
        ratio >= 1000,
    )


def bench_p4(device, m=1024):
    gen = torch.Generator(device=device).manual_seed(1)
    a = torch.randn(m, m // 2, generator=gen, dtype=torch.float64, device=device) / math.sqrt(m)
    cov = a @ a.T + 1e-3 * torch.eye(m, dtype=torch.float64, device=device)
    mean = 0.3 * torch.randn(m, generator=gen, dtype=torch.float64, device=device)
    t_exact = best_time(lambda: nm.relu_covariance(mean, cov, validate=False), device, repeat=3)
    t_zero = best_time(lambda: nm.relu_covariance(mean, cov, method="zero_mean", validate=False), device, repeat=5)
    t_hybrid = best_time(lambda: nm.relu_covariance(mean, cov, method="hybrid", validate=False), device, repeat=5)
    t_series = best_time(lambda: nm.relu_covariance(mean, cov, method="series", validate=False), device, repeat=3)
    ratio = t_exact / t_zero
    return row(
        "P4",
        f"exact relu_covariance / zero_mean at m={m} ({t_exact * 1e3:.0f} ms vs {t_zero * 1e3:.1f} ms; "
        f"hybrid {t_hybrid * 1e3:.1f} ms, series(5) {t_series * 1e3:.0f} ms)",
        f"{ratio:.1f}x",
        "<= 10x",
        ratio <= 10,
    )


def bench_p7(device):
    gen = torch.Generator(device=device).manual_seed(2)
    n, m, p = 784, 1024, 10
    net = _network(n, m, p, device, gen)
    base_cov = nm.random_spd(n, trace=n * 0.1**2, generator=gen, device=device)
    mean = torch.rand(n, generator=gen, dtype=torch.float64, device=device)

    def forward(requires_grad):
        mu = mean.clone().requires_grad_(requires_grad)
        log_scale = torch.zeros((), dtype=torch.float64, device=device, requires_grad=requires_grad)
        out_mean, out_var = net.moments(mu, base_cov * log_scale.exp(), output="var")
        return out_mean.sum() + out_var.sum(), (mu, log_scale)

    def fwd():
        with torch.no_grad():
            forward(False)

    def fwd_bwd():
        loss, params = forward(True)
        torch.autograd.grad(loss, params)

    t_f = best_time(fwd, device, repeat=3)
    t_fb = best_time(fwd_bwd, device, repeat=3)
    ratio = t_fb / t_f
    return row(
        "P7",
        f"forward+backward / forward of sum(E[g]) + sum(Var[g]) w.r.t. the input mean and a covariance scale "
        f"(784->1024->10, exact; {t_fb * 1e3:.0f} ms vs {t_f * 1e3:.0f} ms)",
        f"{ratio:.2f}x",
        "<= 3x",
        ratio <= 3,
    )


_P9_CHILD = r"""
import math, sys, torch, netmoments as nm
m = int(sys.argv[1]); device = sys.argv[2]
def hwm():
    with open('/proc/self/status') as fh:
        return [int(l.split()[1]) * 1024 for l in fh if l.startswith('VmHWM')][0]
gen = torch.Generator(device=device).manual_seed(3)
a = torch.randn(m, 64, generator=gen, dtype=torch.float64, device=device) / 8
cov = a @ a.T
cov.diagonal().add_(1e-2)
mean = 0.3 * torch.randn(m, generator=gen, dtype=torch.float64, device=device)
del a
nm.relu_covariance(mean[:8], cov[:8, :8])  # warm up lazy caches
if device == 'cuda':
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    with open('/proc/self/clear_refs', 'w') as fh:
        fh.write('5')  # reset the peak-RSS counter to the current RSS
    base = hwm()
with torch.no_grad():
    out = nm.relu_covariance(mean, cov, validate=False)
if device == 'cuda':
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
else:
    peak = hwm() - base
print(peak)
"""


def bench_p9(device, m=4096):
    # A fresh process, so its high-water mark starts with nothing but the inputs.
    out = subprocess.run(
        [sys.executable, "-c", _P9_CHILD, str(m), str(device)], capture_output=True, text=True, check=True
    )
    peak = int(out.stdout.strip().splitlines()[-1])
    budget = 4 * m * m * 8
    return row(
        "P9",
        f"peak extra memory of relu_covariance (exact) at m={m} (result alone is {m * m * 8 / 2**20:.0f} MiB)",
        f"{peak / 2**20:.0f} MiB ({peak / budget:.2f} of budget)",
        f"<= 4*m^2*8 B = {budget / 2**20:.0f} MiB",
        peak <= budget,
    )


def run(device="cpu", quick=False):
    return [bench_p1(device, quick), bench_p4(device), bench_p7(device), bench_p9(device)]


if __name__ == "__main__":
    main(run, __doc__)
