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

import time

import torch

from .._validation import renamed
from ._ops import blur, project_l0_box
from .common import AttackResult, check_images, margin, positive, prepare_batch
from .metrics import PassCounter
from .options import default_options
from .update import Adam, mean_step, noise_step

__all__ = ["pgd_attack", "sparse_pgd_attack", "smooth_pgd_attack", "margin_loss", "fmn_attack", "l0_pgd_attack",
           "eot_attack", "tune_step_size"]


#: The margin to minimize, ``(B,)``, negative exactly when the attack succeeds (:func:`.common.margin`).
margin_loss = margin


def _budget_vector(name, value, images):
    """A budget that is one float (every image) or a ``(B,)`` tensor (one per image), each finite and > 0."""
    bsz = images.shape[0]
    if isinstance(value, torch.Tensor):
        if value.shape not in ((), (bsz,)) or not value.is_floating_point():
            raise ValueError(f"{name} must be a float or a ({bsz},) float tensor, got shape {tuple(value.shape)}")
        if not torch.isfinite(value).all() or (value <= 0).any():
            raise ValueError(f"{name} must be finite and > 0 for every image, got {value.tolist()}")
        return value.to(device=images.device, dtype=images.dtype).expand(bsz)
    return torch.full((bsz,), positive(name, value), dtype=images.dtype, device=images.device)


def _per_image(value, like):
    if isinstance(value, torch.Tensor):
        return value.view(-1, *([1] * (like.dim() - 1)))
    return value


def _as_list(value):
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _prepare(model, images, labels, target, steps, kappa=0.0):
    """The point attacks' checks: ``images``, ``steps``, ``kappa``, then :func:`~.common.prepare_batch`."""
    check_images(images)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    positive("kappa", kappa, allow_zero=True)
    return prepare_batch(model, images, labels, target)


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
        noise_var=torch.zeros_like(delta.flatten(1)), blur_sigma=0.0, structure=structure, attack=name,
        loss_history=history, time_s=time.perf_counter() - start, options=dict(options, steps=steps, kappa=kappa),
    )


def pgd_attack(model, images, labels, target=None, norm="linf", eps=0.3, steps=100, step_size=None, kappa=1.0):
    """Projected gradient descent on the margin within ``||delta||_norm <= eps`` and the pixel box.

    Args:
        norm: ``"linf"`` (sign steps) or ``"l2"`` (L2-normalized steps).
        eps: budget; step_size: default ``2.5 eps / steps``; kappa: stop pushing at margin ``-kappa``.
    """
    check_images(images)
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    positive("eps", eps)
    step_size = 2.5 * eps / steps if step_size is None else positive("step_size", step_size)
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


def sparse_pgd_attack(model, images, labels, target=None, k=20, steps=100, step_size=0.25, kappa=1.0, init=None):
    """L0-projected PGD: at most ``k`` pixels changed per image (``k`` an int or a ``(B,)`` tensor).

    Each step moves along the gradient normalized to unit L-infinity norm (scaled by ``step_size``) and
    projects onto ``{||delta||_0 <= k} & box`` exactly (:func:`netmoments.attacks._ops.project_l0_box`).
    """
    check_images(images)
    clean = images.detach()
    bsz = clean.shape[0]
    if isinstance(k, int) and not isinstance(k, bool):
        k = torch.full((bsz,), k, dtype=torch.int64, device=clean.device)
    if not isinstance(k, torch.Tensor) or k.shape != (bsz,) or k.is_floating_point() or (k < 1).any():
        raise ValueError(f"k must be a positive int or a ({bsz},) integer tensor of positive budgets, got {k!r}")
    positive("step_size", step_size)
    low, high = -clean.flatten(1), 1.0 - clean.flatten(1)

    def update(delta, grad):
        g = grad.flatten(1)
        g = g / g.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        z = delta.flatten(1) - step_size * g
        return project_l0_box(z, k.to(clean.device), low, high).view_as(delta)

    return _run(model, images, labels, target, steps, kappa, update, "sparse-pgd-l0", "sparse",
                dict(k=k.tolist(), step_size=step_size), init=init)


