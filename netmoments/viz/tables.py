"""Closed forms against Monte Carlo, as a table (chapters 1-4).

Computing and printing are apart: :func:`monte_carlo_comparison` returns every number of the table and prints
nothing, :func:`format_monte_carlo_table` writes those numbers as text, and :func:`monte_carlo_table`, which the
chapters call, does both, so a chapter calls one function instead of a loop of format strings and every
closed-form-versus-sampling table in Part I reads the same way.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MonteCarloTable", "MonteCarloComparison", "bonferroni_threshold", "monte_carlo_comparison",
           "format_monte_carlo_table", "monte_carlo_table"]


class MonteCarloTable(NamedTuple):
    """What :func:`monte_carlo_table` printed: row names, ``{label: z-scores (rows,)}`` and the threshold."""

    rows: list
    z: dict
    threshold: float


class MonteCarloComparison(NamedTuple):
    """Every number of a closed-forms-versus-Monte-Carlo table (:func:`monte_carlo_comparison`).

    Attributes:
        rows: the row names (``E[y1]``, ..., ``Var[y1]``, ..., ``Cov[y1,y2]``, ...).
        estimate: ``(rows,)`` the Monte Carlo estimates.
        std_err: ``(rows,)`` their standard errors.
        values: ``{label: (rows,) closed-form values}``.
        z: ``{label: (rows,) |closed form - Monte Carlo| / SE}``.
        threshold: the two-sided Bonferroni threshold for all rows at once, at ``level``.
        level: the family-wise level of ``threshold``.
    """

    rows: list
    estimate: torch.Tensor
    std_err: torch.Tensor
    values: dict
    z: dict
    threshold: float
    level: float


def bonferroni_threshold(n_compared: int, level: float = 0.01) -> float:
    """Two-sided Bonferroni threshold ``z_{1 - level / (2 k)}`` for ``k = n_compared`` z-scores.

    A correct formula then fails *any* of the ``k`` comparisons with probability at most ``level``.
    """
    if not isinstance(n_compared, int) or n_compared < 1:
        raise ValueError(f"n_compared must be a positive int, got {n_compared!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    quantile = torch.tensor(1.0 - level / (2 * n_compared), dtype=torch.float64)
    return torch.special.ndtri(quantile).item()


def monte_carlo_comparison(
    mc,
    closed_forms: dict,
    labels=None,
    *,
    variances: bool = True,
    covariances: bool = True,
    level: float = 0.01,
    name: str = "y",
) -> MonteCarloComparison:
    """Closed-form moments beside Monte Carlo estimates, their standard errors and ``|diff| / SE``; prints nothing.

    The z-scores of the means and variances are :meth:`netmoments.MonteCarloResult.z_scores`; those of the
    off-diagonal covariances use ``mc.cov_se``. The threshold is the two-sided Bonferroni threshold for all rows at
    once (:func:`bonferroni_threshold`).

    Args:
        mc: a :class:`netmoments.MonteCarloResult` of ``f(x)`` with outputs ``(..., p)`` (leading dimensions
            are flattened into rows).
        closed_forms: ``{label: (mean, second)}`` with ``mean`` shaped like ``mc.mean`` and ``second`` either
            the variances (shaped like ``mc.var``), the covariance ``(..., p, p)``, or ``None`` (means only).
        labels: names of the flattened outputs (default ``y1, y2, ...``).
        variances: compare the variances.
        covariances: compare the off-diagonal covariances (needs ``mc.cov`` and covariance ``second``).
        level: family-wise level of the Bonferroni threshold.
        name: stem of the default labels.

    Returns:
        :class:`MonteCarloComparison`.
    """
    p = mc.mean.shape[-1]
    n_out = mc.mean.numel()
    if labels is None:
        labels = [f"{name}{k + 1}" for k in range(n_out)]
    labels = list(labels)
    if len(labels) != n_out:
        raise ValueError(f"labels must name the {n_out} outputs, got {len(labels)}")
    use_cov = covariances and mc.cov is not None and p > 1
    rows, estimate, std_err = [], [], []
    rows += [f"E[{lab}]" for lab in labels]
    estimate.append(mc.mean.reshape(-1))
    std_err.append(mc.mean_se.reshape(-1))
    if variances:
        rows += [f"Var[{lab}]" for lab in labels]
        estimate.append(mc.var.reshape(-1))
        std_err.append(mc.var_se.reshape(-1))
    if use_cov:
        iu, ju = torch.triu_indices(p, p, offset=1)
        grouped = [labels[b * p:(b + 1) * p] for b in range(n_out // p)]
        rows += [f"Cov[{g[i]},{g[j]}]" for g in grouped for i, j in zip(iu.tolist(), ju.tolist())]
        estimate.append(mc.cov[..., iu, ju].reshape(-1))
        std_err.append(mc.cov_se[..., iu, ju].reshape(-1))
    estimate, std_err = torch.cat(estimate), torch.cat(std_err)

    values, z_scores = {}, {}
    for label, (mean, second) in closed_forms.items():
        mean = torch.as_tensor(mean).to(mc.mean).reshape(mc.mean.shape)
        if second is None:
            if variances or use_cov:
                raise ValueError(f"closed form {label!r} gives no second moment; pass variances=False, covariances=False")
            (z_mean,) = mc.z_scores(mean)
            values[label], z_scores[label] = mean.reshape(-1), z_mean.reshape(-1)
            continue
        second = torch.as_tensor(second).to(mc.mean)
        is_cov = second.dim() == mc.var.dim() + 1  # (..., p, p) covariance rather than (..., p) variances
        var = torch.diagonal(second, dim1=-2, dim2=-1) if is_cov else second.reshape(mc.var.shape)
        z_mean, z_var = mc.z_scores(mean, var)
        parts, zs = [mean.reshape(-1)], [z_mean.reshape(-1)]
        if variances:
            parts.append(var.reshape(-1))
            zs.append(z_var.reshape(-1))
        if use_cov:
            if not is_cov:
                raise ValueError(f"closed form {label!r} gives variances only; pass covariances=False")
            cov_entries = second[..., iu, ju].reshape(-1)
            tiny = torch.finfo(estimate.dtype).tiny
            parts.append(cov_entries)
            zs.append((cov_entries - mc.cov[..., iu, ju].reshape(-1)).abs()
                      / mc.cov_se[..., iu, ju].reshape(-1).clamp_min(tiny))
        values[label] = torch.cat(parts)
        z_scores[label] = torch.cat(zs)

    threshold = bonferroni_threshold(len(rows), level)
    return MonteCarloComparison(rows, estimate, std_err, values, z_scores, threshold, level)


def format_monte_carlo_table(comparison: MonteCarloComparison, digits: int = 4, width: int | None = None) -> str:
    """The text of a :class:`MonteCarloComparison`: one line per row (the Monte Carlo estimate ``± SE``, then per
    closed form its value and ``|z|``) and, last, the Bonferroni threshold and, per closed form, how many rows
    exceed it.

    Args:
        comparison: what :func:`monte_carlo_comparison` returned.
        digits: decimals written.
        width: if given, the verdicts move to a line of their own when the last line would be longer (a page
            whose code blocks are that many characters wide).
    """
    rows, estimate, std_err = comparison.rows, comparison.estimate, comparison.std_err
    values, z_scores, threshold = comparison.values, comparison.z, comparison.threshold
    label_width = max(len(r) for r in rows) + 1
    number = digits + 6
    header = f"{'quantity':<{label_width}} {'Monte Carlo ± SE':>{2 * number + 3}}"
    for label in values:
        header += f" | {label:>{number}} {'|z|':>6}"
    lines = [header]
    for k, row in enumerate(rows):
        line = (f"{row:<{label_width}} {estimate[k].item():{number}.{digits}f} ± "
                f"{std_err[k].item():<{number}.{digits}f}")
        for label in values:
            line += f" | {values[label][k].item():{number}.{digits}f} {z_scores[label][k].item():6.2f}"
        lines.append(line)
    verdicts = ", ".join(f"{label}: {int((z > threshold).sum())} of {len(rows)} above it"
                         for label, z in z_scores.items())
    last = f"Bonferroni threshold for {len(rows)} numbers at level {comparison.level}: {threshold:.2f}; {verdicts}"
    if width is not None and len(last) > width:
        last = last.replace("; ", ";\n", 1)
    lines.append(last)
    return "\n".join(lines)


def monte_carlo_table(
    mc,
    closed_forms: dict,
    labels=None,
    *,
    variances: bool = True,
    covariances: bool = True,
    level: float = 0.01,
    digits: int = 4,
    name: str = "y",
    width: int | None = None,
) -> MonteCarloTable:
    """Print closed-form moments beside Monte Carlo estimates, their standard errors and ``|diff| / SE``.

    :func:`monte_carlo_comparison` computes the numbers (see there for the arguments) and
    :func:`format_monte_carlo_table` writes them, with ``digits`` decimals; the last line gives the two-sided
    Bonferroni threshold for all rows at once (:func:`bonferroni_threshold`) and, per closed form, how many rows
    exceed it.

    Returns:
        :class:`MonteCarloTable` ``(rows, z, threshold)``: the row names, ``{label: z-scores (rows,)}`` and the
        Bonferroni threshold.
    """
    comparison = monte_carlo_comparison(mc, closed_forms, labels, variances=variances, covariances=covariances,
                                        level=level, name=name)
    print(format_monte_carlo_table(comparison, digits, width))
    return MonteCarloTable(comparison.rows, comparison.z, comparison.threshold)
