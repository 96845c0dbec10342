"""Gaussian adversarial attacks (spec section 7) and the point-attack baselines they are compared with.

``gaussian_attack`` optimizes an input distribution ``N(x + delta, Sigma)`` through the closed-form moments of
the two-stage-linearized network; ``evaluate_attack`` judges any attack by sampling the real network.
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
