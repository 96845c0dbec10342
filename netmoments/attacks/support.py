"""The fast solver for sparse Gaussian attacks (``G = I``): find a support, then optimize the distribution on it.

Why two phases. The moments of a two-stage-linearized network need, per image, only the *columns* of ``A`` on
the pixels the distribution touches: with ``x = point + P_S (x_S - point_S)`` (``P_S`` puts the ``K`` support
pixels back into the image), ``A x + c1 = pre(point) + A_S (x_S - point_S)``, so the whole surrogate is an
:class:`~netmoments.AffineReLUAffine` on ``K`` inputs with ``A_S = A[:, S]`` (``m x K``). Forming it costs ``K``
forward-mode passes of the layers before the kept ReLU instead of a full ``m x n`` Jacobian, and every step on it
costs ``O(m K)`` instead of a network pass.

1. **Support.** The mean-only attack (``Sigma = 0``) with the Gaussian attack's own hinge and L1 price, its
   linearization renewed at every step. At ``Sigma = 0`` the two-stage linearization at the current point *is*
   the network there, so this phase is proximal gradient descent on the real network's margin (one forward and
   one backward pass per step), with the per-image L1 continuation of :func:`gaussian_attack`.
2. **Distribution.** Fix the support ``S`` (the pixels phase 1 moved, at most ``max_support`` of them), form
   ``A_S`` at the current mean and optimize the mean shift and the noise stds on ``S`` through the closed-form
   moments (:class:`~netmoments.attacks.LinearizedAttackObjective` on ``K`` inputs). Every ``relinearize_every``
   steps one real forward pass checks the surrogate's pre-activations at the mean; images whose linear region
   changed get new columns (only those images).
3. **Final check.** ``final_draws`` draws per image through the real network; an image whose Monte Carlo success
   is below ``final_goal`` gets its margin offset ``kappa`` raised by ``kappa_step`` and more phase-2 steps, at
   most ``tighten_rounds`` times. The draws count in the attack's cost.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..affine import AffineReLUAffine

__all__ = ["SupportLinearization", "support_attack"]


def _split(model, relu_index):
    from ..linearize import split_at_relu

    return split_at_relu(model, relu_index)


class SupportLinearization:
    """Pre-activations, support columns of ``A`` and the affine map after the kept ReLU, for a batch of points.

    Args:
        model: ``nn.Sequential`` of piecewise-linear layers; relu_index: the kept ReLU (-1: the last).
        points: ``(Bt, C, H, W)`` where to linearize.
        support: ``(Bt, K)`` int64 pixel indices (flattened), padded entries marked by ``valid`` ``(Bt, K)`` bool.

    Attributes:
        pre ``(Bt, m)``, A_S ``(Bt, m, K)`` (zero columns where not valid), c1 ``(Bt, m)`` with
        ``A x + c1 = A_S x_S + c1`` for ``x`` equal to ``points`` off the support, B ``(Bt, p, m)``, c2 ``(Bt, p)``;
        ``jvp_passes``: forward-mode passes spent (one per valid column).

    The columns come from the project's matrix-free :class:`netmoments.linearize.TwoStageLinearization`
    (``.columns``: one masked linear pass per column), else from batched ``torch.func.jvp``.
    """

    def __init__(self, model: nn.Sequential, points: torch.Tensor, support: torch.Tensor, valid: torch.Tensor,
                 relu_index: int = -1):
        self.before, self.after = _split(model, relu_index)
        self.model = model
        self.relu_index = relu_index
        self.shape = tuple(points.shape[1:])
        with torch.no_grad():
            self.pre = self.before(points).flatten(1)
        self.B, self.c2 = self._after_affine(self.pre)
        self.points = points.flatten(1)
        self.support = support
        self.valid = valid
        self.A_S = self._columns(points, support, valid)
        point_S = self.points.gather(1, support) * valid
        self.c1 = self.pre - (self.A_S @ point_S.unsqueeze(-1)).squeeze(-1)
        self.jvp_passes = valid.sum(1).to(points.dtype)
        if getattr(self, "_padded_passes", None) is not None:
            self.jvp_passes = torch.full_like(self.jvp_passes, self._padded_passes)

    def _after_affine(self, pre):
        after = self.after
        layers = [layer for layer in after if not isinstance(layer, (nn.Identity, nn.Flatten))]
        bsz, m = pre.shape
        if len(layers) == 0:
            eye = torch.eye(m, dtype=pre.dtype, device=pre.device)
            return eye.expand(bsz, m, m), torch.zeros_like(pre)
        if len(layers) == 1 and isinstance(layers[0], nn.Linear):
            lin = layers[0]
            bias = lin.bias if lin.bias is not None else torch.zeros(lin.out_features, dtype=pre.dtype,
                                                                     device=pre.device)
            return lin.weight.detach().expand(bsz, -1, -1), bias.detach().expand(bsz, -1)
        from torch.func import jacrev, vmap

        hidden = torch.relu(pre).detach()
        jac = vmap(jacrev(lambda h: after(h.unsqueeze(0)).squeeze(0)))(hidden)
        with torch.no_grad():
            out = after(hidden)
        return jac.detach(), (out - (jac @ hidden.unsqueeze(-1)).squeeze(-1)).detach()

    def _columns(self, points, support, valid):
        bsz, k = support.shape
        try:  # the project's matrix-free linearization: one masked linear pass per column, all images at once
            from ..linearize import TwoStageLinearization
        except ImportError:  # pragma: no cover - older netmoments
            TwoStageLinearization = None
        if TwoStageLinearization is not None:
            lin = TwoStageLinearization(self.model, points, self.relu_index)
            self._padded_passes = float(k)  # every image pays for the batch's widest support
            return lin.columns(support).detach() * valid.unsqueeze(-2).to(points.dtype)
        rows, slots = valid.nonzero(as_tuple=True)
        m = self.pre.shape[1]
        cols = points.new_zeros(bsz, m, k)
        if rows.numel() == 0:
            return cols
        pix = support[rows, slots]
        values = self._columns_flat(points, rows, pix)  # (P, m)
        cols[rows, :, slots] = values
        return cols

    def _columns_flat(self, points, rows, pix, chunk=512):
        """``A[rows[j]][:, pix[j]]`` for each pair ``j``: ``(P, m)`` (one dual-number pass per pair)."""
        from torch.func import jvp

        out = []
        for start in range(0, rows.numel(), chunk):
            r, p = rows[start : start + chunk], pix[start : start + chunk]

            tangent = torch.zeros(r.numel(), self.points.shape[1], dtype=points.dtype, device=points.device)
            tangent[torch.arange(r.numel(), device=points.device), p] = 1.0
            _, col = jvp(self.before, (points[r],), (tangent.view(-1, *self.shape),))
            out.append(col.flatten(1).detach())
        return torch.cat(out)

    def network(self) -> AffineReLUAffine:
        """The surrogate on the ``K`` support inputs."""
        return AffineReLUAffine(self.A_S, self.c1, self.B, self.c2)

    def refresh(self, points: torch.Tensor, which: torch.Tensor) -> None:
        """Re-linearize the images ``which`` ``(Bt,)`` bool at ``points`` (same support); others are kept."""
        if not bool(which.any()):
            return
        idx = which.nonzero().flatten()
        sub = SupportLinearization(self.model, points[idx], self.support[idx], self.valid[idx], self.relu_index)
        self.pre = self.pre.clone()
        self.pre[idx] = sub.pre
        self.points = self.points.clone()
        self.points[idx] = sub.points
        self.A_S = self.A_S.clone()
        self.A_S[idx] = sub.A_S
        self.c1 = self.c1.clone()
        self.c1[idx] = sub.c1
        if self.B.stride(0) != 0:
            self.B = self.B.clone()
            self.B[idx] = sub.B
            self.c2 = self.c2.clone()
            self.c2[idx] = sub.c2
        self.jvp_passes = self.jvp_passes + torch.zeros_like(self.jvp_passes).index_put_((idx,), sub.jvp_passes)

    @torch.no_grad()
    def region_changed(self, points: torch.Tensor, rtol: float = 1e-4) -> torch.Tensor:
        """``(Bt,)`` bool: the real pre-activations at ``points`` differ from the surrogate's affine prediction
        (the layers before the kept ReLU left the linearization's linear region). One real forward pass."""
        real = self.before(points).flatten(1)
        x_S = points.flatten(1).gather(1, self.support) * self.valid
        lin = (self.A_S @ x_S.unsqueeze(-1)).squeeze(-1) + self.c1
        scale = real.abs().amax(1).clamp_min(1.0)
        return (real - lin).abs().amax(1) > rtol * scale


def _put(base, support, valid, values):
    """``base`` ``(B, n)`` with ``values`` ``(B, K)`` written at ``support`` where ``valid``.

    Padded slots repeat the first support pixel; they write ``base``'s own value and slot 0 is written last, so
    duplicate indices never race."""
    out = base.clone()
    out.scatter_(1, support, torch.where(valid, values, base.gather(1, support)))
    first = support[:, :1]
    out.scatter_(1, first, torch.where(valid[:, :1], values[:, :1], base.gather(1, first)))
    return out


def _margin(logits, reference, targeted):
    ref = reference.unsqueeze(-1)
    z_ref = logits.gather(-1, ref).squeeze(-1)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, ref, True)
    best = logits.masked_fill(mask, float("-inf")).amax(-1)
    return best - z_ref if targeted else z_ref - best


