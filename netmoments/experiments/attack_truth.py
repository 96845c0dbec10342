"""``attack --suite ablation-truth``: the real network's margin at the ablation's final distributions, 10⁴ draws.

The ablation suite judges how well the surrogate's margin variance matches the real network's on
``attack_suite.DRAWS`` = 100 draws per digit, whose relative standard error,
``sqrt(2 / 99)``, is about 14 %: most of a gap of that size is sampling noise. This pass reruns the ablation's
linear-variance attack on the same chunks with the same seeds (so its final distributions are the committed ones;
the data test checks the surrogate's numbers against ``attack_ablation.csv``) and measures, on
:data:`TRUTH_DRAWS` draws of each final distribution through the real LeNet:

* the margin ``M = g_y - g_k*`` (``k*``: the surrogate's easiest competitor, as in
  :func:`netmoments.attacks.support.surrogate_check`): its mean and variance with their standard errors, the
  variance's from the draws' fourth moment, so the gap's Monte Carlo floor is known per digit;
* the surrogate's margin mean and variance with the linear (Stein) variance, which the attack optimizes, and with
  the exact (Φ₂) and series variances, which only score the final distribution;
* why the exact variance cannot help: how many units of the kept ReLU (fc1's) switch under the distribution
  (active on between 1 % and 99 % of the draws), and, per draw, how many ReLU and max-pool decisions of every
  layer differ from those at the point the surrogate linearizes at (the clip-aware mean).

One row per digit; see :func:`truth_rows` for the columns.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["TRUTH_DRAWS", "ABLATION_CHUNK", "SWITCH_BAND", "nonlinear_states", "real_margin_statistics",
           "truth_rows", "gap_floor", "variance_gap_summary"]

#: Draws of the real network per digit.
TRUTH_DRAWS = 10_000
#: The ablation run's ``--chunk``: the truth pass must use the same chunks to meet the same seeds.
ABLATION_CHUNK = 4
#: A kept-ReLU unit *switches* under a distribution when it is active on a fraction of draws in this band.
SWITCH_BAND = (0.01, 0.99)
_DRAW_CHUNK = 500  # draws per forward batch (x digits of a task): bounds the convolutions' activations


def nonlinear_states(model: nn.Sequential, x: torch.Tensor):
    """Run ``model`` on ``x`` ``(N, C, H, W)`` and return ``(output, states)``: ``states`` holds, per ReLU and
    max-pool in layer order, ``(name, state)`` with ``state`` the ``bool`` on/off map ``(N, ...)`` of a ReLU or the
    ``int64`` argmax indices of a max-pool; names count each kind from 1 (``"pool1"``, ``"relu1"``, ...)."""
    states, counts = [], {"pool": 0, "relu": 0}
    for layer in model:
        if isinstance(layer, nn.MaxPool2d):
            x, idx = nn.functional.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                              ceil_mode=layer.ceil_mode, return_indices=True)
            counts["pool"] += 1
            states.append((f"pool{counts['pool']}", idx))
            continue
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            counts["relu"] += 1
            states.append((f"relu{counts['relu']}", x > 0))
    return x, states


@torch.no_grad()
def real_margin_statistics(model: nn.Sequential, result, labels: torch.Tensor, kstar: torch.Tensor,
                           point: torch.Tensor, n_draws: int = TRUTH_DRAWS, generator=None) -> dict:
    """The real network's untargeted margin ``g_y - g_k*`` on ``n_draws`` draws of ``result``'s distribution, and
    how the draws' linear regions differ from ``point``'s.

    Args:
        model: the real network (``nn.Sequential`` of conv, max-pool, ReLU, flatten, linear layers).
        result: an :class:`~netmoments.attacks.AttackResult` of ``B`` images; draws come from ``result.sample``.
        labels: ``(B,)`` int64; kstar: ``(B,)`` int64, the competitor class of each margin.
        point: ``(B, C, H, W)``, where the surrogate linearizes: the reference pattern of the flips.
        n_draws: draws per image; generator: a ``torch.Generator`` for the draws.

    Returns:
        A dict of ``(B,)`` float64 arrays: ``mean``, ``var`` (``ddof = 1``), ``se_mean``, ``se_var`` (from the
        fourth central moment), ``success_kstar`` (fraction with margin < 0), ``success_any`` (fraction
        misclassified), ``kept_switching`` (units of the last ReLU active on a fraction of draws inside
        :data:`SWITCH_BAND`), and ``flips_<name>`` for every ReLU and max-pool (mean number of units or windows per
        draw whose state differs from ``point``'s).
    """
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 4:
        raise ValueError(f"n_draws must be an int >= 4, got {n_draws!r}")
    bsz = labels.shape[0]
    _, ref_states = nonlinear_states(model, point)
    flips = {name: torch.zeros(bsz, dtype=torch.float64) for name, _ in ref_states}
    kept_name = [name for name, _ in ref_states if name.startswith("relu")][-1]
    active = None
    margins, wrong = [], torch.zeros(bsz, dtype=torch.float64)
    done = 0
    while done < n_draws:
        n = min(_DRAW_CHUNK, n_draws - done)
        draws = result.sample(n, generator=generator)  # (n, B, C, H, W)
        logits, states = nonlinear_states(model, draws.flatten(0, 1))
        logits = logits.view(n, bsz, -1)
        z_y = logits.gather(-1, labels.view(1, -1, 1).expand(n, -1, 1)).squeeze(-1)
        z_k = logits.gather(-1, kstar.view(1, -1, 1).expand(n, -1, 1)).squeeze(-1)
        margins.append((z_y - z_k).double())
        wrong += (logits.argmax(-1) != labels.view(1, -1)).double().sum(0)
        for (name, state), (_, ref) in zip(states, ref_states):
            state = state.view(n, *ref.shape)
            flips[name] += (state != ref.unsqueeze(0)).flatten(2).sum(-1).double().sum(0)
            if name == kept_name:
                on = state.flatten(2).double().sum(0)
                active = on if active is None else active + on
        done += n
    m = torch.cat(margins)  # (n_draws, B)
    mean, var = m.mean(0), m.var(0)
    m4 = ((m - mean) ** 4).mean(0)
    var_of_var = (m4 - var**2 * (n_draws - 3) / (n_draws - 1)) / n_draws
    rate = active / n_draws
    lo, hi = SWITCH_BAND
    out = dict(mean=mean, var=var, se_mean=(var / n_draws).sqrt(), se_var=var_of_var.clamp_min(0).sqrt(),
               success_kstar=(m < 0).double().mean(0), success_any=wrong / n_draws,
               kept_switching=((rate >= lo) & (rate <= hi)).double().sum(-1))
    out.update({f"flips_{name}": total / n_draws for name, total in flips.items()})
    return {k: v.cpu().numpy().astype(np.float64) for k, v in out.items()}


def truth_rows(model, images, labels, index, attack_seed: int, draw_seed: int, n_draws: int = TRUTH_DRAWS) -> list[dict]:
    """One row per digit: the ablation's linear-variance attack (seed ``attack_seed``) and its final distribution
    judged on ``n_draws`` draws of the real network (seeded by ``draw_seed``).

    Columns: ``image``, ``label``, ``kstar``, ``support_size``; the surrogate's ``pred_success``, ``sur_mean`` and
    ``sur_var`` (linear), ``sur_var_exact``, ``sur_var_series``; the real network's ``mc_mean``, ``mc_var``,
    ``mc_mean_se``, ``mc_var_se``, ``mc_success_kstar``, ``mc_success_any``, ``n_draws``; the relative variance
    gaps ``var_gap_linear`` = ``sur_var / mc_var - 1`` (and ``_exact``, ``_series``), the mean's error in real
    standard deviations ``mean_err_sd`` = ``(sur_mean - mc_mean) / sqrt(mc_var)``, ``mc_var_rel_se`` =
    ``mc_var_se / mc_var``; ``kept_switching`` and the ``flips_*`` of :func:`real_margin_statistics`.
    """
    from ..attacks import gaussian_attack
    from ..attacks.support import final_linearization_point, surrogate_check

    res = gaussian_attack(model, images, labels, method="linear", seed=attack_seed)
    one = torch.Generator().manual_seed(attack_seed)
    checks = {m: surrogate_check(model, res, labels, n_samples=2, method=m, generator=one)
              for m in ("linear", "exact", "series")}
    kstar = checks["linear"]["kstar"]
    for m in ("exact", "series"):
        # the competitor class is chosen by each variance's own score; the gap compares like with like only
        # where they agree, which the data test checks
        checks[m]["same_kstar"] = checks[m]["kstar"] == kstar
    point = final_linearization_point(res)[0]
    truth = real_margin_statistics(model, res, labels, kstar, point, n_draws,
                                   torch.Generator().manual_seed(draw_seed))
    lin = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in checks["linear"].items()}
    support = np.asarray(res.options.get("support_size", [math.nan] * len(labels)), dtype=float)
    rows = []
    for i in range(len(labels)):
        mc_var = truth["var"][i]
        row = dict(image=int(index[i]), label=int(labels[i]), kstar=int(kstar[i]), support_size=float(support[i]),
                   pred_success=lin["pred_success"][i], sur_mean=lin["sur_mean"][i], sur_var=lin["sur_var"][i])
        for m in ("exact", "series"):
            row[f"sur_var_{m}"] = float(checks[m]["sur_var"][i])
            row[f"same_kstar_{m}"] = bool(checks[m]["same_kstar"][i])
        row.update(mc_mean=truth["mean"][i], mc_var=mc_var, mc_mean_se=truth["se_mean"][i],
                   mc_var_se=truth["se_var"][i], mc_success_kstar=truth["success_kstar"][i],
                   mc_success_any=truth["success_any"][i], n_draws=n_draws)
        row["var_gap_linear"] = row["sur_var"] / mc_var - 1
        for m in ("exact", "series"):
            row[f"var_gap_{m}"] = row[f"sur_var_{m}"] / mc_var - 1
        row["mean_err_sd"] = (row["sur_mean"] - row["mc_mean"]) / math.sqrt(mc_var)
        row["mc_var_rel_se"] = row["mc_var_se"] / mc_var
        row["kept_switching"] = truth["kept_switching"][i]
        row.update({k: float(v[i]) for k, v in truth.items() if k.startswith("flips_")})
        rows.append({k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in row.items()})
    return rows


def gap_floor(rel_se, n_sim: int = 2000, seed: int = 0) -> float:
    """The median relative variance gap ``|sur_var / mc_var - 1|`` that a *perfect* surrogate would show, from
    Monte Carlo error alone: ``rel_se`` ``(n,)`` are the per-digit relative standard errors of ``mc_var``; the
    answer averages, over ``n_sim`` simulated runs, the median over digits of ``|eps_i|``,
    ``eps_i ~ N(0, rel_se_i^2)``."""
    rel_se = np.asarray(rel_se, dtype=np.float64)
    if rel_se.ndim != 1 or rel_se.size == 0 or not np.all(np.isfinite(rel_se)) or np.any(rel_se < 0):
        raise ValueError(f"rel_se must be a non-empty 1-D array of finite, non-negative numbers, got {rel_se!r}")
    eps = np.random.default_rng(seed).standard_normal((n_sim, rel_se.size)) * rel_se
    return float(np.median(np.abs(eps), axis=1).mean())


def variance_gap_summary(rows, n_boot: int = 2000) -> dict:
    """What the truth pass says, from its rows (dicts with the columns of :func:`truth_rows`; strings are read).

    Returns a dict of ``(estimate, low, high)`` 95 % bootstrap intervals over digits (or floats where marked):

    * ``abs_gap_linear``, ``abs_gap_exact``: median ``|sur_var / mc_var - 1|``;
    * ``gap_linear``: median signed gap (positive: the surrogate's variance is high);
    * ``floor``: float, the median gap a perfect surrogate would show at these draws (:func:`gap_floor`), and
      ``floor_100``: the same with 100 draws per digit and a normal margin (relative SE ``sqrt(2 / 99)``);
    * ``mean_err_sd``: median ``(sur_mean - mc_mean) / sd``; ``abs_mean_err_sd`` its absolute value;
    * ``exact_vs_linear``: median ``|sur_var_exact / sur_var - 1|``;
    * ``kept_switching``: median number of switching kept-ReLU units; ``flips_<layer>``: median flips per draw;
    * ``n``: int, digits.
    """
    def col(key):
        return np.array([float(r[key]) for r in rows], dtype=np.float64)

    from ..stats import bootstrap_ci

    if not rows:
        raise ValueError("rows must hold at least one digit's row")
    med = lambda v: bootstrap_ci(v, "median", n_boot=n_boot)  # noqa: E731
    rel_se = col("mc_var_rel_se")
    out = dict(n=len(rows), abs_gap_linear=med(np.abs(col("var_gap_linear"))),
               abs_gap_exact=med(np.abs(col("var_gap_exact"))), gap_linear=med(col("var_gap_linear")),
               floor=gap_floor(rel_se), floor_100=gap_floor(np.full(len(rows), math.sqrt(2 / 99))),
               mean_err_sd=med(col("mean_err_sd")), abs_mean_err_sd=med(np.abs(col("mean_err_sd"))),
               exact_vs_linear=med(np.abs(col("sur_var_exact") / col("sur_var") - 1)),
               kept_switching=med(col("kept_switching")))
    for key in rows[0]:
        if key.startswith("flips_"):
            out[key] = med(col(key))
    return out
