"""Gaussian adversarial attacks through the closed-form moments of the two-stage-linearized network.

The attacker picks an input *distribution* ``N(x + delta, Sigma)`` instead of one point. With ``G`` the identity
(``"sparse"``) or a Gaussian blur (``"smooth"``, ``"sparse+smooth"``):

    delta = G v,    Sigma = G diag(w) G^T,    w >= 0 (per-pixel noise variances before the blur).

At the current mean the network is two-stage linearized into ``g(x) = B relu(A x + c1) + c2``; its output mean and
(co)variance under the attack distribution are differentiable functions of ``(v, w)``. For each competing class
``k`` the margin ``M_k`` (label minus ``k`` when untargeted, ``k`` minus target when targeted) is treated as
Gaussian and standardized,

    r_k = (E[M_k] + kappa) / sqrt(Var[M_k] + tau^2),    P(M_k < 0) ~ Phi(-r_k),

and the attack minimizes ``relu(r + Phi^-1(goal))`` with ``r = min_k r_k`` (untargeted: beat the label with the
easiest class) or ``max_k r_k`` (targeted: the target must beat every class), plus L1 penalties handled by
proximal steps (exact zeros: few pixels touched) and optional L2 / total-variation penalties. ``tau`` (the
``temperature``) keeps ``r`` finite for a point attack (``Var = 0``). Success is never judged by this surrogate:
see :func:`netmoments.attacks.evaluate_attack`, which samples the real network.

Sparse attacks run the support solver (:mod:`netmoments.attacks.support`); blurred ones, and any attack with
``solver="dense"``, the dense solver here. Both take the proximal Adam steps of :mod:`netmoments.attacks.update`;
the objective for one linearization is :class:`~netmoments.attacks.objective.LinearizedAttackObjective` and the
settings are an :class:`~netmoments.attacks.options.AttackOptions`.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ._ops import blur, project_l1_box, total_variation
from .common import AttackResult, check_model, prepare_batch
from .objective import LinearizedAttackObjective, pixel_moments
from .options import SOLVERS, STRUCTURES, VARIABLES, VARIANCES, AttackOptions, default_options
from .support import support_attack
from .update import Adam, mean_step, noise_step

__all__ = [
    "gaussian_attack",
    "AttackOptions",
    "AttackResult",
    "LinearizedAttackObjective",
    "STRUCTURES",
    "VARIABLES",
    "VARIANCES",
    "SOLVERS",
    "default_options",
]


def gaussian_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    target=None,
    structure: str | None = None,
    *,
    options: AttackOptions | None = None,
    gradients=None,
    **kwargs,
) -> AttackResult:
    """Find an adversarial Gaussian ``N(x + delta, Sigma)`` per image.

    Args:
        model: the real piecewise-linear classifier (e.g. :func:`netmoments.models.load_lenet`), eval mode.
        images: ``(B, C, H, W)`` float in ``[0, 1]``; the attack runs on their device and dtype.
        labels: ``(B,)`` int64 true labels.
        target: ``None`` (untargeted), an int, or ``(B,)`` int64 target classes (each ``!= label``).
        structure: ``"sparse"`` (the default), ``"smooth"`` or ``"sparse+smooth"``; see :class:`AttackOptions`.
        options: an :class:`AttackOptions`; keyword options given as well change it (:meth:`AttackOptions.replace`).
        gradients: where the support solver's phase-2 gradients come from (:mod:`netmoments.attacks.sources`);
            default the closed-form surrogate. Only the support solver takes one.
        **kwargs: any field of :class:`AttackOptions` (defaults: :func:`default_options`). Sparse attacks run the
            support solver (:mod:`netmoments.attacks.support`) unless ``solver="dense"``; blurred ones the dense
            solver: the full ``m x n`` linearization renewed every ``relinearize_every`` of ``steps`` steps.

    Returns:
        :class:`AttackResult` with ``.mean``, ``.sample(n)``, ``.delta_param``, ``.noise_var``, histories and times.

    Raises:
        TypeError: ``model`` is not a module, an unknown option, or inputs of the wrong type.
        ValueError: a bad option value or input (see :func:`netmoments.attacks.common.check_batch`).
    """
    check_model(model)
    opts = _resolve(structure, options, kwargs)
    if gradients is not None and opts.solver != "support":
        raise ValueError(f"gradients is a support-solver setting; these options resolve to solver={opts.solver!r}")
    labels, target = prepare_batch(model, images, labels, target)
    if opts.solver == "support":
        return support_attack(model, images, labels, target, opts, gradients=gradients)
    return _dense_attack(model, images, labels, target, opts)


def _resolve(structure, options, kwargs) -> AttackOptions:
    if options is None:
        return AttackOptions.from_kwargs("sparse" if structure is None else structure, **kwargs)
    if not isinstance(options, AttackOptions):
        raise TypeError(f"options must be an AttackOptions, got {type(options).__name__}")
    if structure is not None and structure != options.structure:
        raise ValueError(f"structure {structure!r} disagrees with options.structure {options.structure!r}")
    return options.replace(**kwargs) if kwargs else options


def _default_linearizer(relu_index):
    from ..linearize import two_stage_linearize

    def linearize(model, point):
        return two_stage_linearize(model, point, relu_index=relu_index)

    return linearize


def _dense_attack(model, images, labels, target, opts: AttackOptions) -> AttackResult:
    """The dense solver: proximal Adam on ``(v, s)`` ``(B, n)`` through the full two-stage linearization, renewed
    at the current mean every ``relinearize_every`` steps (when the L1 price of images still behind also drops)."""
    start = time.perf_counter()
    shape = tuple(images.shape[1:])
    clean = images.detach().flatten(1)
    bsz = clean.shape[0]
    linearize = opts.linearizer or _default_linearizer(opts.relu_index)
    v = torch.zeros_like(clean)
    # The noise is optimized as per-pixel stds s (w = s^2): the L1 penalty then prices a unit of noise like a
    # unit of mean shift, and the clip-aware mean (which grows like sqrt(w) at the box edge) stays Lipschitz.
    s = torch.full_like(clean, opts.init_noise if opts.variables in ("noise", "both") else 0.0)
    adam_v, adam_s = Adam(v, opts.lr), Adam(s, opts.noise_lr)
    loss_hist = torch.zeros(opts.steps, bsz, dtype=clean.dtype, device=clean.device)
    prob_hist = torch.zeros_like(loss_hist)
    lin_time, n_lin, objective = 0.0, 0, None
    l1_weight = torch.full((bsz, 1), float(opts.l1_weight), dtype=clean.dtype, device=clean.device)
    for step in _progress(range(opts.steps), opts):
        if step % opts.relinearize_every == 0:
            if step > 0 and opts.l1_decay < 1:
                # continuation per image (as in EAD / C&W's constant search): an image whose surrogate success
                # is still below 1/2 gets a cheaper L1 price, so hard images may touch more pixels
                behind = (prob_hist[step - 1] < 0.5).unsqueeze(-1)
                l1_weight = torch.where(behind, l1_weight * opts.l1_decay, l1_weight)
            t0 = time.perf_counter()
            objective = _linearized_objective(model, linearize, clean, v, s, labels, target, shape, opts)
            lin_time += time.perf_counter() - t0
            n_lin += 1
        loss, r, grad_v, grad_s = _dense_gradients(objective, v, s, shape, opts)
        loss_hist[step] = loss
        prob_hist[step] = torch.special.ndtr(-r)
        with torch.no_grad():
            if grad_v is not None:
                v = _dense_mean_step(adam_v, v, grad_v, l1_weight, clean, shape, opts)
            if grad_s is not None:
                support = (v != 0) if opts.noise_support == "mean" else None
                s = noise_step(adam_s, s, grad_s, opts.noise_l1_weight - opts.noise_reward, opts.noise_scale, support)
    return AttackResult(
        clean=images.detach().clone(), labels=labels, target=target, delta_param=v.detach(),
        noise_var=(s * s).detach(), blur_sigma=float(opts.blur_sigma), structure=opts.structure, attack="gaussian",
        loss_history=loss_hist, success_prob_history=prob_hist, time_s=time.perf_counter() - start,
        time_linearize_s=lin_time, n_linearizations=n_lin, options=opts.as_dict(),
    )


def _progress(steps, opts: AttackOptions):
    if not opts.progress:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, desc=f"gaussian attack ({opts.structure})", unit="step")


def _linearized_objective(model, linearize, clean, v, s, labels, target, shape, opts) -> LinearizedAttackObjective:
    """The objective on the network two-stage linearized at the (clip-aware) mean of ``N(clean + G v, ...)``."""
    with torch.no_grad():
        point, _ = pixel_moments(clean, v, s * s, shape, opts.blur_sigma, opts.clip_aware)
        surrogate = linearize(model, point.reshape(clean.shape[0], *shape))
    targeted = target is not None
    return LinearizedAttackObjective(
        surrogate, clean, target if targeted else labels, targeted, shape, opts.blur_sigma, opts.method,
        opts.kappa, opts.temperature, opts.goal, opts.clip_aware, opts.series_terms,
    )


def _dense_gradients(objective, v, s, shape, opts):
    """``(loss (B,), r (B,), grad_v, grad_s)``: the hinge plus the L2 / TV penalties of ``delta = G v``,
    differentiated in the variables being optimized (the other gradient is ``None``)."""
    use_mean = opts.variables in ("mean", "both")
    use_noise = opts.variables in ("noise", "both")
    v_var = v.clone().requires_grad_(use_mean)
    s_var = s.clone().requires_grad_(use_noise)
    loss, r = objective(v_var, s_var * s_var)
    total = loss.sum()
    if opts.l2_weight > 0 or opts.tv_weight > 0:
        delta = blur(v_var, shape, opts.blur_sigma)
        if opts.l2_weight > 0:
            total = total + 0.5 * opts.l2_weight * (delta * delta).sum()
        if opts.tv_weight > 0:
            total = total + opts.tv_weight * total_variation(delta, shape).sum()
    params = [p for p, used in ((v_var, use_mean), (s_var, use_noise)) if used]
    grads = list(torch.autograd.grad(total, params))
    grad_v = grads.pop(0) if use_mean else None
    grad_s = grads.pop(0) if use_noise else None
    return loss.detach(), r.detach(), grad_v, grad_s


def _dense_mean_step(adam, v, grad, l1_weight, clean, shape, opts):
    """The proximal step on ``v`` ``(B, n)``, then the hard L1 / L2 budgets (the box only applies when
    ``G = I``: with a blur it bounds ``G v``, not ``v``)."""
    box = (-clean, 1.0 - clean)
    v = mean_step(adam, v, grad, l1_weight if opts.l1_weight > 0 else None, box if opts.blur_sigma <= 0 else None)
    if opts.l1_budget is not None:
        budget = torch.full((v.shape[0],), float(opts.l1_budget), dtype=v.dtype, device=v.device)
        v = project_l1_box(v, budget, *box)
    if opts.l2_budget is not None:
        norm = blur(v, shape, opts.blur_sigma).norm(dim=-1, keepdim=True)
        v = v * (opts.l2_budget / norm.clamp_min(1e-30)).clamp(max=1.0)
    return v
