"""The fast solver for sparse Gaussian attacks (``G = I``): find a support, then optimize the distribution on it.

Why two phases. The moments of a two-stage-linearized network need, per image, only the *columns* of ``A`` on
the pixels the distribution touches (:class:`~netmoments.attacks.linearization.SupportLinearization`): forming
them costs ``K`` forward-mode passes for a support of ``K`` pixels instead of a full ``m x n`` Jacobian, and
every step on them costs ``O(m K)`` instead of a network pass.

1. **Support.** A search on the real network at ``Sigma = 0`` (:mod:`netmoments.attacks.search`, chosen by
   ``support_search``): by default the mean-only attack with the Gaussian attack's own hinge and an L1 price, its
   linearization renewed at every step. At ``Sigma = 0`` the two-stage linearization at the current point *is*
   the network there, so this phase is proximal gradient descent on the real network's margin (one forward and
   one backward pass per step), with the per-image L1 continuation of the dense solver. ``"l0"`` projects onto
   an adaptive L0 ball instead, and ``"fmn"`` starts from Foolbox's L0 fast minimum-norm point.
2. **Distribution.** Fix the support ``S`` (the pixels phase 1 moved, at most ``max_support`` of them) and
   optimize the mean shift and the noise stds on ``S`` with the gradients of a *gradient source*
   (:mod:`netmoments.attacks.sources`). The default, :class:`~netmoments.attacks.sources.SurrogateGradients`,
   differentiates the closed-form moments of the network linearized at the mean (only the images whose linear
   region changed get new columns); :class:`~netmoments.attacks.sources.SampledGradients` samples the real
   network instead (expectation over transformation), with everything else unchanged.
3. **Final check.** ``final_draws`` draws per image through the real network; an image whose Monte Carlo success
   is below ``final_goal`` gets its margin offset ``kappa`` raised by ``kappa_step`` and more phase-2 steps, at
   most ``tighten_rounds`` times. The draws count in the attack's cost.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .._validation import renamed
from ._ops import clipped_gaussian_moments
from .common import AttackResult
from .linearization import SupportLinearization, put_support
from .objective import LinearizedAttackObjective
from .options import AttackOptions
from .search import find_support
from .sources import SampledGradients, SolverCost, SupportProblem, SurrogateGradients
from .update import Adam, mean_step, noise_step

__all__ = ["SupportLinearization", "support_attack", "surrogate_check", "final_linearization_point", "SurrogateGradients",
           "SampledGradients"]

_SOURCE_METHODS = ("prepare", "begin_round", "tighten", "describe")


def support_attack(model, images, labels, target, opts, *legacy, gradients=None) -> AttackResult:
    """Run the three phases (see the module docstring) on inputs that :func:`gaussian_attack` has checked.

    Args:
        model: the real classifier; images: ``(B, C, H, W)`` in ``[0, 1]``; labels: ``(B,)`` int64; target:
            ``(B,)`` int64 or ``None`` (untargeted).
        opts: an :class:`~netmoments.attacks.AttackOptions` resolved to ``solver="support"`` (or a dict of its
            options).
        gradients: the phase-2 gradient source (:mod:`netmoments.attacks.sources`); default
            :class:`~netmoments.attacks.sources.SurrogateGradients`, the Gaussian attack.
        legacy: ignored (deprecated): the classes that earlier versions passed in.

    Returns:
        :class:`AttackResult` (``method`` is the source's) whose options add the cost per image
        (``forward_passes``, ``backward_passes``, ``jvp_passes``), ``support_size``, ``tighten_rounds_used``,
        ``final_kappa``, ``final_check_success`` and the source's own entries.
    """
    opts = _as_options(opts, legacy)
    source = _as_source(gradients)
    start = time.perf_counter()
    clean = images.detach().flatten(1)
    shape = tuple(images.shape[1:])
    cost = SolverCost.zeros(clean.shape[0], clean.dtype, clean.device)
    v, l1_weight = find_support(model, clean, shape, labels, target, opts, cost)
    problem, counts = _restrict(model, clean, shape, labels, target, v, opts, cost)
    fit = _fit_on_support(problem, source, v, l1_weight)
    return _support_result(images, problem, source, fit, counts, time.perf_counter() - start)


def _as_options(opts, legacy) -> AttackOptions:
    if len(legacy) > 3:
        raise TypeError(f"support_attack takes 5 positional arguments, got {5 + len(legacy)}")
    if legacy:
        warnings.warn("support_attack's adam_cls, objective_cls and result_cls arguments are ignored and will be "
                      "removed; pass gradients= to change where the solver's gradients come from",
                      DeprecationWarning, stacklevel=3)
    if isinstance(opts, Mapping):
        opts = AttackOptions.from_kwargs(**opts)
    if not isinstance(opts, AttackOptions):
        raise TypeError(f"opts must be an AttackOptions or a dict of its options, got {type(opts).__name__}")
    if opts.solver != "support":
        raise ValueError(f"support_attack needs options resolved to solver='support', got solver={opts.solver!r}")
    return opts


def _as_source(gradients):
    if gradients is None:
        return SurrogateGradients()
    missing = [name for name in _SOURCE_METHODS if not callable(getattr(gradients, name, None))]
    if missing or not callable(gradients) or _attack_name(gradients) is None:
        raise TypeError(f"gradients must be a gradient source (see netmoments.attacks.sources) with an attack name "
                        f"and {', '.join(_SOURCE_METHODS)} and __call__; {type(gradients).__name__} lacks "
                        f"{missing or 'attack or __call__'}")
    return gradients


def _attack_name(source) -> str | None:
    """The source's ``attack`` name; a source with only the older ``method`` name gets a DeprecationWarning."""
    name = getattr(source, "attack", None)
    if isinstance(name, str):
        return name
    name = getattr(source, "method", None)
    if not isinstance(name, str):
        return None
    warnings.warn(f"{type(source).__name__}: a gradient source's 'method' name is deprecated, use 'attack' instead",
                  DeprecationWarning, stacklevel=4)
    return name


def _restrict(model, clean, shape, labels, target, v, opts, cost):
    """The support: per image the (at most ``max_support``) pixels of largest ``|v|``, padded to a common ``K``.

    Returns the :class:`SupportProblem` and the number of pixels each image moved ``(B,)``.
    """
    counts = (v != 0).sum(1)
    k = int(min(max(int(counts.max()) if clean.shape[0] else 0, 1), opts.max_support))
    order = v.abs().argsort(dim=1, descending=True)[:, :k]
    valid = torch.arange(k, device=clean.device).unsqueeze(0) < counts.clamp(max=k).unsqueeze(1)
    support = torch.where(valid, order, order[:, :1])
    problem = SupportProblem(model=model, clean=clean, shape=shape, labels=labels, target=target, support=support,
                             valid=valid, clean_S=clean.gather(1, support) * valid, opts=opts, cost=cost)
    return problem, counts


@dataclass
class _Fit:
    """Where phases 2 and 3 ended: ``v_S``, ``s_S`` ``(B, K)``, ``kappa`` ``(B,)``, the tightening rounds used,
    the last final check's success ``(B,)`` (``None`` without one) and the per-step ``(loss, prob)`` ``(B,)``."""

    v_S: torch.Tensor
    s_S: torch.Tensor
    kappa: torch.Tensor
    rounds: int
    mc_success: torch.Tensor | None
    history: list


def _fit_on_support(problem: SupportProblem, source, v: torch.Tensor, l1_weight: torch.Tensor) -> _Fit:
    """Phases 2 and 3: proximal Adam on ``(v_S, s_S)`` with the source's gradients, then the final check and
    its tightening rounds (only the images still behind are optimized in a tightening round)."""
    opts = problem.opts
    v_S = v.gather(1, problem.support) * problem.valid
    s_S = torch.full_like(v_S, opts.init_noise if problem.use_noise else 0.0) * problem.valid
    source.prepare(problem, v_S, s_S)
    adam_v, adam_s = Adam(v_S, opts.lr), Adam(s_S, opts.noise_lr)
    kappa = torch.full((v.shape[0],), float(opts.kappa), dtype=v.dtype, device=v.device)
    active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
    history, rounds, steps = [], 0, opts.support_steps
    while True:
        source.begin_round(kappa)
        for step in range(steps):
            loss, prob, grad_v, grad_s = source(step, v_S, s_S, active)
            history.append((loss, prob))
            with torch.no_grad():
                v_S, s_S = _support_step(problem, (adam_v, adam_s), v_S, s_S, grad_v, grad_s, l1_weight, active)
        mc_success = _final_check(problem, v_S, s_S, rounds, active)
        if mc_success is None:
            break
        behind = (mc_success < opts.final_goal) & active
        if rounds >= opts.tighten_rounds or not bool(behind.any()):
            break
        rounds += 1
        kappa = torch.where(behind, kappa + opts.kappa_step, kappa)
        active = behind
        steps = max(1, opts.support_steps // 2)
        source.tighten(v_S, s_S, behind)
    return _Fit(v_S, s_S, kappa, rounds, mc_success, history)


def _support_step(problem, adams, v_S, s_S, grad_v, grad_s, l1_weight, active):
    """One proximal step on ``(v_S, s_S)`` ``(B, K)``; images not ``active`` ``(B,)`` keep their values.

    Noise lives only where the new mean shift is non-zero (the support's own pixels), whatever ``noise_support``.
    """
    opts = problem.opts
    keep = active.unsqueeze(-1)
    new_v = mean_step(adams[0], v_S, grad_v, l1_weight, (-problem.clean_S, 1.0 - problem.clean_S)) * problem.valid
    v_next = torch.where(keep, new_v, v_S)
    if grad_s is None:
        return v_next, s_S
    price = opts.noise_l1_weight - opts.noise_reward
    new_s = noise_step(adams[1], s_S, grad_s, price, opts.noise_scale, new_v != 0) * problem.valid
    return v_next, torch.where(keep, new_s, s_S)


@torch.no_grad()
def _final_check(problem: SupportProblem, v_S, s_S, rounds: int, active) -> torch.Tensor | None:
    """``(B,)`` success rate of ``final_draws`` draws through the real network (``None`` when that is 0).

    The draws are exactly what :meth:`AttackResult.sample` draws, ``clip(clip(clean + v) + s * eps)`` on the
    support, seeded by ``seed + 1000 + rounds``; they count in the cost of the images still optimized.
    """
    opts = problem.opts
    draws, bsz = opts.final_draws, v_S.shape[0]
    if draws == 0:
        return None
    gen = torch.Generator(device=v_S.device).manual_seed(int(opts.seed) + 1000 + rounds)
    eps = torch.randn(draws, bsz, problem.k, generator=gen, dtype=v_S.dtype, device=v_S.device)
    x_S = ((problem.clean_S + v_S).clamp(0.0, 1.0).unsqueeze(0) + eps * s_S).clamp(0.0, 1.0)
    logits = problem.model(problem.put(x_S).reshape(draws * bsz, *problem.shape)).view(draws, bsz, -1)
    pred = logits.argmax(-1)
    ok = pred != problem.labels if problem.target is None else pred == problem.target
    problem.cost.forward += draws * active.to(v_S.dtype)
    return ok.to(v_S.dtype).mean(0)


def _support_result(images, problem: SupportProblem, source, fit: _Fit, counts, seconds: float) -> AttackResult:
    cost, bsz = problem.cost, problem.clean.shape[0]
    zeros = torch.zeros_like(problem.clean)
    options = problem.opts.as_dict()
    options.update(
        forward_passes=float(cost.forward.mean()), backward_passes=float(cost.backward.mean()),
        jvp_passes=float(cost.jvp.mean()), support_size=counts.tolist(), tighten_rounds_used=fit.rounds,
        final_kappa=fit.kappa.tolist(), final_check_success=None if fit.mc_success is None else fit.mc_success.tolist(),
        **source.describe(),
    )
    losses = torch.stack([loss for loss, _ in fit.history]) if fit.history else torch.zeros(0, bsz)
    probs = torch.stack([prob for _, prob in fit.history]) if fit.history else torch.zeros(0, bsz)
    return AttackResult(
        clean=images.detach().clone(), labels=problem.labels, target=problem.target,
        delta_param=problem.put(fit.v_S, zeros).detach(), noise_var=problem.put(fit.s_S * fit.s_S, zeros).detach(),
        blur_sigma=0.0, structure="sparse", attack=_attack_name(source), loss_history=losses,
        success_prob_history=probs,
        time_s=seconds, time_linearize_s=cost.linearize_s, n_linearizations=cost.linearizations, options=options,
    )


@torch.no_grad()
def surrogate_check(model, result, labels, target=None, n_samples=200, generator=None, method=None, *,
                    n_draws=None, variance=None):
    """The surrogate's margin against the real network's, at an attack's *final* distribution (sparse, G = I).

    The two-stage linearization is taken afresh at the final (clip-aware) mean; the margin class ``k*`` is the
    surrogate's easiest competitor (untargeted: ``argmin_k E[M_k] / sd[M_k]``; targeted: the hardest rival).
    ``M_k = g_y - g_k`` untargeted, ``g_k - g_t`` targeted; success means ``M < 0``.

    Returns a dict of ``(B,)`` tensors: ``pred_success`` = ``Phi(-E/sd)`` of ``M_k*`` under the surrogate (no
    ``kappa``, no temperature), ``sur_mean``, ``sur_var``, and on ``n_samples`` draws through the real network
    ``mc_mean``, ``mc_var``, ``mc_success_kstar`` (fraction with ``M_k* < 0``) and ``margin_z`` =
    ``(sur_mean - mc_mean) / SE(mc_mean)``, and ``kstar`` (int64) the margin's class.

    ``method`` is the surrogate's variance formula (:attr:`AttackOptions.method`; default: the attack's own).
    ``n_samples`` and ``method`` were ``n_draws=`` and ``variance=``, still accepted with a ``DeprecationWarning``.
    """
    n_samples = renamed("surrogate_check", "n_draws", "n_samples", n_draws, n_samples, 200, stacklevel=4)
    method = renamed("surrogate_check", "variance", "method", variance, method, None, stacklevel=4)
    if result.blur_sigma > 0:
        raise ValueError("surrogate_check needs a sparse (G = I) attack result")
    method = method or result.options.get("method", result.options.get("variance", "linear"))
    clean = result.clean.flatten(1)
    bsz = clean.shape[0]
    point, support, valid, clean_S, v_S, w_S = final_linearization_point(result)
    k = support.shape[1]
    lin = SupportLinearization(model, point, support, valid, result.options.get("relu_index", -1))
    targeted = target is not None
    reference = target if targeted else labels
    obj = LinearizedAttackObjective(lin.network(), clean_S, reference, targeted, (1, 1, k), 0.0,
                                    method=method, kappa=0.0, temperature=1.0, clip_aware=True)
    g_mean, g_cov = obj.output_moments(v_S, w_S)
    ref = reference.unsqueeze(-1)
    diag = torch.diagonal(g_cov, dim1=-2, dim2=-1)
    diff = g_mean - g_mean.gather(-1, ref)
    m_mean = diff if targeted else -diff
    m_var = (diag.gather(-1, ref) + diag - 2 * g_cov.gather(-2, ref.unsqueeze(-1).expand(-1, 1, g_cov.shape[-1]))
             .squeeze(-2)).clamp_min(0)
    score = m_mean / m_var.clamp_min(1e-12).sqrt()
    is_ref = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, ref, True)
    if targeted:
        kstar = score.masked_fill(is_ref, float("-inf")).argmax(-1)
    else:
        kstar = score.masked_fill(is_ref, float("inf")).argmin(-1)
    sur_mean = m_mean.gather(-1, kstar[:, None]).squeeze(-1)
    sur_var = m_var.gather(-1, kstar[:, None]).squeeze(-1)
    draws = result.sample(n_samples, generator=generator)
    logits = model(draws.flatten(0, 1)).view(n_samples, bsz, -1)
    z_ref = logits.gather(-1, ref.unsqueeze(0).expand(n_samples, -1, -1)).squeeze(-1)
    z_k = logits.gather(-1, kstar.view(1, -1, 1).expand(n_samples, -1, -1)).squeeze(-1)
    mc = z_k - z_ref if targeted else z_ref - z_k
    mc_mean, mc_var = mc.mean(0), mc.var(0)
    se = (mc_var / n_samples).sqrt().clamp_min(1e-12)
    pred = torch.special.ndtr(-sur_mean / sur_var.clamp_min(1e-12).sqrt())
    return dict(pred_success=pred, sur_mean=sur_mean, sur_var=sur_var, mc_mean=mc_mean, mc_var=mc_var,
                mc_success_kstar=(mc < 0).to(mc.dtype).mean(0), margin_z=(sur_mean - mc_mean) / se, kstar=kstar)


def final_linearization_point(result):
    """Where :func:`surrogate_check` linearizes a sparse attack's final distribution: the clip-aware mean.

    The support is every pixel with a mean shift or noise (padded to the largest count, padded slots repeating
    slot 0); on it the mean of ``clip(clip(clean + v) + sqrt(w) eps, 0, 1)`` replaces the clean pixels.

    Returns ``(point, support, valid, clean_S, v_S, w_S)``: ``point`` in the images' shape ``(B, C, H, W)``,
    ``support`` ``(B, K)`` int64 pixel indices, ``valid`` ``(B, K)`` bool, and the clean pixels, mean shifts and
    noise variances on the support, ``(B, K)`` each (0 on padded slots).
    """
    clean = result.clean.flatten(1)
    w = result.noise_var
    support_mask = (result.delta_param != 0) | (w > 0)
    counts = support_mask.sum(1)
    k = max(int(counts.max()), 1)
    order = support_mask.to(clean.dtype).argsort(dim=1, descending=True, stable=True)[:, :k]
    valid = torch.arange(k, device=clean.device).unsqueeze(0) < counts.unsqueeze(1)
    support = torch.where(valid, order, order[:, :1])
    clean_S = clean.gather(1, support) * valid
    v_S = result.delta_param.gather(1, support) * valid
    w_S = w.gather(1, support) * valid
    mean_S, _ = clipped_gaussian_moments((clean_S + v_S).clamp(0, 1), w_S)
    point = put_support(clean, support, valid, mean_S).view_as(result.clean)
    return point, support, valid, clean_S, v_S, w_S
