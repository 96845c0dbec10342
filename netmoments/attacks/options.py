"""The Gaussian attack's settings: one frozen, checked :class:`AttackOptions` instead of a dict of keywords."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import InitVar, dataclass, field
from typing import Callable

from .._validation import renamed
from .common import check_float, check_int

__all__ = ["AttackOptions", "default_options", "STRUCTURES", "VARIABLES", "VARIANCES", "SOLVERS"]

#: The attack structures :class:`AttackOptions` accepts: sparse, smooth, or both.
STRUCTURES = ("sparse", "smooth", "sparse+smooth")
#: What the attack optimizes, the mean shift, the noise covariance, or both.
VARIABLES = ("mean", "noise", "both")
# "none": mean only; "linear": Cov of the best linear predictor of g from x (Stein: Cov[g, x] = B diag(Phi(h)) A Sigma),
# a lower bound on Cov[g] at O(p m n); the rest are AffineReLUAffine.moments methods (O(m^2) Phi2 per image).
#: How the objective accounts for the output variance (``"none"`` for the mean only).
VARIANCES = ("none", "linear", "exact", "series", "hybrid")
#: The solver choices, on a support of pixels, dense over every pixel, or picked automatically.
SOLVERS = ("auto", "support", "dense")
#: How the support solver's phase 1 picks the pixels (:mod:`netmoments.attacks.search`).
SEARCHES = ("l1", "l0", "fmn")
#: The settings each support search takes when they are left ``None``: tuned on 96 training digits
#: (``book/data/attack_tuning_search.json``; the L1 search's L1 price is the structure's default).
SEARCH_DEFAULTS = {
    "l1": {},
    "l0": dict(search_radius=80.0, search_step=16.0, search_gamma=0.2, l1_weight=0.0),
    "fmn": dict(search_step=1.0, search_gamma=0.2, l1_weight=0.0),
}

_STRUCTURE_DEFAULTS = {
    "sparse": dict(blur_sigma=0.0, l1_weight=0.3, l2_weight=0.0, noise_support="mean"),
    "smooth": dict(blur_sigma=1.5, l1_weight=0.0, l2_weight=0.05, noise_support="all"),
    "sparse+smooth": dict(blur_sigma=1.0, l1_weight=0.1, l2_weight=0.0, noise_support="mean"),
}
# the noise's price and reward when the noise shares the mean's support (see AttackOptions._derive_noise_terms)
_NOISE_L1_WEIGHT, _NOISE_REWARD = 0.0, 0.1


def default_options(structure: str = "sparse") -> dict:
    """The options :func:`gaussian_attack` uses for ``structure`` when none are given (a fresh dict).

    ``noise_lr`` is ``None`` (it follows ``lr``) and ``solver`` is ``"auto"``, as before they are resolved.
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    names = [f.name for f in dataclasses.fields(AttackOptions) if f.init and f.name != "structure"]
    opts = {name: AttackOptions.__dataclass_fields__[name].default for name in names}
    opts.update(noise_l1_weight=_NOISE_L1_WEIGHT, noise_reward=_NOISE_REWARD, **_STRUCTURE_DEFAULTS[structure])
    return opts


