"""Phase 1 of the support solver: which pixels the sparse Gaussian attack may touch.

The distribution phase (:mod:`netmoments.attacks.support`) only moves pixels of the support this phase returns,
so the attack's L0 size is decided here. Every search runs on the real network at ``Sigma = 0`` (where the
two-stage linearization at the current point *is* the network) and returns a mean shift ``v`` ``(B, n)`` whose
non-zero pixels are the support, with the L1 price ``(B, 1)`` the distribution phase starts from.
:attr:`~netmoments.attacks.AttackOptions.support_search` picks one:

* ``"l1"``: proximal gradient steps on the Gaussian attack's hinge with an L1 price (soft thresholding), the
  price lowered per image while it is not fooled (EAD-style continuation). L1 is a convex stand-in for L0: it
  pays for how *far* a pixel moves, so it spreads the change over more pixels than L0 needs.
* ``"l0"``: projected gradient steps onto an L0 ball intersected with the pixel box (hard thresholding: keep the
  ``k`` coordinates whose box-clipped value lowers the distance most), the radius ``k`` adapted per image in the
  manner of the fast minimum-norm attack: before each projection (the first included) it shrinks by a factor
  ``1 - gamma`` from the number of pixels in use while the image is fooled and grows by ``1 + gamma`` while it is
  not, ``gamma`` and the step decaying to 0 on a cosine schedule. The fooling ``v`` with the fewest pixels seen
  (the first of them) is kept; a digit never fooled keeps its last iterate. The last iterate is evaluated with a
  forward and a backward pass like the others (``mean_steps + 1`` of each, counted).
* ``"fmn"``: a warm start from a point attack, Foolbox's L0 fast minimum-norm attack (Pintor et al. 2021); the
  distribution phase then grows the noise on the pixels it moved. A digit Foolbox does not fool (one more forward
  pass checks) gets the ``"l0"`` search instead.
"""
from __future__ import annotations

import math

import torch

from ._ops import project_l0_box
from .common import goal_z, hinge, margin
from .options import SEARCHES
from .sources import SolverCost
from .update import Adam, mean_step

__all__ = ["SEARCHES", "find_support", "project_l0_box"]


def find_support(model, clean, shape, labels, target, opts, cost):
    """Run ``opts.support_search`` for ``opts.mean_steps`` steps.

    Args:
        model: the real classifier; clean: ``(B, n)`` flattened images in ``[0, 1]``; shape: ``(C, H, W)``.
        labels: ``(B,)`` int64; target: ``(B,)`` int64 or ``None``.
        opts: resolved :class:`~netmoments.attacks.AttackOptions`; cost: the running
            :class:`~netmoments.attacks.sources.SolverCost` (its passes per image grow).

    Returns:
        ``(v, l1_weight)``: ``v`` ``(B, n)`` with ``-clean <= v <= 1 - clean``; ``l1_weight`` ``(B, 1)``.
    """
    searches = {"l1": _l1_search, "l0": _l0_search, "fmn": _fmn_search}
    return searches[opts.support_search](model, clean, shape, labels, target, opts, cost)


def _l1_search(model, clean, shape, labels, target, opts, cost):
    z_goal = goal_z(opts.goal)
    box = (-clean, 1.0 - clean)
    v = torch.zeros_like(clean)
    adam = Adam(v, opts.lr)
    l1_weight = _l1_price(opts, clean)
    current = None
    for step in range(opts.mean_steps):
        if step > 0 and step % opts.relinearize_every == 0 and opts.l1_decay < 1:
            # per-image continuation (as in EAD / C&W's constant search): an image not yet fooled pays less
            l1_weight = torch.where((current >= 0).unsqueeze(-1), l1_weight * opts.l1_decay, l1_weight)
        m, grad = _margin_and_gradient(model, clean, v, shape, labels, target, opts, z_goal)
        current = m
        with torch.no_grad():
            v = mean_step(adam, v, grad, l1_weight, box)
    cost.forward += opts.mean_steps
    cost.backward += opts.mean_steps
    return v, l1_weight