def smooth_pgd_attack(model, images, labels, target=None, eps=3.0, blur_sigma=1.5, steps=100, step_size=None,
                      kappa=1.0):
    """L2 PGD over ``v`` with ``delta = G v`` (``G`` a Gaussian blur), ``||G v||_2 <= eps`` by radial scaling.

    ``eps`` and ``step_size`` are each a float or a ``(B,)`` tensor (one per image); the step defaults to
    ``2.5 eps / steps``.
    """
    check_images(images)
    positive("blur_sigma", blur_sigma)
    eps = _budget_vector("eps", eps, images)
    step_size = 2.5 * eps / steps if step_size is None else _budget_vector("step_size", step_size, images)
    shape = tuple(images.shape[1:])

    def to_delta(v):
        return blur(v.flatten(1), shape, blur_sigma).view_as(v)

    def update(v, grad):
        g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        v = v - _per_image(step_size, v) * g
        norm = to_delta(v).flatten(1).norm(dim=1).clamp_min(1e-12)
        return v * (eps / norm).clamp(max=1.0).view(-1, 1, 1, 1)

    result = _run(model, images, labels, target, steps, kappa, update, "smooth-pgd-l2", "smooth",
                  dict(eps=eps.tolist(), blur_sigma=blur_sigma, step_size=_as_list(step_size)), to_delta=to_delta)
    return result


# ----------------------------------------------------------------------------------------------- maintained
# and tuned baselines (chapter 8's tables): Foolbox FMN, L0-PGD with restarts, EOT over the Gaussian family


def _counted(model, fn):
    """Run ``fn()`` under a :class:`~netmoments.attacks.metrics.PassCounter`; return (value, seconds, counter)."""
    start = time.perf_counter()
    with PassCounter(model) as counter:
        value = fn()
    return value, time.perf_counter() - start, counter


def _point_result(clean, labels, target, delta, name, structure, seconds, counter, options):
    bsz = clean.shape[0]
    opts = dict(options, forward_passes=counter.forward / bsz, backward_passes=counter.backward / bsz)
    return AttackResult(clean=clean.clone(), labels=labels, target=target, delta_param=delta.flatten(1),
                        noise_var=torch.zeros_like(delta.flatten(1)), blur_sigma=0.0, structure=structure,
                        attack=name, time_s=seconds, options=opts)


def fmn_attack(model, images, labels, target=None, norm="l0", steps=100, **fmn_options):
    """Foolbox 3.3.4's Fast Minimum-Norm attack (Pintor et al. 2021), ``norm`` ``"l0"`` or ``"l1"``.

    A maintained minimum-norm attack: it returns, per image, the smallest perturbation it found that fools the
    network (unbounded: ``epsilons=None``). ``fmn_options`` go to ``L0FMNAttack`` / ``L1FMNAttack``
    (``max_stepsize``, ``gamma``, ``binary_search_steps``, ...). Cost is counted in real forward/backward passes.
    """
    import foolbox as fb

    classes = {"l0": fb.attacks.L0FMNAttack, "l1": fb.attacks.L1FMNAttack}
    if norm not in classes:
        raise ValueError(f"norm must be 'l0' or 'l1', got {norm!r}")
    labels, target = _prepare(model, images, labels, target, steps)
    clean = images.detach()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=clean.device)
    criterion = labels if target is None else fb.criteria.TargetedMisclassification(target)
    attack = classes[norm](steps=steps, **fmn_options)

    def run():
        _, adv, _ = attack(fmodel, clean, criterion, epsilons=None)
        return adv

    adv, seconds, counter = _counted(model, run)
    delta = (adv.detach().clamp(0, 1) - clean)
    return _point_result(clean, labels, target, delta, f"fmn-{norm}", "sparse", seconds, counter,
                         dict(norm=norm, steps=steps, **fmn_options))


