"""Attack benchmarks P10 and P7: the cost of the default sparse Gaussian attack per image, and its objective.

    python benchmarks/bench_attacks.py [--device cuda] [--quick]

P10 Cost per attacked image, batched, on the first correctly classified test digits: the default untargeted
    sparse Gaussian attack (support solver: its own final Monte Carlo check included) against the yardstick of
    a 100-step PGD, i.e. 100 forward + backward passes of LeNet per image (L-infinity PGD, eps 0.3), timed in the
    same run on the same batch (best of 3 alternating repeats each, so machine load affects both sides alike).
    Goal: <= 2x. Also reported: the attack's expected success per image (mean over digits of the fraction of
    100 draws that fool the real LeNet; a bootstrap interval over digits) and its network passes per image.
P7  Forward + backward over forward time of the attack objective (one fixed linearization, 8 images).
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_time, main, row  # noqa: E402

from netmoments.attacks import LinearizedAttackObjective, gaussian_attack, pgd_attack  # noqa: E402
from netmoments.attacks.metrics import bootstrap_ci, image_metrics  # noqa: E402
from netmoments.data import load_mnist  # noqa: E402
from netmoments.linearize import two_stage_linearize  # noqa: E402
from netmoments.models import load_lenet  # noqa: E402


def _digits(model, count, device):
    images, labels = load_mnist("test")
    images, labels = images.to(device), labels.to(device)
    with torch.no_grad():
        ok = model(images).argmax(-1) == labels
    idx = ok.nonzero().flatten()[:count]
    return images[idx], labels[idx]


def bench_p10(model, images, labels, repeats=3):
    bsz = len(labels)
    t_ours, t_pgd, result = [], [], None
    for _ in range(repeats):  # alternate, so a change of load hits both
        start = time.perf_counter()
        result = gaussian_attack(model, images, labels)
        t_ours.append((time.perf_counter() - start) / bsz)
        start = time.perf_counter()
        pgd_attack(model, images, labels, eps=0.3, steps=100)
        t_pgd.append((time.perf_counter() - start) / bsz)
    ours, pgd = min(t_ours), min(t_pgd)
    ratio = ours / pgd
    metrics = image_metrics(model, result, labels, n_samples=100, generator=torch.Generator().manual_seed(0))
    est, lo, hi = bootstrap_ci(metrics.success, "mean")
    opts = result.options
    threads = f"{torch.get_num_threads()} threads"
    return [
        row("P10", f"default sparse Gaussian attack per image vs 100-step PGD (100 fwd+bwd of LeNet), batch of "
            f"{bsz} test digits, {threads}: {ours:.3f} s vs {pgd:.3f} s", f"{ratio:.2f}x", "<= 2x", ratio <= 2),
        row("P10", f"its network passes per image: {opts['forward_passes']:.0f} forward + "
            f"{opts['backward_passes']:.0f} backward + {opts['jvp_passes']:.0f} masked linear (columns of A)",
            f"{opts['forward_passes'] + opts['backward_passes'] + opts['jvp_passes']:.0f}", "report", True),
        row("P10", f"expected success per image on the real LeNet (100 draws each; 95 % bootstrap over {bsz} "
            "digits)", f"{est:.3f} [{lo:.3f}, {hi:.3f}]", "report", True),
    ]


def bench_p7(model, images, labels, device):
    net = two_stage_linearize(model, images)
    bsz = images.shape[0]
    obj = LinearizedAttackObjective(net, images.flatten(1), labels, False, tuple(images.shape[1:]))
    gen = torch.Generator(device=device).manual_seed(0)
    v = (0.05 * torch.randn(bsz, 784, generator=gen, device=device)).requires_grad_(True)
    s = (0.1 * torch.rand(bsz, 784, generator=gen, device=device)).requires_grad_(True)

    def forward():
        with torch.no_grad():
            obj(v, s * s)

    def forward_backward():
        loss, _ = obj(v, s * s)
        torch.autograd.grad(loss.sum() + 0 * (v.sum() + s.sum()), [v, s])

    t_f = best_time(forward, device, repeat=10)
    t_fb = best_time(forward_backward, device, repeat=10)
    ratio = t_fb / t_f
    return [row("P7", f"attack objective forward+backward / forward ({bsz} images, sparse, linear variance; "
                f"fwd {t_f * 1e3:.1f} ms)", f"{ratio:.2f}", "<= 3", ratio <= 3)]


def run(device="cpu", quick=False) -> list[dict]:
    """P10 and P7 rows (id, what, measured, target, ok), all measured in this call."""
    model = load_lenet().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    images, labels = _digits(model, 16 if quick else 32, device)
    rows = bench_p10(model, images, labels)
    rows += bench_p7(model, images[:8], labels[:8], device)
    return rows


if __name__ == "__main__":
    main(run, __doc__)