def _l0_search(model, clean, shape, labels, target, opts, cost):
    bsz, n = clean.shape
    z_goal = goal_z(opts.goal)
    low, high = -clean, 1.0 - clean
    v = torch.zeros_like(clean)
    radius = torch.full((bsz,), float(min(opts.search_radius, n)), dtype=clean.dtype, device=clean.device)
    best_v = torch.zeros_like(clean)
    best_count = torch.full((bsz,), n + 1, dtype=torch.int64, device=clean.device)
    steps = opts.mean_steps
    for step in range(steps + 1):
        m, grad = _margin_and_gradient(model, clean, v, shape, labels, target, opts, z_goal)
        count = (v != 0).sum(1)
        fooled = m < 0
        better = fooled & (count < best_count)
        best_v = torch.where(better.unsqueeze(-1), v, best_v)
        best_count = torch.where(better, count, best_count)
        if step == steps:
            break
        decay = 0.5 * (1.0 + math.cos(math.pi * step / steps))
        gamma, alpha = opts.search_gamma * decay, opts.search_step * decay
        shrunk = torch.minimum(radius, count.to(radius.dtype)) * (1.0 - gamma)
        radius = torch.where(fooled, shrunk, radius * (1.0 + gamma)).clamp(1.0, float(n))
        with torch.no_grad():
            direction = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            v = project_l0_box(v - alpha * direction, radius.ceil().to(torch.int64), low, high)
    cost.forward += steps + 1
    cost.backward += steps + 1
    never = best_count > n
    return torch.where(never.unsqueeze(-1), v, best_v), _l1_price(opts, clean)


def _fmn_search(model, clean, shape, labels, target, opts, cost):
    import foolbox as fb

    from .metrics import PassCounter

    bsz = clean.shape[0]
    images = clean.view(bsz, *shape)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=clean.device)
    criterion = labels if target is None else fb.criteria.TargetedMisclassification(target)
    attack = fb.attacks.L0FMNAttack(steps=opts.mean_steps, max_stepsize=opts.search_step, gamma=opts.search_gamma)
    with PassCounter(model) as counter:
        try:
            _, adv, _ = attack(fmodel, images, criterion, epsilons=None)
        except IndexError as err:
            # Foolbox 3.3.4's L0 projection indexes past the last pixel once its radius outgrows the image
            raise ValueError(f"search_gamma={opts.search_gamma} lets Foolbox's L0-FMN radius outgrow the image "
                             f"({err}); use a smaller search_gamma") from err
    cost.forward += counter.forward / bsz
    cost.backward += counter.backward / bsz
    v = (adv.detach().flatten(1).clamp(0.0, 1.0) - clean)
    v = torch.where(v.abs() > 1e-12, v, torch.zeros_like(v))
    with torch.no_grad():
        fooled = margin(model((clean + v).clamp(0.0, 1.0).view(bsz, *shape)), labels, target) < 0
    cost.forward += 1
    if not bool(fooled.all()):
        # Foolbox hands back an image it could not make adversarial; its pixels are no support to grow noise on,
        # so those digits get the L0 search (with its own tuned settings) instead
        rows = (~fooled).nonzero().flatten()
        l0_opts = opts.replace(support_search="l0", search_step=None, search_gamma=None)
        sub = SolverCost.zeros(len(rows), clean.dtype, clean.device)
        v_rows, _ = _l0_search(model, clean[rows], shape, labels[rows], None if target is None else target[rows],
                               l0_opts, sub)
        v[rows] = v_rows
        cost.forward[rows] += sub.forward
        cost.backward[rows] += sub.backward
    return v, _l1_price(opts, clean)


def _l1_price(opts, clean):
    """``(B, 1)``: the L1 price of ``opts`` for each of the ``B`` images of ``clean`` ``(B, n)``."""
    return torch.full((clean.shape[0], 1), float(opts.l1_weight), dtype=clean.dtype, device=clean.device)


def _margin_and_gradient(model, clean, v, shape, labels, target, opts, z_goal):
    """The real margin ``(B,)`` at ``clip(clean + v)`` and the gradient ``(B, n)`` of the hinge in ``v``."""
    v_var = v.clone().requires_grad_(True)
    m = margin(model((clean + v_var).clamp(0.0, 1.0).view(clean.shape[0], *shape)), labels, target)
    (grad,) = torch.autograd.grad(hinge(m, opts.kappa, opts.temperature, z_goal).sum(), v_var)
    return m.detach(), grad