def l0_pgd_attack(model, images, labels, target=None, k=20, steps=100, step_size=0.25, restarts=1, kappa=1.0,
                  seed=0):
    """L0-PGD (:func:`sparse_pgd_attack`) with random restarts: the per-image best of ``restarts`` runs.

    Restart 0 starts from zero; later restarts from a random feasible point with ``k`` random pixels set to a
    random box value. Per image the result keeps the first restart that fools the network, else the one with the
    lowest final margin. ``step_size`` should come from :func:`tune_step_size` on training digits.
    """
    labels, target = _prepare(model, images, labels, target, steps, kappa)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a positive int, got {restarts!r}")
    clean = images.detach()
    bsz, n = clean.shape[0], clean[0].numel()
    gen = torch.Generator(device=clean.device).manual_seed(seed)
    kk = torch.full((bsz,), k, dtype=torch.int64, device=clean.device) if isinstance(k, int) else k

    def run():
        best_delta = torch.zeros_like(clean)
        best_margin = torch.full((bsz,), float("inf"), dtype=clean.dtype, device=clean.device)
        for r in range(restarts):
            init = None
            if r > 0:
                flat = clean.flatten(1)
                scores = torch.rand(bsz, n, generator=gen, dtype=clean.dtype, device=clean.device)
                target_val = torch.rand(bsz, n, generator=gen, dtype=clean.dtype, device=clean.device)
                init = project_l0_box(target_val - flat, kk, -flat, 1 - flat)
                keep = scores.argsort(1, descending=True).argsort(1) < kk[:, None]
                init = torch.where(keep, init, torch.zeros_like(init)).view_as(clean)
            res = sparse_pgd_attack(model, clean, labels, target, k=kk, steps=steps, step_size=step_size,
                                    kappa=kappa, init=init)
            with torch.no_grad():
                margin = margin_loss(model(res.mean), labels, target)
            better = (margin < best_margin) & ~(best_margin < 0)
            best_delta = torch.where(better.view(-1, 1, 1, 1), res.delta, best_delta)
            best_margin = torch.where(better, margin, best_margin)
        return best_delta

    delta, seconds, counter = _counted(model, run)
    return _point_result(clean, labels, target, delta, "l0-pgd", "sparse", seconds, counter,
                         dict(k=kk.tolist(), steps=steps, step_size=step_size, restarts=restarts, kappa=kappa))


def tune_step_size(attack, model, images, labels, grid, **kwargs):
    """The step size in ``grid`` with the highest success rate of ``attack(model, images, labels,
    step_size=s, **kwargs)`` (ties: the smaller step), judged on the real network. Use training digits.

    Returns ``(best, {step_size: success rate})``.
    """
    scores = {}
    for s in grid:
        res = attack(model, images, labels, step_size=s, **kwargs)
        with torch.no_grad():
            fooled = margin_loss(model(res.mean), labels, kwargs.get("target")) < 0
        scores[float(s)] = float(fooled.double().mean())
    best = max(sorted(scores), key=lambda s: (scores[s], -s))
    return best, scores


