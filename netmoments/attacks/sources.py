"""Where the support solver's phase-2 gradients come from.

The support solver (:func:`netmoments.attacks.support.support_attack`) optimizes the mean shift ``v_S`` and the
noise stds ``s_S`` of a distribution on a fixed pixel support. Its phases, support, updates and final check do
not depend on how the gradient of the attack loss with respect to ``(v_S, s_S)`` is obtained; a *gradient
source* supplies it:

* :class:`SurrogateGradients` (the default, the Gaussian attack): the closed-form moments of the network's
  two-stage linearization on the support, re-linearized where the mean leaves its linear region.
* :class:`SampledGradients` (expectation over transformation): reparametrized draws of the distribution through
  the real network, the hinge averaged over them.

A source has ``prepare(problem, v_S, s_S)`` (once, before phase 2), ``begin_round(kappa)`` (at the start of
each round, with the per-image margin offsets), ``tighten(v_S, s_S, behind)`` (before a tightening round, for
the images ``behind``), ``__call__(step, v_S, s_S, active) -> (loss, success_prob, grad_v, grad_s)`` and
``describe() -> dict`` (entries for the result's options), plus an ``attack`` name for the result
(:attr:`AttackResult.attack`; a source that has only the older ``method`` name still works, with a
``DeprecationWarning``).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

from .._validation import renamed
from ._ops import clipped_gaussian_moments
from .common import goal_z, hinge, margin
from .linearization import SupportLinearization, put_support
from .objective import LinearizedAttackObjective
from .options import AttackOptions

__all__ = ["SolverCost", "SupportProblem", "SurrogateGradients", "SampledGradients"]


def _deprecated_method(source) -> str:
    warnings.warn(f"{type(source).__name__}.method is deprecated, use .attack instead", DeprecationWarning,
                  stacklevel=3)
    return source.attack


@dataclass
class SolverCost:
    """What an attack spent, per image where it is a tensor ``(B,)``: real forward and backward passes,
    forward-mode (JVP) column passes, wall seconds spent linearizing and the number of linearizations."""

    forward: torch.Tensor
    backward: torch.Tensor
    jvp: torch.Tensor
    linearize_s: float = 0.0
    linearizations: int = 0

    @classmethod
    def zeros(cls, bsz: int, dtype: torch.dtype, device) -> SolverCost:
        def zero():
            return torch.zeros(bsz, dtype=dtype, device=device)

        return cls(forward=zero(), backward=zero(), jvp=zero())


@dataclass
class SupportProblem:
    """One batch's attack restricted to its support.

    Attributes:
        model: the real network; clean: ``(B, n)`` flattened clean images; shape: ``(C, H, W)``.
        labels: ``(B,)`` int64; target: ``(B,)`` int64 or ``None`` (untargeted).
        support: ``(B, K)`` int64 pixel indices, ``valid`` ``(B, K)`` bool (padded slots repeat slot 0).
        clean_S: ``(B, K)`` the clean pixels on the support (0 on padded slots).
        opts: the resolved :class:`~netmoments.attacks.AttackOptions`; cost: the running :class:`SolverCost`.
    """

    model: torch.nn.Module
    clean: torch.Tensor
    shape: tuple
    labels: torch.Tensor
    target: torch.Tensor | None
    support: torch.Tensor
    valid: torch.Tensor
    clean_S: torch.Tensor
    opts: AttackOptions
    cost: SolverCost

    @property
    def k(self) -> int:
        return self.support.shape[1]

    @property
    def use_noise(self) -> bool:
        return self.opts.variables in ("noise", "both")

    def put(self, values: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """``(..., B, n)``: ``base`` (default the clean images) with ``values`` ``(..., B, K)`` on the support."""
        return put_support(self.clean if base is None else base, self.support, self.valid, values)

    def mean_image(self, v_S: torch.Tensor, s_S: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` the linearization point: the (clip-aware) mean of the draws."""
        mean_S = (self.clean_S + v_S).clamp(0.0, 1.0)
        if self.opts.clip_aware and self.use_noise:
            mean_S, _ = clipped_gaussian_moments(mean_S, s_S * s_S)
        return self.put(mean_S).view(-1, *self.shape)

    def leaves(self, v_S: torch.Tensor, s_S: torch.Tensor):
        """``(v, s)``: fresh leaf copies that require gradients (``s`` only when the noise is optimized)."""
        return v_S.clone().requires_grad_(True), s_S.clone().requires_grad_(self.use_noise)


def _gradients(loss: torch.Tensor, v_var: torch.Tensor, s_var: torch.Tensor):
    """``(grad_v, grad_s)`` of ``loss.sum()``; ``grad_s`` is ``None`` when ``s_var`` is not optimized."""
    params = [v_var] + ([s_var] if s_var.requires_grad else [])
    grads = torch.autograd.grad(loss.sum(), params)
    return grads[0], (grads[1] if s_var.requires_grad else None)


