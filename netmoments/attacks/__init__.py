"""Gaussian adversarial attacks and the point-attack baselines they are compared with.

``gaussian_attack`` optimizes an input distribution ``N(x + delta, Sigma)`` through the closed-form moments of
the two-stage-linearized network (sparse attacks by default through :mod:`.support`: a support on the real
network, then the distribution on the columns of ``A`` it needs, with gradients from a source of
:mod:`.sources`); ``evaluate_attack`` judges any attack by sampling the real network. :mod:`.metrics` measures
attacks per image (fixed budgets, sizes on the actual draws, SSIM, diversity, cost) with bootstrap intervals
over images; :mod:`.baselines` holds the point attacks, Foolbox's FMN, L0-PGD with restarts and EOT-PGD over the
same Gaussian family; :mod:`.report` turns suite rows into tables and figures.

The layers, each importing only those before it: :mod:`._ops` (tensor operations), :mod:`.common` (the result class,
input checks, the margin), :mod:`.update` (Adam and the proximal steps), :mod:`.options` (:class:`AttackOptions`),
:mod:`.objective` (the closed-form objective), :mod:`.linearization` (the linearization on a support),
:mod:`.sources` (gradient sources), :mod:`.search` (where the sparse solver's support comes from: L1, L0 or a warm
start from FMN), :mod:`.support` and :mod:`.gaussian` (the solvers); :mod:`.metrics`, :mod:`.evaluate`,
:mod:`.baselines` and :mod:`.report` build on :mod:`.common`.
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
from .common import AttackResult
from .evaluate import AttackEvaluation, evaluate_attack
from .gaussian import gaussian_attack
from .objective import LinearizedAttackObjective
from .options import STRUCTURES, VARIABLES, VARIANCES, AttackOptions, default_options
from .sources import SampledGradients, SurrogateGradients

__all__ = [
    "gaussian_attack",
    "AttackOptions",
    "default_options",
    "AttackResult",
    "LinearizedAttackObjective",
    "SurrogateGradients",
    "SampledGradients",
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
