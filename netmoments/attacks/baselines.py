"""Point attacks on the real network, the baselines for the Gaussian attack (same images, model and budgets).

All are batched projected-gradient methods on the margin loss (label logit minus the best other logit, or the
best non-target logit minus the target logit), keep the last iterate that fools the network (else the final
one), and return an :class:`AttackResult` with zero noise so :func:`evaluate_attack` treats them alike.

* :func:`pgd_attack` with ``norm="linf"`` / ``"l2"``: Madry et al.'s PGD (sign / normalized steps).
* :func:`sparse_pgd_attack`: L0-projected PGD (at most ``k`` pixels per image, exact projection onto the
  L0 ball intersected with the pixel box), the sparse baseline; ``k`` may differ per image (matched sparsity).
* :func:`smooth_pgd_attack`: L2 PGD in the blurred parametrisation ``delta = G v`` (low-frequency perturbations).
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from ._ops import blur, project_l0_box
from .gaussian import AttackResult, _check_batch, _check_device

__all__ = ["pgd_attack", "sparse_pgd_attack", "smooth_pgd_attack", "margin_loss"]


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """``(B,)`` margin to minimize: ``z_y - max_{k != y} z_k`` (untargeted) or ``max_{k != t} z_k - z_t``.

    Negative exactly when the attack succeeds on that image.
    """
    ref = (labels if target is None else target).unsqueeze(-1)
    z_ref = logits.gather(-1, ref).squeeze(-1)
    others = logits.masked_fill(torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, ref, True), float("-inf"))
    best = others.amax(-1)
    return z_ref - best if target is None else best - z_ref


def _check_images(images):
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")


def _positive(name, value, *, allow_zero=False):
    """A finite float > 0 (or >= 0 with ``allow_zero``), else a ValueError naming ``name``."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value >= 0 if allow_zero else value > 0))
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _prepare(model, images, labels, target, steps, kappa=0.0):
    _check_images(images)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    _positive("kappa", kappa, allow_zero=True)
    labels, target = _check_batch(images, labels, target)
    _check_device(model, images)
    with torch.no_grad():
        num_classes = model(images[:1]).shape[-1]
    return _check_batch(images, labels, target, num_classes)


def _run(model, images, labels, target, steps, kappa, update, name, structure, options, init=None, to_delta=None):
    """Shared PGD loop: ``update(param, grad) -> param`` is the projected step; ``to_delta(param)`` -> delta."""
    labels, target = _prepare(model, images, labels, target, steps, kappa)
    start = time.perf_counter()
    clean = images.detach()
    to_delta = to_delta or (lambda p: p)
    param = torch.zeros_like(clean) if init is None else init
    best = torch.zeros_like(clean)
    history = torch.zeros(steps, clean.shape[0], dtype=clean.dtype, device=clean.device)
    for step in range(steps):
        param = param.detach().requires_grad_(True)
        adv = (clean + to_delta(param)).clamp(0.0, 1.0)
        margin = margin_loss(model(adv), labels, target)
        grad = torch.autograd.grad(margin.clamp_min(-kappa).sum(), param)[0]
        with torch.no_grad():
            history[step] = margin
            fooled = (margin < 0).view(-1, *([1] * (clean.dim() - 1)))
            best = torch.where(fooled, adv - clean, best)
            param = update(param.detach(), grad)
    with torch.no_grad():
        adv = (clean + to_delta(param)).clamp(0.0, 1.0)
        margin = margin_loss(model(adv), labels, target)
        fooled = (margin < 0).view(-1, *([1] * (clean.dim() - 1)))
        # the final iterate when it fools the network, else the last one that did, else the final iterate
        ever = (history < 0).any(0).view_as(fooled)
        delta = torch.where(fooled | ~ever, adv - clean, best)
    return AttackResult(
        clean=clean.clone(), labels=labels, target=target, delta_param=delta.flatten(1),
        noise_var=torch.zeros_like(delta.flatten(1)), blur_sigma=0.0, structure=structure, method=name,
        loss_history=history, time_s=time.perf_counter() - start, options=dict(options, steps=steps, kappa=kappa),
    )