def eot_attack(model, images, labels, target=None, structure="sparse", steps=100, n_samples=8, lr=0.05,
               noise_lr=None, l1_weight=None, l1_decay=0.5, decay_every=20, noise_reward=0.1, noise_scale=0.3,
               init_noise=0.05, kappa=1.0, blur_sigma=None, l2_weight=None, seed=0, *, samples=None):
    """EOT-PGD over the *same* Gaussian family as :func:`gaussian_attack`, with sampled gradients through the
    real network instead of the closed-form moments.

    The distribution is ``N(clean + G v, G diag(s^2) G^T)`` clipped to ``[0, 1]`` (``G = I`` for ``"sparse"``,
    noise only where ``v != 0``; a blur for ``"smooth"``, noise anywhere). Each step draws ``n_samples``
    reparametrized images ``clip(clean + G (v + s * eps))``, averages the hinge ``relu(margin + kappa)`` over
    them, and takes an Adam step on ``(v, s)`` followed by the same proximal L1 step, noise reward and noise cap
    as the Gaussian attack (defaults from :func:`default_options`). Cost: ``steps * n_samples`` forward and
    backward passes per image. (``n_samples`` was ``samples=``, still accepted with a ``DeprecationWarning``; the
    result's ``options`` keep the key ``"samples"``.)
    """
    samples = renamed("eot_attack", "samples", "n_samples", samples, n_samples, 8)
    labels, target = _prepare(model, images, labels, target, steps, kappa)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {samples!r}")
    if structure not in ("sparse", "smooth"):
        raise ValueError(f"structure must be 'sparse' or 'smooth', got {structure!r}")
    defaults = default_options(structure)
    l1_weight = defaults["l1_weight"] if l1_weight is None else positive("l1_weight", l1_weight, allow_zero=True)
    l2_weight = defaults["l2_weight"] if l2_weight is None else positive("l2_weight", l2_weight, allow_zero=True)
    blur_sigma = defaults["blur_sigma"] if blur_sigma is None else positive("blur_sigma", blur_sigma,
                                                                              allow_zero=True)
    positive("lr", lr)
    positive("noise_scale", noise_scale)
    noise_lr = lr if noise_lr is None else positive("noise_lr", noise_lr)
    clean = images.detach()
    shape = tuple(clean.shape[1:])
    flat = clean.flatten(1)
    bsz = flat.shape[0]
    gen = torch.Generator(device=clean.device).manual_seed(seed)
    sparse = structure == "sparse"

    def run():
        v = torch.zeros_like(flat)
        s = torch.full_like(flat, 0.0 if sparse else init_noise)
        adam_v, adam_s = Adam(v, lr), Adam(s, noise_lr)
        weight = torch.full((bsz, 1), float(l1_weight), dtype=flat.dtype, device=flat.device)
        hinge = torch.zeros(bsz, dtype=flat.dtype, device=flat.device)
        for step in range(steps):
            if step > 0 and step % decay_every == 0 and l1_decay < 1:
                weight = torch.where((hinge > 0).unsqueeze(-1), weight * l1_decay, weight)
            v_var = v.clone().requires_grad_(True)
            s_var = s.clone().requires_grad_(True)
            eps = torch.randn(samples, bsz, flat.shape[1], generator=gen, dtype=flat.dtype, device=flat.device)
            draws = (flat + blur(v_var + s_var * eps, shape, blur_sigma)).clamp(0.0, 1.0)
            margin = margin_loss(model(draws.view(samples * bsz, *shape)), labels.repeat(samples),
                                 None if target is None else target.repeat(samples)).view(samples, bsz)
            per_image = torch.relu(margin + kappa).mean(0)
            total = per_image.sum()
            if l2_weight > 0:
                total = total + 0.5 * l2_weight * blur(v_var, shape, blur_sigma).pow(2).sum()
            g_v, g_s = torch.autograd.grad(total, [v_var, s_var])
            hinge = per_image.detach()
            with torch.no_grad():
                v = mean_step(adam_v, v, g_v, weight if l1_weight > 0 else None,
                              (-flat, 1.0 - flat) if blur_sigma <= 0 else None)
                s = noise_step(adam_s, s, g_s, -noise_reward, noise_scale)
                if sparse:
                    # new support pixels start with a little noise so that its gradient is not zero
                    s = torch.where(v != 0, torch.where(s > 0, s, torch.full_like(s, init_noise)), torch.zeros_like(s))
        return v, s

    (v, s), seconds, counter = _counted(model, run)
    res = AttackResult(clean=clean.clone(), labels=labels, target=target, delta_param=v.detach(),
                       noise_var=(s * s).detach(), blur_sigma=float(blur_sigma), structure=structure,
                       attack=f"eot-{structure}", time_s=seconds,
                       options=dict(steps=steps, samples=samples, lr=lr, l1_weight=l1_weight, l2_weight=l2_weight,
                                    noise_reward=noise_reward, noise_scale=noise_scale, kappa=kappa, seed=seed,
                                    forward_passes=counter.forward / bsz, backward_passes=counter.backward / bsz))
    return res
