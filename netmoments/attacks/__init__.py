"""Gaussian adversarial attacks (spec section 7) and the point-attack baselines they are compared with.

``gaussian_attack`` optimizes an input distribution ``N(x + delta, Sigma)`` through the closed-form moments of
the two-stage-linearized network (sparse attacks by default through :mod:`.support`: a support on the real
network, then the distribution on the columns of ``A`` it needs); ``evaluate_attack`` judges any attack by
sampling the real network. :mod:`.metrics` measures attacks per image (fixed budgets, sizes on the actual draws,
SSIM, diversity, cost) with bootstrap intervals over images; :mod:`.baselines` holds the point attacks, Foolbox's
FMN, L0-PGD with restarts and EOT-PGD over the same Gaussian family; :mod:`.report` turns suite rows into tables
and figures.
"""
from .baselines import (
    eot_attack,
    fmn_attack,
    l0_pgd_attack,
    margin_loss,
    pgd_attack,
    smooth_pgd_attack,
    sparse_pgd_attack,
    tune_step_size,
)
from .evaluate import AttackEvaluation, evaluate_attack
from .gaussian import (
    STRUCTURES,
    VARIABLES,
    VARIANCES,
    AttackResult,
    LinearizedAttackObjective,
    default_options,
    gaussian_attack,
)

__all__ = [
    "gaussian_attack",
    "default_options",
    "AttackResult",
    "LinearizedAttackObjective",
    "evaluate_attack",
    "AttackEvaluation",
    "pgd_attack",
    "sparse_pgd_attack",
    "smooth_pgd_attack",
    "margin_loss",
    "fmn_attack",
    "l0_pgd_attack",
    "eot_attack",
    "tune_step_size",
    "STRUCTURES",
    "VARIABLES",
    "VARIANCES",
]
