"""The optimiser step every Gaussian-family attack takes: Adam, then the proximal maps of its penalties.

The mean shift ``v`` takes an Adam step, then the proximal map of its L1 price (a soft threshold at the price
times Adam's per-coordinate step, so pixels reach exact zeros), then the pixel box. The noise stds ``s`` take an
Adam step, then the proximal map of ``price * sum(s)`` on ``s >= 0`` (a shift: a negative price rewards noise),
then the cap. The Gaussian attack's dense and support solvers and the EOT baseline all step this way.
"""
from __future__ import annotations

import torch

from ._ops import soft_threshold

__all__ = ["Adam", "mean_step", "noise_step"]


class Adam:
    """Elementwise Adam whose step also returns its per-coordinate step size (for the proximal maps).

    Args:
        param: a tensor of the parameter's shape, dtype and device (its moments start at zero).
        lr: the step size; betas, eps: Adam's constants.
    """

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


def mean_step(adam: Adam, v: torch.Tensor, grad: torch.Tensor, l1_weight: torch.Tensor | None = None,
              box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One proximal Adam step on the mean shift ``v`` ``(B, n)``.

    Args:
        grad: ``(B, n)`` the gradient of the smooth part of the loss.
        l1_weight: ``(B, 1)`` the L1 price per image, or ``None`` for no L1 step.
        box: ``(low, high)`` ``(B, n)`` bounds on ``v`` (``-clean`` and ``1 - clean`` keep the mean in the pixel
            box when ``G = I``), or ``None``.
    """
    v, lr = adam.step(v, grad)
    if l1_weight is not None:
        v = soft_threshold(v, lr * l1_weight)
    if box is not None:
        v = torch.minimum(torch.maximum(v, box[0]), box[1])
    return v


def noise_step(adam: Adam, s: torch.Tensor, grad: torch.Tensor, price: float, cap: float,
               support: torch.Tensor | None = None) -> torch.Tensor:
    """One proximal Adam step on the noise stds ``s`` ``(B, n)``.

    Args:
        grad: ``(B, n)`` the gradient of the smooth part of the loss.
        price: the price per unit of std (``noise_l1_weight - noise_reward``; negative rewards noise).
        cap: the largest std allowed.
        support: ``(B, n)`` bool, where noise may live (elsewhere ``s`` is set to 0), or ``None`` for anywhere.
    """
    s, lr = adam.step(s, grad)
    s = (s - lr * price).clamp(0.0, cap)
    if support is not None:
        s = torch.where(support, s, torch.zeros_like(s))
    return s
