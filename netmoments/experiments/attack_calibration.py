"""The ``calibration`` suite of :mod:`netmoments.experiments.attack_suite`: is the surrogate's success probability
calibrated where its predictions spread?

At the default goal (0.99) almost every digit is predicted to be fooled with probability above 0.99, so a mean
prediction against a mean observed rate compares two numbers near 1 and says little about calibration. Here the
attack is asked for less: our default sparse attack runs at each goal of :data:`GOALS`, which makes it stop at
distributions whose predicted success is spread over ``(0, 1)``, and each digit's final distribution is judged on
:data:`CAL_DRAWS` draws through the real network.

Two variants per goal (the ``method`` column):

* ``gauss-sparse``: the attack as shipped, with its final check (32 draws through the real network, ``kappa``
  raised for digits whose measured success is below ``final_goal``); ``final_goal`` is set to the ``goal``, so
  the check asks the network for the same success the surrogate was asked for. The check selects on measured
  success, which pushes the observed rate above the prediction for the digits it tightened.
* ``gauss-sparse-no-final-check``: the same attack with the final check off (``final_draws=0``,
  ``tighten_rounds=0``): the distribution is chosen by the surrogate alone, so its prediction is tested on
  distributions no measurement picked.

For each (digit, goal, variant) a row holds the surrogate's prediction ``pred_success`` = ``Phi(-E/sd)`` of the
margin ``M_k* = g_y - g_k*`` (``k*`` the surrogate's easiest competitor at the final distribution;
:func:`netmoments.attacks.support.surrogate_check`) and, on the *same* draws, the observed rate of the same event
(``mc_success_kstar``: ``M_k* < 0``) and of any misclassification (``mc_success_any``: the argmax is not the
label; never below ``mc_success_kstar``).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["GOALS", "CAL_DRAWS", "CAL_METHODS", "calibration_suite", "judged_check"]

#: The weakened goals (the surrogate success probability the attack aims for).
GOALS = (0.5, 0.7, 0.9)
#: Draws per digit through the real network that judge each final distribution.
CAL_DRAWS = 1000
#: The two variants (``method`` column): the shipped attack with its final check at ``final_goal = goal``, and
#: the surrogate alone (final check off).
CAL_METHODS = ("gauss-sparse", "gauss-sparse-no-final-check")
#: The columns of every row after the runner's bookkeeping (``task``, ``task_rows``).
CAL_COLUMNS = ("image", "label", "method", "goal", "final_goal", "draws", "pred_success", "sur_mean", "sur_var",
               "mc_mean", "mc_var", "margin_z", "mc_success_kstar", "mc_success_any", "kstar", "final_check_success",
               "support_size", "tighten_rounds", "attack_s", "yardstick_s")


@torch.no_grad()
def judged_check(model, result, labels, n_samples: int, seed: int) -> dict:
    """:func:`~netmoments.attacks.support.surrogate_check` at ``n_samples`` draws (generator seeded by ``seed``),
    plus ``mc_success_any`` ``(B,)`` float: the fraction of the *same* draws that the network misclassifies.

    The draws' logits are caught with a forward hook on ``model`` (the check's last call of ``model`` is on the
    ``n_samples * B`` draws), so the second rate costs no second pass.
    """
    from ..attacks.support import surrogate_check

    bsz = int(labels.shape[0])
    caught = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[0] == n_samples * bsz:
            caught.append(output.detach())

    handle = model.register_forward_hook(hook)
    try:
        chk = surrogate_check(model, result, labels, None, n_samples=n_samples,
                              generator=torch.Generator().manual_seed(seed))
    finally:
        handle.remove()
    if not caught:
        raise RuntimeError("judged_check: the draws' forward pass was not seen (surrogate_check changed?)")
    pred = caught[-1].view(n_samples, bsz, -1).argmax(-1)
    out = {k: v.cpu().numpy() for k, v in chk.items()}
    out["mc_success_any"] = (pred != labels.view(1, -1)).to(torch.float64).mean(0).cpu().numpy()
    return out


def _subset(result, keep):
    """``result`` restricted to the digits where ``keep`` ``(B,)`` bool is true (what a judgment needs)."""
    import copy

    # a shallow copy, not dataclasses.replace: the constructor would re-run the deprecated ``method`` path
    sub = copy.copy(result)
    sub.clean, sub.labels, sub.target = result.clean[keep], result.labels[keep], None
    sub.delta_param, sub.noise_var = result.delta_param[keep], result.noise_var[keep]
    sub.loss_history = sub.success_prob_history = None
    return sub


def _judge_variant(model, res, labels, draws, seed, base, base_res):
    """:func:`judged_check` of ``res``; digits whose distribution equals ``base_res``'s (already judged as
    ``base``) keep ``base``'s values, so only the digits that differ are drawn again (their own draws)."""
    if base is None:
        return judged_check(model, res, labels, draws, seed)
    same = ((res.delta_param == base_res.delta_param) & (res.noise_var == base_res.noise_var)).all(1)
    out = {k: np.array(v, copy=True) for k, v in base.items()}
    differ = ~same
    if bool(differ.any()):
        sub = judged_check(model, _subset(res, differ), labels[differ], draws, seed)
        idx = differ.nonzero().flatten().cpu().numpy()
        for k in out:
            out[k][idx] = sub[k]
    return out


def calibration_suite(c, goals=GOALS, draws=CAL_DRAWS) -> None:
    """Add the rows of one chunk ``c`` (an :class:`netmoments.experiments.attack_suite._Chunk`): for each goal
    and each variant of :data:`CAL_METHODS` (those in ``c.only`` when given), one row per digit (see the module
    docstring).

    The final check changes only the digits it tightens, so a digit's two variants often end at the same
    distribution; that digit is then judged once (its two rows share the draws), and only the digits whose
    distributions differ are drawn again.
    """
    import time

    from ..attacks import gaussian_attack

    model, images, labels, seed = c.model, c.images, c.labels, c.seed
    variants = {"gauss-sparse": {}, "gauss-sparse-no-final-check": dict(final_draws=0, tighten_rounds=0)}
    for goal in goals:
        base = base_res = None
        for method, extra in variants.items():
            if c.only is not None and method not in c.only:
                continue
            start = time.perf_counter()
            res = gaussian_attack(model, images, labels, goal=goal, final_goal=goal, seed=seed, **extra)
            attack_s = (time.perf_counter() - start) / len(labels)
            chk = _judge_variant(model, res, labels, draws, seed, base, base_res)
            base, base_res = chk, res
            fcs = res.options.get("final_check_success")
            support = res.options.get("support_size", [np.nan] * len(labels))
            for i in range(len(labels)):
                row = dict(image=int(c.index[i]), label=int(labels[i]), method=method, goal=float(goal),
                           final_goal=float(goal) if method == "gauss-sparse" else float("nan"), draws=int(draws))
                for key in ("pred_success", "sur_mean", "sur_var", "mc_mean", "mc_var", "margin_z",
                            "mc_success_kstar", "mc_success_any"):
                    row[key] = float(chk[key][i])
                row["kstar"] = int(chk["kstar"][i]) if "kstar" in chk else -1
                row["final_check_success"] = float(fcs[i]) if fcs is not None else float("nan")
                row["support_size"] = float(support[i])
                row["tighten_rounds"] = float(res.options.get("tighten_rounds_used", np.nan))
                row["attack_s"] = attack_s
                row["yardstick_s"] = c.yard
                c.rows.append(row)