def pgd_attack(model, images, labels, target=None, norm="linf", eps=0.3, steps=100, step_size=None, kappa=1.0):
    """Projected gradient descent on the margin within ``||delta||_norm <= eps`` and the pixel box.

    Args:
        norm: ``"linf"`` (sign steps) or ``"l2"`` (L2-normalized steps).
        eps: budget; step_size: default ``2.5 eps / steps``; kappa: stop pushing at margin ``-kappa``.
    """
    _check_images(images)
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    _positive("eps", eps)
    step_size = 2.5 * eps / steps if step_size is None else _positive("step_size", step_size)
    clean = images.detach()
    low, high = -clean, 1.0 - clean

    def update(delta, grad):
        if norm == "linf":
            delta = (delta - step_size * grad.sign()).clamp(-eps, eps)
        else:
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta - step_size * g
            scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * scale.view(-1, 1, 1, 1)
        return torch.minimum(torch.maximum(delta, low), high)

    return _run(model, images, labels, target, steps, kappa, update, f"pgd-{norm}", "dense",
                dict(norm=norm, eps=eps, step_size=step_size))


def sparse_pgd_attack(model, images, labels, target=None, k=20, steps=100, step_size=0.25, kappa=1.0):
    """L0-projected PGD: at most ``k`` pixels changed per image (``k`` an int or a ``(B,)`` tensor).

    Each step moves along the gradient normalized to unit L-infinity norm (scaled by ``step_size``) and
    projects onto ``{||delta||_0 <= k} & box`` exactly (:func:`netmoments.attacks._ops.project_l0_box`).
    """
    _check_images(images)
    clean = images.detach()
    bsz = clean.shape[0]
    if isinstance(k, int) and not isinstance(k, bool):
        k = torch.full((bsz,), k, dtype=torch.int64, device=clean.device)
    if not isinstance(k, torch.Tensor) or k.shape != (bsz,) or k.is_floating_point() or (k < 1).any():
        raise ValueError(f"k must be a positive int or a ({bsz},) integer tensor of positive budgets, got {k!r}")
    _positive("step_size", step_size)
    low, high = -clean.flatten(1), 1.0 - clean.flatten(1)

    def update(delta, grad):
        g = grad.flatten(1)
        g = g / g.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        z = delta.flatten(1) - step_size * g
        return project_l0_box(z, k.to(clean.device), low, high).view_as(delta)

    return _run(model, images, labels, target, steps, kappa, update, "sparse-pgd-l0", "sparse",
                dict(k=k.tolist(), step_size=step_size))


def smooth_pgd_attack(model, images, labels, target=None, eps=3.0, blur_sigma=1.5, steps=100, step_size=None,
                      kappa=1.0):
    """L2 PGD over ``v`` with ``delta = G v`` (``G`` a Gaussian blur), ``||G v||_2 <= eps`` by radial scaling."""
    _check_images(images)
    _positive("eps", eps)
    _positive("blur_sigma", blur_sigma)
    step_size = 2.5 * eps / steps if step_size is None else _positive("step_size", step_size)
    shape = tuple(images.shape[1:])

    def to_delta(v):
        return blur(v.flatten(1), shape, blur_sigma).view_as(v)

    def update(v, grad):
        g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        v = v - step_size * g
        norm = to_delta(v).flatten(1).norm(dim=1).clamp_min(1e-12)
        return v * (eps / norm).clamp(max=1.0).view(-1, 1, 1, 1)

    result = _run(model, images, labels, target, steps, kappa, update, "smooth-pgd-l2", "smooth",
                  dict(eps=eps, blur_sigma=blur_sigma, step_size=step_size), to_delta=to_delta)
    return result