@dataclass(frozen=True)
class AttackOptions:
    """Every setting of :func:`~netmoments.attacks.gaussian_attack`, checked and resolved when made.

    A field left ``None`` where a number is expected is derived from the others: ``blur_sigma``, ``l1_weight``,
    ``l2_weight`` and ``noise_support`` from ``structure`` (:func:`default_options`), ``noise_lr`` from ``lr``,
    ``noise_l1_weight`` and ``noise_reward`` as described below; ``solver="auto"`` becomes ``"support"`` or
    ``"dense"``. Use :meth:`replace` (not :func:`dataclasses.replace`) to change a field so that the derived ones
    follow.

    Fields:
        structure: ``"sparse"`` (``G = I``, L1 on ``v``, noise only where ``v != 0``), ``"smooth"`` (``G`` a
            Gaussian blur, L2 energy penalty, noise anywhere) or ``"sparse+smooth"`` (a few blurred blobs).
        variables: ``"mean"`` (only ``delta``), ``"noise"`` (only ``Sigma``, mean = clean) or ``"both"``.
        method: the formula by which ``Var[M_k]`` enters the objective at *every step* of the optimization:
            ``"none"``, ``"linear"`` (the default: Stein's lower bound, cheap), ``"exact"``, ``"series"`` or
            ``"hybrid"`` (the ``method`` of ``AffineReLUAffine.moments``, the full hidden covariance; on LeNet
            ``"exact"`` costs about 25 times ``"linear"`` per digit). The support solver's phase 1 and final check
            use no variance formula (they run the real network);
            :func:`~netmoments.attacks.support.surrogate_check` scores a final distribution with any formula (its
            own ``method``). Formerly
            ``variance=``, still accepted (and readable as ``.variance``) with a ``DeprecationWarning``.
        steps, lr, noise_lr: Adam steps and step sizes for ``v`` and for the noise stds ``s = sqrt(w)`` (both in
            pixel units; ``noise_lr`` defaults to ``lr``).
        relinearize_every: recompute the TSL at the current (clip-aware) mean every this many steps.
        l1_weight: L1 penalty weight on ``v`` (proximal steps: exact zeros, so few pixels are touched).
        noise_l1_weight, noise_reward: a price and a reward per unit of noise std ``sqrt(w)`` (default 0 and 0.1).
            The noise is *rewarded*: the attack looks for the widest distribution (the most diverse adversarial
            draws) whose success probability still meets ``goal``, and the variance in ``r`` holds it back. With
            ``method="none"`` the surrogate cannot see the noise, so the reward defaults to 0.
        noise_support: ``"mean"`` (noise only on pixels the mean shift touches: sparse variants) or ``"all"``.
            With ``variables="noise"`` it is ``"all"``, priced by ``noise_l1_weight = l1_weight``, no reward.
        l1_budget: hard budget ``||delta||_1 <= l1_budget`` (sparse only; exact projection with the box).
        l2_weight: penalty ``l2_weight ||delta||^2 / 2``; l2_budget: hard budget ``||delta||_2 <= l2_budget``.
        tv_weight: penalty on the total variation of ``delta``.
        l1_decay: at each re-linearization an image whose surrogate success probability is below 1/2 has its
            L1 weight multiplied by this (1 keeps the weight fixed).
        blur_sigma: std in pixels of the blur ``G`` (0 for ``"sparse"``).
        noise_scale: cap on the per-pixel noise std ``sqrt(w)``; init_noise: its starting value.
        kappa, temperature, goal: margin offset, the ``T`` in ``r`` and the surrogate success probability at which
            the hinge stops pushing.
        clip_aware: feed the surrogate the exact moments of the clipped pixels (draws are clipped to [0, 1]).
        relu_index, linearizer: which ReLU the TSL splits at, or a callable ``(model, point) -> AffineReLUAffine``.
        series_terms: terms of the ``"series"`` variance.
        seed: seeds :meth:`AttackResult.sample`'s default generator and the support solver's final check.
        progress: show a tqdm bar over steps (dense solver).
        solver: ``"support"`` (default for ``"sparse"``: :mod:`netmoments.attacks.support`, a support found by
            ``mean_steps`` proximal steps on the real margin, then ``support_steps`` steps on the distribution
            over at most ``max_support`` pixels, then a ``final_draws``-draw check on the real network that
            raises ``kappa`` by ``kappa_step`` for images below ``final_goal``, ``tighten_rounds`` times at most)
            or ``"dense"`` (the full ``m x n`` linearization every ``relinearize_every`` of ``steps`` steps; the
            only solver for blurred structures).
        support_search: the support solver's phase 1 (:mod:`netmoments.attacks.search`): ``"l1"`` (proximal L1
            steps, the default), ``"l0"`` (steps projected onto an L0 ball whose radius adapts per image) or
            ``"fmn"`` (a warm start from Foolbox's L0 fast minimum-norm attack). Each takes ``mean_steps`` steps.
            ``search_radius`` is the L0 search's radius before its first adaptation (the first projection uses
            it grown or shrunk once); ``search_step`` the first step's length (``"l0"``: the L2 norm of the
            normalized gradient step, in pixel units, decaying to 0 on a cosine schedule; ``"fmn"``: Foolbox's
            ``max_stepsize``); ``search_gamma`` the first step's relative change of the radius (``"l0"``: decaying
            to 0; ``"fmn"``: Foolbox's ``gamma``). Left ``None``, they and ``l1_weight`` take the values tuned on
            training digits for the chosen search (:data:`SEARCH_DEFAULTS`; ``"l0"`` and ``"fmn"`` keep no L1
            price on the support they find).
    """

    structure: str = "sparse"
    variables: str = "both"
    method: str = "linear"
    steps: int = 100
    lr: float = 0.05
    noise_lr: float | None = None
    relinearize_every: int = 20
    noise_l1_weight: float | None = None
    noise_reward: float | None = None
    noise_support: str | None = None
    l1_budget: float | None = None
    l2_budget: float | None = None
    tv_weight: float = 0.0
    noise_scale: float = 0.3
    init_noise: float = 0.0
    kappa: float = 1.0
    temperature: float = 1.0
    goal: float = 0.99
    clip_aware: bool = True
    l1_decay: float = 0.5
    relu_index: int = -1
    series_terms: int = 5
    seed: int = 0
    progress: bool = False
    linearizer: Callable | None = None
    solver: str = "auto"
    mean_steps: int = 60
    support_steps: int = 60
    max_support: int = 100
    final_draws: int = 32
    final_goal: float = 0.9
    tighten_rounds: int = 1
    kappa_step: float = 1.0
    support_search: str = "l1"
    search_radius: float | None = None
    search_step: float | None = None
    search_gamma: float | None = None
    blur_sigma: float | None = None
    l1_weight: float | None = None
    l2_weight: float | None = None
    # deprecated name of ``method`` (accepted by the constructor only; see the ``variance`` property below)
    variance: InitVar[str | None] = None
    # the fields as given, so that replace() derives the None ones afresh
    _given: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self, variance=None):
        if variance is not None:
            self._set("method", renamed("AttackOptions", "variance", "method", variance, self.method, "linear",
                                        stacklevel=4))
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        self._set("_given", given)
        if not isinstance(self.structure, str) or self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        if self.support_search not in SEARCHES:
            raise ValueError(f"support_search must be one of {SEARCHES}, got {self.support_search!r}")
        for name, value in {**_STRUCTURE_DEFAULTS[self.structure], **SEARCH_DEFAULTS[self.support_search]}.items():
            if getattr(self, name) is None:
                self._set(name, value)
        self._check_choices()
        self._derive_noise_terms()
        self._check_numbers()
        self._check_combinations()
        if self.noise_lr is None:
            self._set("noise_lr", self.lr)
        self._resolve_solver()

    @classmethod
    def from_kwargs(cls, structure: str = "sparse", **options) -> AttackOptions:
        """``AttackOptions(structure=structure, **options)`` with a TypeError naming every unknown option."""
        if not isinstance(structure, str) or structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        if options.get("variance") is not None:
            options["method"] = renamed("gaussian_attack", "variance", "method", options.pop("variance"),
                                        options.get("method", "linear"), "linear", stacklevel=5)
        options.pop("variance", None)
        valid = sorted(default_options(structure))
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"gaussian_attack got unknown option(s) {unknown}; valid options: {valid}")
        return cls(structure=structure, **options)

    def replace(self, **changes) -> AttackOptions:
        """A new instance with ``changes`` applied to the fields as first given (derived fields follow)."""
        return type(self).from_kwargs(**{**self._given, **changes})

    def as_dict(self) -> dict:
        """Every resolved option but ``structure`` and ``linearizer``: what an :class:`AttackResult` records."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.init and f.name not in ("structure", "linearizer")}

    # ------------------------------------------------------------------------------------------- resolution

    def _set(self, name, value):
        # the instance is frozen for its users; only resolution, while it is being made, fills fields in
        object.__setattr__(self, name, value)

    def _check_choices(self):
        if self.variables not in VARIABLES:
            raise ValueError(f"variables must be one of {VARIABLES}, got {self.variables!r}")
        if self.method not in VARIANCES:
            raise ValueError(f"method must be one of {VARIANCES}, got {self.method!r}")
        if self.noise_support not in ("mean", "all"):
            raise ValueError(f"noise_support must be 'mean' or 'all', got {self.noise_support!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.linearizer is not None and not callable(self.linearizer):
            raise TypeError(f"linearizer must be callable (model, point) -> AffineReLUAffine, got {self.linearizer!r}")
        if not isinstance(self.clip_aware, bool) or not isinstance(self.progress, bool):
            raise TypeError("clip_aware and progress must be bools")
        if isinstance(self.relu_index, bool) or not isinstance(self.relu_index, int):
            raise TypeError(f"relu_index must be an int, got {self.relu_index!r}")

    def _derive_noise_terms(self):
        # With variables="noise" there is no mean shift to share a support with: the noise may go anywhere, and
        # pays the L1 price instead of being rewarded.
        noise_alone = self.variables == "noise" and self.noise_support == "mean"
        if noise_alone:
            self._set("noise_support", "all")
        if self.noise_l1_weight is None:
            self._set("noise_l1_weight", self.l1_weight if noise_alone else _NOISE_L1_WEIGHT)
        if self.noise_reward is None:
            # without a variance the surrogate cannot see the noise: a reward would push it to its cap unchecked
            blind = self.method == "none" and self.variables != "mean"
            self._set("noise_reward", 0.0 if noise_alone or blind else _NOISE_REWARD)

    def _check_numbers(self):
        for name in ("steps", "relinearize_every", "series_terms", "support_steps", "max_support"):
            check_int(name, getattr(self, name), 1)
        for name in ("seed", "mean_steps", "final_draws", "tighten_rounds"):
            check_int(name, getattr(self, name), 0)
        for name in ("lr", "noise_scale", "temperature"):
            check_float(name, getattr(self, name), positive=True)
        for name in ("l1_weight", "l2_weight", "tv_weight", "init_noise", "kappa", "blur_sigma", "noise_l1_weight",
                     "noise_reward", "kappa_step"):
            check_float(name, getattr(self, name))
        for name in ("noise_lr", "l1_budget", "l2_budget"):
            check_float(name, getattr(self, name), positive=True, allow_none=True)
        check_float("l1_decay", self.l1_decay, positive=True, upper=1.0)
        for name in ("search_step", "search_radius"):
            check_float(name, getattr(self, name), positive=True, allow_none=True)
        check_float("search_gamma", self.search_gamma, upper=1.0, open_upper=True, allow_none=True)
        check_float("goal", self.goal, positive=True, upper=1.0, open_upper=True)
        check_float("final_goal", self.final_goal, positive=True, upper=1.0)

    def _check_combinations(self):
        if self.init_noise > self.noise_scale:
            raise ValueError(f"init_noise ({self.init_noise}) must not exceed noise_scale ({self.noise_scale})")
        if self.structure != "sparse" and self.blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be > 0 for structure {self.structure!r} (it defines the smooth "
                             "operator G)")
        if self.l1_budget is not None and self.blur_sigma > 0:
            # the box [0, 1] is a box on v only when G = I; keep the projection exact rather than approximate
            raise ValueError("l1_budget needs blur_sigma = 0 (structure 'sparse'); use l1_weight with a blur")

    def _resolve_solver(self):
        if self.solver == "auto":
            self._set("solver", "support" if self.structure == "sparse" and self.linearizer is None else "dense")
        if self.support_search != "l1" and self.solver != "support":
            raise ValueError(f"support_search={self.support_search!r} is a setting of the support solver (sparse "
                             f"structure); these options resolve to solver={self.solver!r}")
        if self.solver == "support":
            if self.blur_sigma > 0:
                raise ValueError("solver='support' needs blur_sigma = 0 (the sparse structure); use solver='dense'")
            if self.linearizer is not None or self.l1_budget is not None or self.l2_budget is not None:
                raise ValueError("solver='support' supports neither linearizer nor l1_budget/l2_budget; "
                                 "use solver='dense'")


def _deprecated_variance(self) -> str:
    """Deprecated name of :attr:`AttackOptions.method`."""
    warnings.warn("AttackOptions.variance is deprecated, use .method instead", DeprecationWarning, stacklevel=2)
    return self.method


# after the dataclass is made: its __init__ keeps ``variance=None`` as the deprecated keyword's default
AttackOptions.variance = property(_deprecated_variance)
