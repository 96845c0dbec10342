"""What every attack shares: the result class, the input checks and the margin.

Nothing here knows about a particular attack; every other module of :mod:`netmoments.attacks` may import it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import InitVar, dataclass, field

import torch
from torch import nn

from ._ops import blur, blur_squared

__all__ = [
    "AttackResult",
    "margin",
    "hinge",
    "goal_z",
    "check_model",
    "check_images",
    "check_device",
    "check_batch",
    "as_class_tensor",
    "prepare_batch",
    "check_int",
    "check_float",
    "positive",
]


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
        loss_history: ``(steps, B)`` surrogate loss per step.
        success_prob_history: ``(steps, B)`` surrogate ``Phi(-r)`` per step.
        time_s: wall time of the whole attack (all images); ``n_linearizations``: TSLs computed per image.
        attack: ``"gaussian"`` or the baseline's name (formerly ``method``, still accepted by the constructor and
            readable as ``.method`` with a ``DeprecationWarning``; ``method`` now names a covariance formula);
        options: every option used.
    """

    clean: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor | None
    delta_param: torch.Tensor
    noise_var: torch.Tensor
    blur_sigma: float
    structure: str
    attack: str = "gaussian"
    loss_history: torch.Tensor | None = None
    success_prob_history: torch.Tensor | None = None
    time_s: float = 0.0
    time_linearize_s: float = 0.0
    n_linearizations: int = 0
    options: dict = field(default_factory=dict)
    method: InitVar[str | None] = None  # deprecated name of ``attack``; see the ``method`` property below

    def __post_init__(self, method=None):
        if method is not None:
            from .._validation import renamed

            self.attack = renamed("AttackResult", "method", "attack", method, self.attack, "gaussian", stacklevel=4)

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


def _deprecated_attack_method(self) -> str:
    """Deprecated name of :attr:`AttackResult.attack`."""
    warnings.warn("AttackResult.method is deprecated, use .attack instead", DeprecationWarning, stacklevel=2)
    return self.attack


# after the dataclass is made: its __init__ keeps ``method=None`` as the deprecated keyword's default
AttackResult.method = property(_deprecated_attack_method)


# ----------------------------------------------------------------------------------------------- the margin


def margin(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """The margin, negative exactly when the attack succeeds.

    ``z_y - max_{k != y} z_k`` (untargeted: the label against its best rival) or ``max_{k != t} z_k - z_t``
    (targeted: the best non-target class against the target).

    Args:
        logits: ``(..., B, p)``; labels, target: ``(B,)`` int64 (``target`` ``None`` when untargeted), broadcast
            over the leading dimensions (e.g. draws).

    Returns:
        ``(..., B)`` in the logits' dtype.
    """
    ref = (labels if target is None else target).expand(logits.shape[:-1]).unsqueeze(-1)
    z_ref = logits.gather(-1, ref).squeeze(-1)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, ref, True)
    best = logits.masked_fill(mask, float("-inf")).amax(-1)
    return z_ref - best if target is None else best - z_ref


def goal_z(goal: float) -> float:
    """``Phi^-1(goal)``: the standardized margin below which the surrogate success probability exceeds ``goal``."""
    return float(torch.special.ndtri(torch.tensor(goal, dtype=torch.float64)))


def hinge(margin_value: torch.Tensor, kappa, temperature: float, z_goal: float) -> torch.Tensor:
    """``relu((M + kappa) / T + z_goal)`` of real margins ``M`` ``(..., B)``: the Gaussian attack's hinge at
    ``Sigma = 0``, where its standardized margin is ``(M + kappa) / T``. ``kappa``: a float or ``(B,)``."""
    return torch.relu((margin_value + kappa) / temperature + z_goal)


# ----------------------------------------------------------------------------------------------- checks


def check_model(model) -> None:
    """TypeError unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def check_images(images) -> None:
    """A tensor of shape ``(B, C, H, W)`` (the point attacks check the rest through :func:`check_batch`)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")


def check_device(model, images) -> None:
    """``model``'s parameters and ``images`` must share a device (say which is where instead of a matmul error)."""
    param = next(iter(model.parameters()), None)
    if param is not None and param.device != images.device:
        raise ValueError(f"images are on device {images.device} but model's parameters are on {param.device}; "
                         "move one of them (e.g. images.to(next(model.parameters()).device))")


def check_batch(images, labels, target, num_classes=None):
    """Check ``images`` ``(B, C, H, W)`` (float, in ``[0, 1]``, at least one, real data) and return ``labels``
    and ``target`` as ``(B,)`` int64 tensors on the images' device (``target`` stays ``None`` when untargeted).

    With ``num_classes`` the classes must also lie in ``[0, num_classes)``; a target must differ from its label.
    """
    check_images(images)
    if not images.is_floating_point():
        raise TypeError(f"images must have a floating dtype, got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image")
    if images.device.type == "meta":
        raise ValueError("images are on the meta device (no data); pass real tensors")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ValueError("images must be finite and lie in the pixel box [0, 1]")
    labels = as_class_tensor("labels", labels, images.shape[0], images.device, num_classes)
    if target is not None:
        target = as_class_tensor("target", target, images.shape[0], images.device, num_classes)
        if (target == labels).any():
            bad = int((target == labels).nonzero()[0, 0])
            raise ValueError(f"target equals the true label for image {bad}; a targeted attack needs target != label")
    return labels, target


def as_class_tensor(name: str, value, batch: int, device, num_classes: int | None) -> torch.Tensor:
    """``value`` (an int, or a ``()`` / ``(batch,)`` integer tensor on ``device``) as ``(batch,)`` int64 classes."""
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


def prepare_batch(model, images, labels, target):
    """Every check an attack makes before it runs: :func:`check_batch`, then the devices, then (one forward
    pass of one image) that the classes are the model's. Returns ``(labels, target)`` as in :func:`check_batch`."""
    check_model(model)
    labels, target = check_batch(images, labels, target)
    check_device(model, images)
    with torch.no_grad():
        num_classes = model(images[:1]).shape[-1]
    return check_batch(images, labels, target, num_classes)


def check_int(name: str, value, minimum: int) -> None:
    """ValueError unless ``value`` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_float(name: str, value, *, positive=False, allow_none=False, upper=None, open_upper=False) -> None:
    """ValueError unless ``value`` is a finite number ``>= 0`` (``> 0`` with ``positive``), at most ``upper``
    (below it with ``open_upper``); ``None`` passes with ``allow_none``."""
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


def positive(name: str, value, *, allow_zero=False) -> float:
    """``value`` as a float when it is a finite number > 0 (or >= 0 with ``allow_zero``), else a ValueError."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value >= 0 if allow_zero else value > 0))
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)