class SurrogateGradients:
    """Gradients of the closed-form objective (:class:`~netmoments.attacks.LinearizedAttackObjective`) on the
    support: the network two-stage linearized at the distribution's mean, one ``A_S`` column per support pixel.

    Every ``relinearize_every`` steps one real forward pass checks the surrogate's pre-activations at the mean;
    the images whose linear region changed (and that are still optimized) get new columns. Each check costs a
    forward pass; each new linearization one more, plus its column passes.
    """

    attack = "gaussian"
    method = property(lambda self: _deprecated_method(self))

    def prepare(self, problem: SupportProblem, v_S: torch.Tensor, s_S: torch.Tensor) -> None:
        self.problem = problem
        t0 = time.perf_counter()
        self.lin = SupportLinearization(problem.model, problem.mean_image(v_S, s_S), problem.support,
                                        problem.valid, problem.opts.relu_index)
        self._count(time.perf_counter() - t0, torch.ones_like(problem.cost.forward))

    def begin_round(self, kappa: torch.Tensor) -> None:
        self.kappa = kappa
        self._build()

    def tighten(self, v_S: torch.Tensor, s_S: torch.Tensor, behind: torch.Tensor) -> None:
        # the tightened images start from a current linearization
        with torch.no_grad():
            point = self.problem.mean_image(v_S, s_S)
        t0 = time.perf_counter()
        self.lin.refresh(point, behind)
        self._count(time.perf_counter() - t0, behind.to(point.dtype))

    def __call__(self, step: int, v_S: torch.Tensor, s_S: torch.Tensor, active: torch.Tensor):
        if step > 0 and step % self.problem.opts.relinearize_every == 0:
            self._follow(v_S, s_S, active)
        v_var, s_var = self.problem.leaves(v_S, s_S)
        loss, r = self.objective(v_var, s_var * s_var)
        grad_v, grad_s = _gradients(loss, v_var, s_var)
        return loss.detach(), torch.special.ndtr(-r.detach()), grad_v, grad_s

    def describe(self) -> dict:
        return {}

    def _build(self):
        p, o = self.problem, self.problem.opts
        self.objective = LinearizedAttackObjective(
            self.lin.network(), p.clean_S, p.labels if p.target is None else p.target, p.target is not None,
            (1, 1, p.k), 0.0, method=o.method, kappa=self.kappa, temperature=o.temperature, goal=o.goal,
            clip_aware=o.clip_aware, series_terms=o.series_terms,
        )

    def _follow(self, v_S, s_S, active):
        """Re-linearize the active images whose mean left the linearization's linear region."""
        with torch.no_grad():
            point = self.problem.mean_image(v_S, s_S)
            changed = self.lin.region_changed(point) & active
        self.problem.cost.forward += 1
        if bool(changed.any()):
            t0 = time.perf_counter()
            self.lin.refresh(point, changed)
            self._count(time.perf_counter() - t0, changed.to(point.dtype))
            self._build()

    def _count(self, seconds: float, forward: torch.Tensor) -> None:
        cost = self.problem.cost
        cost.forward += forward
        cost.linearize_s += seconds
        cost.linearizations += 1
        cost.jvp = self.lin.jvp_passes


class SampledGradients:
    """Expectation-over-transformation gradients: ``n_samples`` reparametrized draws per image and step through
    the real network.

    A draw is what :meth:`AttackResult.sample` draws on the support, ``clip(clip(clean + v) + s * eps, 0, 1)``
    with ``eps ~ N(0, I)``; the loss is the real-margin hinge ``relu((M + kappa) / T + Phi^-1(goal))`` averaged
    over the draws, and the success probability the fraction of draws that succeed. Each step costs ``n_samples``
    forward and backward passes per optimized image. The draws are seeded by ``seed + 2000``.

    Args:
        n_samples: draws per image and step, a positive int (formerly ``samples=``, still accepted with a
            ``DeprecationWarning``).
    """

    attack = "eot-support"
    method = property(lambda self: _deprecated_method(self))

    def __init__(self, n_samples: int = 8, *, samples: int | None = None):
        n_samples = renamed("SampledGradients", "samples", "n_samples", samples, n_samples, 8)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        self.n_samples = n_samples

    @property
    def samples(self) -> int:
        """Deprecated name of :attr:`n_samples`."""
        warnings.warn("SampledGradients.samples is deprecated, use .n_samples instead", DeprecationWarning,
                      stacklevel=2)
        return self.n_samples

    def prepare(self, problem: SupportProblem, v_S: torch.Tensor, s_S: torch.Tensor) -> None:
        self.problem = problem
        self.generator = torch.Generator(device=problem.clean.device).manual_seed(int(problem.opts.seed) + 2000)
        self.z_goal = goal_z(problem.opts.goal)

    def begin_round(self, kappa: torch.Tensor) -> None:
        self.kappa = kappa

    def tighten(self, v_S: torch.Tensor, s_S: torch.Tensor, behind: torch.Tensor) -> None:
        """Nothing to renew: the draws go through the real network."""

    def __call__(self, step: int, v_S: torch.Tensor, s_S: torch.Tensor, active: torch.Tensor):
        p = self.problem
        v_var, s_var = p.leaves(v_S, s_S)
        eps = torch.randn(self.n_samples, *v_S.shape, generator=self.generator, dtype=v_S.dtype, device=v_S.device)
        x_S = ((p.clean_S + v_var).clamp(0.0, 1.0) + eps * s_var).clamp(0.0, 1.0)
        logits = p.model(p.put(x_S).view(-1, *p.shape)).view(self.n_samples, v_S.shape[0], -1)
        m = margin(logits, p.labels, p.target)
        loss = hinge(m, self.kappa, p.opts.temperature, self.z_goal).mean(0)
        grad_v, grad_s = _gradients(loss, v_var, s_var)
        p.cost.forward += self.n_samples * active.to(v_S.dtype)
        p.cost.backward += self.n_samples * active.to(v_S.dtype)
        return loss.detach(), (m.detach() < 0).to(v_S.dtype).mean(0), grad_v, grad_s

    def describe(self) -> dict:
        return {"gradient_samples": self.n_samples}
