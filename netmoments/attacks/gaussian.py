"""Gaussian adversarial attacks through the closed-form moments of the two-stage-linearized network (spec 7).

The attacker picks an input *distribution* ``N(x + delta, Sigma)`` instead of one point. With ``G`` the identity
(``"sparse"``) or a Gaussian blur (``"smooth"``, ``"sparse+smooth"``):

    delta = G v,    Sigma = G diag(w) G^T,    w >= 0 (per-pixel noise variances before the blur).

At the current mean the network is two-stage linearized into ``g(x) = B relu(A x + c1) + c2``; its output mean and
(co)variance under the attack distribution are differentiable functions of ``(v, w)``. For each competing class
``k`` the margin ``M_k`` (label minus ``k`` when untargeted, ``k`` minus target when targeted) is treated as
Gaussian and standardized,

    r_k = (E[M_k] + kappa) / sqrt(Var[M_k] + tau^2),    P(M_k < 0) ~ Phi(-r_k),

and the attack minimizes ``relu(r + Phi^-1(goal))`` with ``r = min_k r_k`` (untargeted: beat the label with the
easiest class) or ``max_k r_k`` (targeted: the target must beat every class), plus L1 penalties handled by
proximal steps (exact zeros: few pixels touched) and optional L2 / total-variation penalties. ``tau`` (the
``temperature``) keeps ``r`` finite for a point attack (``Var = 0``). Success is never judged by this surrogate:
see :func:`netmoments.attacks.evaluate_attack`, which samples the real network.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..affine import AffineReLUAffine
from ..relu import relu_moments
from ._ops import blur, blur_squared, clipped_gaussian_moments, project_l1_box, soft_threshold, total_variation

__all__ = [
    "gaussian_attack",
    "AttackResult",
    "LinearizedAttackObjective",
    "STRUCTURES",
    "VARIABLES",
    "VARIANCES",
    "default_options",
]

STRUCTURES = ("sparse", "smooth", "sparse+smooth")
VARIABLES = ("mean", "noise", "both")
# "none": mean only; "linear": Cov of the best linear predictor of g from x (Stein: Cov[g, x] = B diag(Phi(h)) A Sigma),
# a lower bound on Cov[g] at O(p m n); the rest are AffineReLUAffine.moments methods (O(m^2) Phi2 per image).
VARIANCES = ("none", "linear", "exact", "series", "hybrid")

_STRUCTURE_DEFAULTS = {
    "sparse": dict(blur_sigma=0.0, l1_weight=0.3, l2_weight=0.0, noise_support="mean"),
    "smooth": dict(blur_sigma=1.5, l1_weight=0.0, l2_weight=0.05, noise_support="all"),
    "sparse+smooth": dict(blur_sigma=1.0, l1_weight=0.1, l2_weight=0.0, noise_support="mean"),
}

_COMMON_DEFAULTS = dict(
    variables="both",
    variance="linear",
    steps=100,
    lr=0.05,
    noise_lr=None,
    relinearize_every=20,
    noise_l1_weight=0.0,
    noise_reward=0.1,
    noise_support=None,
    l1_budget=None,
    l2_budget=None,
    tv_weight=0.0,
    noise_scale=0.3,
    init_noise=0.0,
    kappa=1.0,
    temperature=1.0,
    goal=0.99,
    clip_aware=True,
    l1_decay=0.5,
    relu_index=-1,
    series_terms=5,
    seed=0,
    progress=False,
    linearizer=None,
    # the support solver (structure "sparse"; see netmoments.attacks.support)
    solver="auto",
    mean_steps=60,
    support_steps=60,
    max_support=100,
    final_draws=32,
    final_goal=0.9,
    tighten_rounds=1,
    kappa_step=1.0,
)
SOLVERS = ("auto", "support", "dense")


def default_options(structure: str = "sparse") -> dict:
    """The options :func:`gaussian_attack` uses for ``structure`` when none are given (a fresh dict)."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    opts = dict(_COMMON_DEFAULTS)
    opts.update(_STRUCTURE_DEFAULTS[structure])
    return opts


