"""Judging an attack by sampling the REAL network: success rates with Wilson intervals, and the
perturbation's size (pixels touched, total variation, L2 / Linf of the mean shift), time per image."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ._ops import total_variation, wilson_interval
from .common import AttackResult
from .metrics import judge_draws

__all__ = ["evaluate_attack", "AttackEvaluation"]


@dataclass
class AttackEvaluation:
    """Monte Carlo verdict on an attack; per-image tensors are ``(B,)`` on the CPU.

    ``success_rate`` pools all ``B * n_samples`` draws (its Wilson interval is conservative for the mean of the
    per-image rates, whose binomial variance is at most the pooled one); ``image_success_rate`` counts images
    whose draws succeed more than half the time.
    """

    n_images: int
    n_samples: int
    success_rate: float
    success_ci: tuple[float, float]
    image_success_rate: float
    image_success_ci: tuple[float, float]
    clean_accuracy: float
    per_image_success: torch.Tensor
    pixels_touched: torch.Tensor
    total_variation: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    mean_noise_std: torch.Tensor
    time_per_image_s: float
    eval_time_s: float

    def summary(self) -> dict:
        """Plain floats (medians for the per-image sizes) for tables and JSON."""
        out = {k: v for k, v in asdict(self).items() if not isinstance(v, torch.Tensor)}
        for name in ("pixels_touched", "total_variation", "l2", "linf", "mean_noise_std"):
            out[f"{name}_median"] = float(getattr(self, name).float().median())
            out[f"{name}_mean"] = float(getattr(self, name).float().mean())
        out["success_ci"] = list(self.success_ci)
        out["image_success_ci"] = list(self.image_success_ci)
        return out


@torch.no_grad()
def evaluate_attack(
    model: nn.Module,
    result: AttackResult,
    labels: torch.Tensor,
    target=None,
    n_samples: int = 1000,
    generator: torch.Generator | None = None,
    *,
    threshold: float = 1e-3,
    batch_size: int = 4096,
    z: float = 1.96,
) -> AttackEvaluation:
    """Success of ``result``'s distribution on the real ``model`` by Monte Carlo, plus perturbation sizes.

    Args:
        model: the real classifier.
        result: an :class:`AttackResult` (Gaussian or point; a point result is evaluated with one draw).
        labels: ``(B,)`` true labels; target: ``None`` (success = misclassified) or int / ``(B,)`` targets
            (success = classified as the target).
        n_samples: draws per image; generator: for the draws (default: seeded by ``result.options["seed"]``).
        threshold: a pixel counts as touched when ``|delta| > threshold`` or its noise std ``> threshold``.
        batch_size: real-network forward passes per chunk; z: the interval's normal quantile (1.96: 95 %).
    """
    start = time.perf_counter()
    draws, wanted, labels, target = judge_draws(model, result, labels, target, n_samples, generator, batch_size,
                                                name="n_samples")
    n, bsz = wanted.shape
    per_image = wanted.double().mean(0).cpu()
    hits = float(wanted.sum())
    image_hits = float((per_image > 0.5).sum())
    clean_acc = float((model(result.clean).argmax(-1) == labels).double().mean())
    delta = result.delta.flatten(1)
    std = result.noise_std.flatten(1)
    touched = ((delta.abs() > threshold) | (std > threshold)).sum(1).cpu()
    return AttackEvaluation(
        n_images=bsz,
        n_samples=n,
        success_rate=hits / (n * bsz),
        success_ci=wilson_interval(hits, n * bsz, z),
        image_success_rate=image_hits / bsz,
        image_success_ci=wilson_interval(image_hits, bsz, z),
        clean_accuracy=clean_acc,
        per_image_success=per_image,
        pixels_touched=touched,
        total_variation=total_variation(delta, result.image_shape).cpu(),
        l2=delta.norm(dim=1).cpu(),
        linf=delta.abs().amax(1).cpu(),
        mean_noise_std=std.mean(1).cpu(),
        time_per_image_s=result.time_s / bsz,
        eval_time_s=time.perf_counter() - start,
    )