def support_attack(model, images, labels, target, opts, adam_cls, objective_cls, result_cls):
    """Run the two-phase sparse Gaussian attack (see the module docstring); ``opts`` are resolved options."""
    from ._ops import soft_threshold

    start_time = time.perf_counter()
    shape = tuple(images.shape[1:])
    clean = images.detach().flatten(1)
    bsz, n = clean.shape
    targeted = target is not None
    reference = target if targeted else labels
    dtype, device = clean.dtype, clean.device
    use_noise = opts["variables"] in ("noise", "both")
    z_goal = float(torch.special.ndtri(torch.tensor(opts["goal"], dtype=torch.float64)))
    low, high = -clean, 1.0 - clean
    fwd = torch.zeros(bsz, dtype=dtype, device=device)
    bwd = torch.zeros_like(fwd)

    # ---- phase 1: support (mean only, real network, linearization renewed every step)
    v = torch.zeros_like(clean)
    adam = adam_cls(v, opts["lr"])
    l1_weight = torch.full((bsz, 1), float(opts["l1_weight"]), dtype=dtype, device=device)
    mean_steps = opts["mean_steps"]
    margin = None
    for step in range(mean_steps):
        if step > 0 and step % opts["relinearize_every"] == 0 and opts["l1_decay"] < 1:
            behind = (margin >= 0).unsqueeze(-1)
            l1_weight = torch.where(behind, l1_weight * opts["l1_decay"], l1_weight)
        v_var = v.clone().requires_grad_(True)
        logits = model((clean + v_var).clamp(0.0, 1.0).view(bsz, *shape))
        m = _margin(logits, reference, targeted)
        loss = torch.relu((m + opts["kappa"]) / opts["temperature"] + z_goal)
        (g,) = torch.autograd.grad(loss.sum(), v_var)
        margin = m.detach()
        with torch.no_grad():
            v, lr_v = adam.step(v, g)
            v = soft_threshold(v, lr_v * l1_weight)
            v = torch.minimum(torch.maximum(v, low), high)
    fwd += mean_steps
    bwd += mean_steps

    # ---- phase 2: the distribution on the support
    touched = v != 0
    counts = touched.sum(1)
    k = int(min(max(int(counts.max()) if bsz else 0, 1), opts["max_support"]))
    # the k largest |v| per image (all of them when the image touched at most k pixels)
    order = v.abs().argsort(dim=1, descending=True)[:, :k]
    valid = torch.arange(k, device=device).unsqueeze(0) < counts.clamp(max=k).unsqueeze(1)
    support = torch.where(valid, order, order[:, :1])
    clean_S = clean.gather(1, support) * valid
    v_S = v.gather(1, support) * valid
    s_S = torch.full_like(v_S, opts["init_noise"] if use_noise else 0.0) * valid
    objective_kwargs = dict(variance=opts["variance"], temperature=opts["temperature"], goal=opts["goal"],
                            clip_aware=opts["clip_aware"], series_terms=opts["series_terms"])
    kappa = torch.full((bsz,), float(opts["kappa"]), dtype=dtype, device=device)

    def mean_image(v_S, s_S):
        """The linearization point: the (clip-aware) mean of the draws, as an image batch."""
        mean_S = (clean_S + v_S).clamp(0.0, 1.0)
        if opts["clip_aware"] and use_noise:
            from ._ops import clipped_gaussian_moments

            mean_S, _ = clipped_gaussian_moments(mean_S, s_S * s_S)
        return _put(clean, support, valid, mean_S).view(bsz, *shape)

    t0 = time.perf_counter()
    lin = SupportLinearization(model, mean_image(v_S, s_S), support, valid, opts["relu_index"])
    fwd += 1
    lin_time = time.perf_counter() - t0
    n_lin = 1
    adam_v = adam_cls(v_S, opts["lr"])
    adam_s = adam_cls(s_S, opts["noise_lr"])
    l1_S = l1_weight.clone()
    loss_hist, prob_hist = [], []
    rounds = 0
    active = torch.ones(bsz, dtype=torch.bool, device=device)
    steps_this_round = opts["support_steps"]
    mc_success = None
    while True:
        objective = objective_cls(lin.network(), clean_S, reference, targeted, (1, 1, k), 0.0, **objective_kwargs)
        objective.kappa = kappa.unsqueeze(-1)
        for step in range(steps_this_round):
            if step > 0 and step % opts["relinearize_every"] == 0:
                with torch.no_grad():
                    point = mean_image(v_S, s_S)
                    changed = lin.region_changed(point) & active
                fwd += 1
                if bool(changed.any()):
                    t0 = time.perf_counter()
                    lin.refresh(point, changed)
                    fwd += changed.to(dtype)
                    lin_time += time.perf_counter() - t0
                    n_lin += 1
                    objective = objective_cls(lin.network(), clean_S, reference, targeted, (1, 1, k), 0.0,
                                              **objective_kwargs)
                    objective.kappa = kappa.unsqueeze(-1)
            v_var = v_S.clone().requires_grad_(True)
            s_var = s_S.clone().requires_grad_(use_noise)
            loss, r = objective(v_var, s_var * s_var)
            params = [v_var] + ([s_var] if use_noise else [])
            grads = torch.autograd.grad(loss.sum(), params)
            loss_hist.append(loss.detach())
            prob_hist.append(torch.special.ndtr(-r.detach()))
            with torch.no_grad():
                keep = active.unsqueeze(-1)
                new_v, lr_v = adam_v.step(v_S, grads[0])
                new_v = soft_threshold(new_v, lr_v * l1_S)
                new_v = torch.minimum(torch.maximum(new_v, -clean_S), 1.0 - clean_S) * valid
                v_S = torch.where(keep, new_v, v_S)
                if use_noise:
                    new_s, lr_s = adam_s.step(s_S, grads[1])
                    new_s = new_s - lr_s * (opts["noise_l1_weight"] - opts["noise_reward"])
                    new_s = new_s.clamp(0.0, opts["noise_scale"])
                    new_s = torch.where(new_v != 0, new_s, torch.zeros_like(new_s)) * valid
                    s_S = torch.where(keep, new_s, s_S)
        # ---- final check on the real network
        draws = opts["final_draws"]
        if draws == 0:
            break
        with torch.no_grad():
            gen = torch.Generator(device=device).manual_seed(int(opts["seed"]) + 1000 + rounds)
            # exactly what AttackResult.sample draws: clip(clip(clean + v) + s * eps) on the support
            eps = torch.randn(draws, bsz, k, generator=gen, dtype=dtype, device=device)
            x_S = ((clean_S + v_S).clamp(0.0, 1.0).unsqueeze(0) + eps * s_S).clamp(0.0, 1.0)
            x = torch.stack([_put(clean, support, valid, x_S[d]) for d in range(draws)])
            logits = model(x.view(draws * bsz, *shape)).view(draws, bsz, -1)
            ok = (logits.argmax(-1) != labels) if not targeted else (logits.argmax(-1) == target)
            mc_success = ok.to(dtype).mean(0)
        fwd += draws * active.to(dtype)
        behind = (mc_success < opts["final_goal"]) & active
        if rounds >= opts["tighten_rounds"] or not bool(behind.any()):
            break
        rounds += 1
        kappa = torch.where(behind, kappa + opts["kappa_step"], kappa)
        active = behind
        steps_this_round = max(1, opts["support_steps"] // 2)
        # make sure the tightened images start from a current linearization
        with torch.no_grad():
            point = mean_image(v_S, s_S)
        t0 = time.perf_counter()
        lin.refresh(point, behind)
        fwd += behind.to(dtype)
        lin_time += time.perf_counter() - t0
        n_lin += 1

    v_full = _put(torch.zeros_like(clean), support, valid, v_S)
    w_full = _put(torch.zeros_like(clean), support, valid, s_S * s_S)
    elapsed = time.perf_counter() - start_time
    options = {key: val for key, val in opts.items() if key != "linearizer"}
    jvp = lin.jvp_passes
    options.update(
        forward_passes=float(fwd.mean()), backward_passes=float(bwd.mean()), jvp_passes=float(jvp.mean()),
        support_size=counts.tolist(), tighten_rounds_used=rounds, final_kappa=kappa.tolist(),
        final_check_success=None if mc_success is None else mc_success.tolist(),
    )
    hist = torch.stack(loss_hist) if loss_hist else torch.zeros(0, bsz)
    probs = torch.stack(prob_hist) if prob_hist else torch.zeros(0, bsz)
    return result_cls(
        clean=images.detach().clone(), labels=labels, target=target, delta_param=v_full.detach(),
        noise_var=w_full.detach(), blur_sigma=0.0, structure="sparse", method="gaussian",
        loss_history=hist, success_prob_history=probs, time_s=elapsed, time_linearize_s=lin_time,
        n_linearizations=n_lin, options=options,
    )


@torch.no_grad()
def surrogate_check(model, result, labels, target=None, n_draws=200, generator=None, variance=None):
    """The surrogate's margin against the real network's, at an attack's *final* distribution (sparse, G = I).

    The two-stage linearization is taken afresh at the final (clip-aware) mean; the margin class ``k*`` is the
    surrogate's easiest competitor (untargeted: ``argmin_k E[M_k] / sd[M_k]``; targeted: the hardest rival).
    ``M_k = g_y - g_k`` untargeted, ``g_k - g_t`` targeted; success means ``M < 0``.

    Returns a dict of ``(B,)`` tensors: ``pred_success`` = ``Phi(-E/sd)`` of ``M_k*`` under the surrogate (no
    ``kappa``, no temperature), ``sur_mean``, ``sur_var``, and on ``n_draws`` draws through the real network
    ``mc_mean``, ``mc_var``, ``mc_success_kstar`` (fraction with ``M_k* < 0``) and ``margin_z`` =
    ``(sur_mean - mc_mean) / SE(mc_mean)``.
    """
    from .gaussian import LinearizedAttackObjective

    if result.blur_sigma > 0:
        raise ValueError("surrogate_check needs a sparse (G = I) attack result")
    variance = variance or result.options.get("variance", "linear")
    clean = result.clean.flatten(1)
    bsz, n = clean.shape
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
    from ._ops import clipped_gaussian_moments

    mean_S, _ = clipped_gaussian_moments((clean_S + v_S).clamp(0, 1), w_S)
    point = _put(clean, support, valid, mean_S).view_as(result.clean)
    lin = SupportLinearization(model, point, support, valid, result.options.get("relu_index", -1))
    targeted = target is not None
    reference = target if targeted else labels
    obj = LinearizedAttackObjective(lin.network(), clean_S, reference, targeted, (1, 1, k), 0.0,
                                    variance=variance, kappa=0.0, temperature=1.0, clip_aware=True)
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
    draws = result.sample(n_draws, generator=generator)
    logits = model(draws.flatten(0, 1)).view(n_draws, bsz, -1)
    z_ref = logits.gather(-1, ref.unsqueeze(0).expand(n_draws, -1, -1)).squeeze(-1)
    z_k = logits.gather(-1, kstar.view(1, -1, 1).expand(n_draws, -1, -1)).squeeze(-1)
    mc = z_k - z_ref if targeted else z_ref - z_k
    mc_mean, mc_var = mc.mean(0), mc.var(0)
    se = (mc_var / n_draws).sqrt().clamp_min(1e-12)
    pred = torch.special.ndtr(-sur_mean / sur_var.clamp_min(1e-12).sqrt())
    return dict(pred_success=pred, sur_mean=sur_mean, sur_var=sur_var, mc_mean=mc_mean, mc_var=mc_var,
                mc_success_kstar=(mc < 0).to(mc.dtype).mean(0), margin_z=(sur_mean - mc_mean) / se)