@dataclass
class AttackResult:
    """An attack distribution ``N(clean + delta, Sigma)`` (a point attack has ``Sigma = 0``), clipped to ``[0, 1]``.

    Shapes: ``B`` images of shape ``(C, H, W)``, ``n = C H W``.

    Attributes:
        clean: ``(B, C, H, W)`` the attacked images.
        labels: ``(B,)`` int64 true labels; ``target``: ``(B,)`` int64 or ``None`` (untargeted).
        delta_param: ``(B, n)`` ``v`` with ``delta = G v`` before the pixel box.
        noise_var: ``(B, n)`` ``w``, per-pixel noise variances before the blur (``Sigma = G diag(w) G^T``).
        blur_sigma: std (pixels) of the blur ``G``; 0 means ``G = I``.
        loss_history, success_prob_history: ``(steps, B)`` surrogate loss and surrogate ``Phi(-r)`` per step.
        time_s: wall time of the whole attack (all images); ``n_linearizations``: TSLs computed per image.
        method: ``"gaussian"`` or the baseline's name; ``options``: every option used.
    """

    clean: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor | None
    delta_param: torch.Tensor
    noise_var: torch.Tensor
    blur_sigma: float
    structure: str
    method: str = "gaussian"
    loss_history: torch.Tensor | None = None
    success_prob_history: torch.Tensor | None = None
    time_s: float = 0.0
    time_linearize_s: float = 0.0
    n_linearizations: int = 0
    options: dict = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.clean.shape[1:])

    @property
    def batch_size(self) -> int:
        return self.clean.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """``(B, C, H, W)`` the distribution's mean ``clip(clean + G v, 0, 1)``."""
        delta = blur(self.delta_param, self.image_shape, self.blur_sigma)
        return (self.clean.flatten(1) + delta).clamp(0.0, 1.0).reshape(self.clean.shape)

    @property
    def delta(self) -> torch.Tensor:
        """``(B, C, H, W)`` the mean shift inside the pixel box, ``mean - clean``."""
        return self.mean - self.clean

    @property
    def noise_std(self) -> torch.Tensor:
        """``(B, C, H, W)`` per-pixel marginal noise std ``sqrt(diag(Sigma))`` (before clipping draws)."""
        var = blur_squared(self.noise_var, self.image_shape, self.blur_sigma)
        return var.clamp_min(0.0).sqrt().reshape(self.clean.shape)

    @property
    def is_point(self) -> bool:
        """True when ``Sigma = 0`` (every draw is the mean)."""
        return not bool((self.noise_var > 0).any())

    def covariance(self) -> torch.Tensor:
        """``(B, n, n)`` the full ``Sigma = G diag(w) G^T`` (dense; meant for small checks and plots)."""
        n = self.noise_var.shape[-1]
        factor = torch.diag_embed(self.noise_var.sqrt())  # (B, n, n) diag(sqrt w)
        # G is symmetric, so blurring the columns of diag(sqrt w) gives G diag(sqrt w).
        g_factor = blur(factor.mT, self.image_shape, self.blur_sigma).mT
        cov = g_factor @ g_factor.mT
        return 0.5 * (cov + cov.mT) if n else cov

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, B, C, H, W)`` draws ``clip(mean + G (sqrt(w) * eps), 0, 1)``, ``eps ~ N(0, I)``.

        Without a ``generator`` the draws are seeded by ``options["seed"]`` (so repeated calls agree).
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if generator is None:
            generator = torch.Generator(device=self.clean.device).manual_seed(int(self.options.get("seed", 0)))
        mean = self.mean.flatten(1)
        eps = torch.randn((n, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device)
        noise = blur(eps * self.noise_var.sqrt(), self.image_shape, self.blur_sigma)
        return (mean + noise).clamp(0.0, 1.0).reshape(n, *self.clean.shape)


def _matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``(..., m, n) @ (..., n) -> (..., m)`` written as a row vector times ``matrix^T``.

    On CPU, batched ``matrix @ column`` runs ~10x slower than ``row @ matrix^T`` for a 1024 x 784 matrix (both in
    the forward pass and, through autograd's transposes, in the backward pass); the result is the same.
    """
    return (vector.unsqueeze(-2) @ matrix.mT).squeeze(-2)


def _pixel_moments(clean, v, w, shape, blur_sigma, clip_aware):
    """Mean ``(B, n)`` of the input pixels and the variance vector that multiplies ``(A G)^2``.

    The mean is ``clip(clean + G v, 0, 1)``. With ``clip_aware`` the draws' clipping to ``[0, 1]`` is modelled:
    clipping acts pixel by pixel, so for a diagonal ``Sigma`` (``G = I``) the clipped pixels stay independent and
    their exact means and variances are used; for a blurred ``Sigma`` only the mean is corrected (``w`` stays, an
    upper bound on the clipped variance).
    """
    mean = (clean + blur(v, shape, blur_sigma)).clamp(0.0, 1.0)
    if not clip_aware:
        return mean, w
    diagonal = blur_sigma <= 0
    marginal = w if diagonal else blur_squared(w, shape, blur_sigma)
    clipped_mean, clipped_var = clipped_gaussian_moments(mean, marginal)
    return clipped_mean, (clipped_var if diagonal else w)


class LinearizedAttackObjective:
    """The attack objective for one fixed two-stage linearization (one value of ``A, c1, B, c2`` per image).

    Args:
        surrogate: ``AffineReLUAffine`` with ``A (B, m, n)``, ``c1 (B, m)``, ``B (B, p, m)``, ``c2 (B, p)``.
        clean: ``(B, n)`` flattened clean images in ``[0, 1]``.
        reference: ``(B,)`` int64: the label (untargeted) or the target (targeted).
        targeted: which margin to use (see the module docstring).
        image_shape: ``(C, H, W)`` with ``C H W = n``; ``blur_sigma``: the blur of ``G`` (0: identity).
        variance, kappa, temperature, goal, clip_aware, series_terms: as in :func:`gaussian_attack`.

    Calling it with ``v (B, n)`` and ``w (B, n)`` returns ``(loss (B,), r (B,))``: the per-image hinge
    ``relu(r + Phi^-1(goal))`` and the standardized margin ``r`` (surrogate success probability ``Phi(-r)``).
    """

    def __init__(
        self,
        surrogate: AffineReLUAffine,
        clean: torch.Tensor,
        reference: torch.Tensor,
        targeted: bool,
        image_shape: tuple[int, int, int],
        blur_sigma: float = 0.0,
        variance: str = "linear",
        kappa: float = 0.0,
        temperature: float = 1.0,
        goal: float = 0.99,
        clip_aware: bool = True,
        series_terms: int = 5,
    ):
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.net = surrogate
        self.clean = clean
        self.reference = reference
        self.targeted = targeted
        self.shape = image_shape
        self.blur_sigma = float(blur_sigma)
        self.variance = variance
        self.kappa = float(kappa)
        self.temperature = float(temperature)
        self.z_goal = float(torch.special.ndtri(torch.tensor(goal, dtype=torch.float64)))
        self.clip_aware = clip_aware
        self.series_terms = series_terms
        self.diagonal = self.blur_sigma <= 0
        # Every step multiplies by A; a strided A (e.g. a Jacobian built column-wise) makes bmm ~3x slower.
        A = surrogate.A.contiguous()
        self.A = A
        if self.diagonal:
            self.AG = A
        else:
            # A G (G symmetric): blur every row of A as an image; Sigma = G diag(w) G^T gives Var[A x] = (A G)^2 w.
            self.AG = blur(A, image_shape, self.blur_sigma)
        self.AG2 = self.AG * self.AG
        # (B diag(Phi(h))) @ (A G) runs ~5x faster on CPU with the right operand a transposed view of a
        # contiguous (n, m) copy than with (A G) itself; one copy per linearization.
        self.AG_t = self.AG.mT.contiguous()

    def pixel_moments(self, v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel mean ``(B, n)`` of the (clip-aware) input and the variance vector that scales ``(A G)^2``."""
        return _pixel_moments(self.clean, v, w, self.shape, self.blur_sigma, self.clip_aware)

    def output_moments(self, v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``E[g]`` ``(B, p)`` and ``Cov[g]`` ``(B, p, p)`` (zeros for ``variance="none"``)."""
        net = self.net
        mean, var_vec = self.pixel_moments(v, w)
        if self.variance in ("exact", "series", "hybrid"):
            # G diag(w) G^T without a square root (its gradient at w = 0, e.g. pixels without noise, is infinite)
            cov_in = torch.diag_embed(var_vec.clamp_min(0.0))
            if not self.diagonal:
                cov_in = blur(blur(cov_in, self.shape, self.blur_sigma).mT, self.shape, self.blur_sigma).mT
            return net.moments(mean, 0.5 * (cov_in + cov_in.mT), method=self.variance, output="cov",
                               terms=self.series_terms)
        y_mean = _matvec(self.A, mean) + net.c1
        y_var = _matvec(self.AG2, var_vec)
        q_mean, _ = relu_moments(y_mean, y_var)
        g_mean = _matvec(net.B, q_mean) + net.c2
        p = g_mean.shape[-1]
        if self.variance == "none":
            return g_mean, g_mean.new_zeros(*g_mean.shape, p)
        # Stein: dE[q_i]/dmu_i = P(y_i > 0) = Phi(mu_i / sigma_i) (a step at sigma_i = 0).
        positive = y_var > 0
        std = torch.where(positive, y_var, torch.ones_like(y_var)).sqrt()
        active = torch.where(positive, torch.special.ndtr(y_mean / std), (y_mean > 0).to(y_mean.dtype))
        jac = (net.B * active.unsqueeze(-2)) @ self.AG_t.mT  # (B, p, n) = B diag(Phi(h)) A G
        cov = (jac * var_vec.unsqueeze(-2)) @ jac.mT
        return g_mean, 0.5 * (cov + cov.mT)

    def margins(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Standardized margins ``r_k`` ``(B, p)``; the reference class gets ``+inf`` (untargeted) / ``-inf``."""
        g_mean, g_cov = self.output_moments(v, w)
        ref = self.reference.unsqueeze(-1)
        g_ref = g_mean.gather(-1, ref)
        diff = g_mean - g_ref if self.targeted else g_ref - g_mean
        var_ref = torch.diagonal(g_cov, dim1=-2, dim2=-1).gather(-1, ref)
        cross = g_cov.gather(-2, ref.unsqueeze(-1).expand(-1, 1, g_cov.shape[-1])).squeeze(-2)
        pair_var = (var_ref + torch.diagonal(g_cov, dim1=-2, dim2=-1) - 2.0 * cross).clamp_min(0.0)
        r = (diff + self.kappa) / (pair_var + self.temperature**2).sqrt()
        is_ref = torch.zeros_like(r, dtype=torch.bool).scatter_(-1, ref, True)
        fill = float("-inf") if self.targeted else float("inf")
        return r.masked_fill(is_ref, fill)

    def __call__(self, v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r_all = self.margins(v, w)
        r = r_all.amax(-1) if self.targeted else r_all.amin(-1)
        return torch.relu(r + self.z_goal), r


# --------------------------------------------------------------------------------------------------------------
# validation


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_float(name, value, *, positive=False, allow_none=False, upper=None, open_upper=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if upper is not None and (value >= upper if open_upper else value > upper):
        raise ValueError(f"{name} must be {'<' if open_upper else '<='} {upper}, got {value!r}")


def _resolve_options(structure: str, options: dict) -> dict:
    if not isinstance(structure, str) or structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    opts = default_options(structure)
    unknown = sorted(set(options) - set(opts))
    if unknown:
        raise TypeError(f"gaussian_attack got unknown option(s) {unknown}; valid options: {sorted(opts)}")
    opts.update(options)
    if opts["variables"] not in VARIABLES:
        raise ValueError(f"variables must be one of {VARIABLES}, got {opts['variables']!r}")
    if opts["variance"] not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {opts['variance']!r}")
    _check_int("steps", opts["steps"], 1)
    _check_int("relinearize_every", opts["relinearize_every"], 1)
    _check_int("series_terms", opts["series_terms"], 1)
    _check_int("seed", opts["seed"], 0)
    if isinstance(opts["relu_index"], bool) or not isinstance(opts["relu_index"], int):
        raise TypeError(f"relu_index must be an int, got {opts['relu_index']!r}")
    for name in ("lr", "noise_scale", "temperature"):
        _check_float(name, opts[name], positive=True)
    for name in ("l1_weight", "l2_weight", "tv_weight", "init_noise", "kappa", "blur_sigma"):
        _check_float(name, opts[name])
    _check_float("l1_decay", opts["l1_decay"], positive=True, upper=1.0)
    for name in ("noise_lr", "l1_budget", "l2_budget"):
        _check_float(name, opts[name], positive=True, allow_none=True)
    _check_float("noise_l1_weight", opts["noise_l1_weight"])
    _check_float("noise_reward", opts["noise_reward"])
    if opts["noise_support"] not in ("mean", "all"):
        raise ValueError(f"noise_support must be 'mean' or 'all', got {opts['noise_support']!r}")
    if opts["variables"] == "noise" and opts["noise_support"] == "mean":
        # there is no mean shift to share a support with: let the noise go anywhere, at a price
        opts["noise_support"] = "all"
        if "noise_l1_weight" not in options:
            opts["noise_l1_weight"] = opts["l1_weight"]
        if "noise_reward" not in options:
            opts["noise_reward"] = 0.0
    _check_float("goal", opts["goal"], positive=True, upper=1.0, open_upper=True)
    if opts["init_noise"] > opts["noise_scale"]:
        raise ValueError(f"init_noise ({opts['init_noise']}) must not exceed noise_scale ({opts['noise_scale']})")
    if structure != "sparse" and opts["blur_sigma"] <= 0:
        raise ValueError(f"blur_sigma must be > 0 for structure {structure!r} (it defines the smooth operator G)")
    if opts["l1_budget"] is not None and opts["blur_sigma"] > 0:
        # the box [0, 1] is a box on v only when G = I; keep the projection exact rather than approximate
        raise ValueError("l1_budget needs blur_sigma = 0 (structure 'sparse'); use l1_weight with a blur")
    if opts["linearizer"] is not None and not callable(opts["linearizer"]):
        raise TypeError(f"linearizer must be callable (model, point) -> AffineReLUAffine, got {opts['linearizer']!r}")
    if not isinstance(opts["clip_aware"], bool) or not isinstance(opts["progress"], bool):
        raise TypeError("clip_aware and progress must be bools")
    if opts["noise_lr"] is None:
        opts["noise_lr"] = opts["lr"]
    if opts["solver"] not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {opts['solver']!r}")
    if opts["solver"] == "auto":
        opts["solver"] = "support" if structure == "sparse" and opts["linearizer"] is None else "dense"
    if opts["solver"] == "support":
        if opts["blur_sigma"] > 0:
            raise ValueError("solver='support' needs blur_sigma = 0 (the sparse structure); use solver='dense'")
        if opts["linearizer"] is not None or opts["l1_budget"] is not None or opts["l2_budget"] is not None:
            raise ValueError("solver='support' supports neither linearizer nor l1_budget/l2_budget; "
                             "use solver='dense'")
    _check_int("mean_steps", opts["mean_steps"], 0)
    _check_int("support_steps", opts["support_steps"], 1)
    _check_int("max_support", opts["max_support"], 1)
    _check_int("final_draws", opts["final_draws"], 0)
    _check_int("tighten_rounds", opts["tighten_rounds"], 0)
    _check_float("final_goal", opts["final_goal"], positive=True, upper=1.0)
    _check_float("kappa_step", opts["kappa_step"])
    if opts["variance"] == "none" and opts["variables"] != "mean" and opts["noise_reward"] > 0 and \
            "noise_reward" not in options:
        # the surrogate cannot see the noise without a variance: a reward would push it to its cap unchecked
        opts["noise_reward"] = 0.0
    return opts


def _check_device(model, images):
    """``model``'s parameters and ``images`` must share a device (say which is where instead of a matmul error)."""
    param = next(iter(model.parameters()), None)
    if param is not None and param.device != images.device:
        raise ValueError(f"images are on device {images.device} but model's parameters are on {param.device}; "
                         "move one of them (e.g. images.to(next(model.parameters()).device))")


def _check_batch(images, labels, target, num_classes=None):
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must have a floating dtype, got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image")
    if images.device.type == "meta":
        raise ValueError("images are on the meta device (no data); pass real tensors")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ValueError("images must be finite and lie in the pixel box [0, 1]")
    labels = _as_class_tensor("labels", labels, images.shape[0], images.device, num_classes)
    if target is not None:
        target = _as_class_tensor("target", target, images.shape[0], images.device, num_classes)
        if (target == labels).any():
            bad = int((target == labels).nonzero()[0, 0])
            raise ValueError(f"target equals the true label for image {bad}; a targeted attack needs target != label")
    return labels, target


def _as_class_tensor(name, value, batch, device, num_classes):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an integer tensor, got a bool")
    if isinstance(value, int):
        value = torch.full((batch,), value, dtype=torch.int64, device=device)
    elif isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {value.dtype}")
        if value.dim() == 0:
            value = value.expand(batch)
        if value.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},) (one per image), got {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} is on device {value.device} but images are on {device}; put them together")
        value = value.to(dtype=torch.int64)
    else:
        raise TypeError(f"{name} must be an int or an integer tensor, got {type(value).__name__}")
    if num_classes is not None and ((value < 0).any() or (value >= num_classes).any()):
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}], got values from {int(value.min())} to "
                         f"{int(value.max())}")
    return value


def _default_linearizer(relu_index):
    from ..linearize import two_stage_linearize

    def linearize(model, point):
        return two_stage_linearize(model, point, relu_index=relu_index)

    return linearize


class _Adam:
    """Elementwise Adam whose step also exposes its per-coordinate step size (for the proximal maps)."""

    def __init__(self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    def step(self, param: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (the gradient-stepped parameter, the per-coordinate step size lr / (sqrt(v_hat) + eps))."""
        b1, b2 = self.betas
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        step = self.lr / (v_hat.sqrt() + self.eps)
        return param - step * m_hat, step


def gaussian_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    target=None,
    structure: str = "sparse",
    **options,
) -> AttackResult:
    """Find an adversarial Gaussian ``N(x + delta, Sigma)`` per image (spec section 7).

    Args:
        model: the real piecewise-linear classifier (e.g. :func:`netmoments.models.load_lenet`), eval mode.
        images: ``(B, C, H, W)`` float in ``[0, 1]``; the attack runs on their device and dtype.
        labels: ``(B,)`` int64 true labels.
        target: ``None`` (untargeted), an int, or ``(B,)`` int64 target classes (each ``!= label``).
        structure: ``"sparse"`` (``G = I``, L1 on ``v``, noise only where ``v != 0``), ``"smooth"`` (``G`` a
            Gaussian blur, L2 energy penalty, noise anywhere) or ``"sparse+smooth"`` (a few blurred blobs: blur
            plus L1).

    Options (defaults from :func:`default_options`):
        variables: ``"mean"`` (only ``delta``), ``"noise"`` (only ``Sigma``, mean = clean) or ``"both"``.
        variance: how ``Var[M_k]`` enters: ``"none"``, ``"linear"`` (Stein lower bound, cheap), ``"exact"``,
            ``"series"`` or ``"hybrid"`` (the full hidden covariance of ``AffineReLUAffine.moments``).
        steps, lr, noise_lr: Adam steps and step sizes for ``v`` and for the noise stds ``s = sqrt(w)`` (both in
            pixel units; ``noise_lr`` defaults to ``lr``).
        relinearize_every: recompute the TSL at the current (clip-aware) mean every this many steps.
        l1_weight: L1 penalty weight on ``v`` (proximal steps: exact zeros, so few pixels are touched).
        noise_l1_weight, noise_reward: a price and a reward per unit of noise std ``sqrt(w)``. By default the noise
            is *rewarded*: the attack looks for the widest distribution (the most diverse adversarial draws)
            whose success probability still meets ``goal``, and the variance in ``r`` is what holds it back.
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
        seed: seeds :meth:`AttackResult.sample`'s default generator (the optimization itself is deterministic).
        solver: ``"support"`` (default for ``"sparse"``: :mod:`netmoments.attacks.support`, a support found by
            ``mean_steps`` proximal steps on the real margin, then ``support_steps`` steps on the distribution
            over at most ``max_support`` pixels, then a ``final_draws``-draw check on the real network that
            raises ``kappa`` by ``kappa_step`` for images below ``final_goal``, ``tighten_rounds`` times at most)
            or ``"dense"`` (the full ``m x n`` linearization every ``relinearize_every`` of ``steps`` steps; the
            only solver for blurred structures).
        progress: show a tqdm bar over steps.

    Returns:
        :class:`AttackResult` with ``.mean``, ``.sample(n)``, ``.delta_param``, ``.noise_var``, histories and times.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    opts = _resolve_options(structure, options)
    labels, target = _check_batch(images, labels, target)
    _check_device(model, images)
    start_time = time.perf_counter()
    with torch.no_grad():
        num_classes = model(images[:1]).shape[-1]
    labels, target = _check_batch(images, labels, target, num_classes)
    if opts["solver"] == "support":
        from .support import support_attack

        return support_attack(model, images, labels, target, opts, _Adam, LinearizedAttackObjective, AttackResult)
    linearize = opts["linearizer"] or _default_linearizer(opts["relu_index"])

    shape = tuple(images.shape[1:])
    clean = images.detach().flatten(1)
    bsz, n = clean.shape
    diagonal = opts["blur_sigma"] <= 0
    targeted = target is not None
    reference = target if targeted else labels
    use_mean = opts["variables"] in ("mean", "both")
    use_noise = opts["variables"] in ("noise", "both")
    v = torch.zeros_like(clean)
    # The noise is optimized as per-pixel stds s (w = s^2): the L1 penalty then prices a unit of noise like a
    # unit of mean shift, and the clip-aware mean (which grows like sqrt(w) at the box edge) stays Lipschitz.
    s = torch.full_like(clean, opts["init_noise"] if use_noise else 0.0)
    adam_v = _Adam(v, opts["lr"])
    adam_s = _Adam(s, opts["noise_lr"])
    low, high = -clean, 1.0 - clean
    budget = None if opts["l1_budget"] is None else torch.full((bsz,), float(opts["l1_budget"]), dtype=clean.dtype,
                                                               device=clean.device)
    loss_hist = torch.zeros(opts["steps"], bsz, dtype=clean.dtype, device=clean.device)
    prob_hist = torch.zeros_like(loss_hist)
    lin_time = 0.0
    n_lin = 0
    objective = None
    steps = range(opts["steps"])
    if opts["progress"]:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"gaussian attack ({structure})", unit="step")
    l1_weight = torch.full((bsz, 1), float(opts["l1_weight"]), dtype=clean.dtype, device=clean.device)
    for step in steps:
        if step % opts["relinearize_every"] == 0:
            if step > 0 and opts["l1_decay"] < 1:
                # continuation per image (as in EAD / C&W's constant search): an image whose surrogate success
                # is still below 1/2 gets a cheaper L1 price, so hard images may touch more pixels
                behind = (prob_hist[step - 1] < 0.5).unsqueeze(-1)
                l1_weight = torch.where(behind, l1_weight * opts["l1_decay"], l1_weight)
            t0 = time.perf_counter()
            with torch.no_grad():
                point, _ = _pixel_moments(clean, v, s * s, shape, opts["blur_sigma"], opts["clip_aware"])
                surrogate = linearize(model, point.reshape(bsz, *shape))
            objective = LinearizedAttackObjective(
                surrogate, clean, reference, targeted, shape, opts["blur_sigma"], opts["variance"],
                opts["kappa"], opts["temperature"], opts["goal"], opts["clip_aware"], opts["series_terms"],
            )
            lin_time += time.perf_counter() - t0
            n_lin += 1
        v_var = v.clone().requires_grad_(use_mean)
        s_var = s.clone().requires_grad_(use_noise)
        loss, r = objective(v_var, s_var * s_var)
        total = loss.sum()
        if opts["l2_weight"] > 0 or opts["tv_weight"] > 0:
            delta = blur(v_var, shape, opts["blur_sigma"])
            if opts["l2_weight"] > 0:
                total = total + 0.5 * opts["l2_weight"] * (delta * delta).sum()
            if opts["tv_weight"] > 0:
                total = total + opts["tv_weight"] * total_variation(delta, shape).sum()
        params = [p for p, used in ((v_var, use_mean), (s_var, use_noise)) if used]
        grads = torch.autograd.grad(total, params)
        loss_hist[step] = loss.detach()
        prob_hist[step] = torch.special.ndtr(-r.detach())
        with torch.no_grad():
            grads = list(grads)
            if use_mean:
                g_v = grads.pop(0)
                v, lr_v = adam_v.step(v, g_v)
                if opts["l1_weight"] > 0:
                    v = soft_threshold(v, lr_v * l1_weight)
                if diagonal:
                    v = torch.minimum(torch.maximum(v, low), high)
                if budget is not None:
                    v = project_l1_box(v, budget, low, high)
                if opts["l2_budget"] is not None:
                    norm = blur(v, shape, opts["blur_sigma"]).norm(dim=-1, keepdim=True)
                    v = v * (opts["l2_budget"] / norm.clamp_min(1e-30)).clamp(max=1.0)
            if use_noise:
                g_s = grads.pop(0)
                s, lr_s = adam_s.step(s, g_s)
                # prox of (noise_l1_weight - noise_reward) * sum(s) on s >= 0: a shift, then the cap
                s = s - lr_s * (opts["noise_l1_weight"] - opts["noise_reward"])
                s = s.clamp(0.0, opts["noise_scale"])
                if opts["noise_support"] == "mean":
                    s = torch.where(v != 0, s, torch.zeros_like(s))
    elapsed = time.perf_counter() - start_time
    return AttackResult(
        clean=images.detach().clone(),
        labels=labels,
        target=target,
        delta_param=v.detach(),
        noise_var=(s * s).detach(),
        blur_sigma=float(opts["blur_sigma"]),
        structure=structure,
        method="gaussian",
        loss_history=loss_hist,
        success_prob_history=prob_hist,
        time_s=elapsed,
        time_linearize_s=lin_time,
        n_linearizations=n_lin,
        options={k: val for k, val in opts.items() if k != "linearizer"},
    )
