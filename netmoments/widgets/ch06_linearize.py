"""Chapter 6, linearizing deep networks: the widget."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import viz
from ._frames import FRAME_DPI, FrameWidget, _on_grid, precomputed_widget

__all__ = ["noise_sensitivity_summary", "noise_sensitivity_widget"]

def noise_sensitivity_summary(model, image: torch.Tensor, logit: int, sigma: float, method: str = "exact",
                              linearization=None) -> dict:
    """Which pixels' noise drives a logit's variance, for ``x ~ N(image, sigma^2 I)`` through ``model``'s TSL.

    Args:
        model: a piecewise-linear ``nn.Sequential`` classifier (e.g. the book's LeNet).
        image: ``(1, H, W)`` digit.
        logit: which output to explain.
        sigma: per-pixel noise standard deviation.
        linearization: optional precomputed float64 :func:`netmoments.linearize.two_stage_linearize` at ``image``.

    Returns:
        dict with ``attribution`` ``(H, W)`` (``v_i dVar/dv_i`` through the closed form), ``linear`` ``(H, W)``
        (the first-order share ``w_i^2 sigma^2``, ``w = A^T D b_logit``), ``variance`` (closed form),
        ``attribution_sum``, ``linear_variance``, ``logits`` ``(p,)`` and ``prediction``.
    """
    from ..linearize import pixel_noise_sensitivity, two_stage_linearize

    tsl = linearization if linearization is not None else two_stage_linearize(model, image, dtype=torch.float64)
    x = image.to(torch.float64).reshape(-1)
    attribution, variance = pixel_noise_sensitivity(tsl, x, sigma**2, logits=[logit], method=method)
    on = (tsl.A @ x + tsl.c1 > 0).to(x.dtype)
    w = tsl.A.mT @ (on * tsl.B[logit])
    linear = w**2 * sigma**2
    logits = tsl(x)
    shape = image.shape[-2:]
    return {
        "attribution": attribution[0].reshape(shape),
        "linear": linear.reshape(shape),
        "variance": float(variance[logit]),
        "attribution_sum": float(attribution.sum()),
        "linear_variance": float(linear.sum()),
        "logits": logits,
        "prediction": int(logits.argmax()),
    }


def noise_sensitivity_widget(model, images: torch.Tensor, labels: torch.Tensor, n_digits: int = 3,
                             method: str = "exact", *, logits: Sequence[int] = tuple(range(10)),
                             sigmas: Sequence[float] = (0.02, 0.1, 0.3), dpi: int = FRAME_DPI) -> FrameWidget:
    """Pick a digit, a logit and a noise level; shows the digit and which pixels' noise drives that logit's
    variance (see :func:`noise_sensitivity_summary`). Frames: ``n_digits x len(logits) x len(sigmas)``; one
    linearization per digit and one attribution pass per digit and noise level (all logits at once)."""
    from ..linearize import pixel_noise_sensitivity, two_stage_linearize

    n_digits = min(n_digits, images.shape[0])
    logits = tuple(int(k) for k in logits)
    cache = {}

    def compute(digit, logit, sigma):
        # What does not depend on the logit is computed once per digit (the TSL) or per (digit, sigma).
        if (digit, sigma) not in cache:
            if digit not in cache:
                cache[digit] = two_stage_linearize(model, images[digit], dtype=torch.float64)
            tsl = cache[digit]
            x = images[digit].to(torch.float64).reshape(-1)
            attribution, variance = pixel_noise_sensitivity(tsl, x, sigma**2, logits=list(logits), method=method)
            cache[digit, sigma] = (tsl, x, attribution, variance)
        tsl, x, attribution, variance = cache[digit, sigma]
        row = logits.index(logit)
        on = (tsl.A @ x + tsl.c1 > 0).to(x.dtype)
        w = tsl.A.mT @ (on * tsl.B[logit])
        shape = images[digit].shape[-2:]
        out = tsl(x)
        return {
            "attribution": attribution[row].reshape(shape),
            "linear": (w**2 * sigma**2).reshape(shape),
            "variance": float(variance[logit]),
            "attribution_sum": float(attribution[row].sum()),
            "linear_variance": float((w**2 * sigma**2).sum()),
            "logits": out,
            "prediction": int(out.argmax()),
            "digit": digit,
            "logit": logit,
            "sigma": sigma,
        }

    def plot(s):
        return viz.plot_noise_sensitivity(
            images[s["digit"]][0],
            {f"share of Var[logit {s['logit']}] (closed form)": s["attribution"],
             "first-order share $w_i^2\\sigma^2$": s["linear"]},
            title=(f"digit {int(labels[s['digit']])}, predicted {s['prediction']}; Var[logit {s['logit']}] = "
                   f"{s['variance']:.3e} (shares sum to {s['attribution_sum']:.3e})"),
        )

    grid = {"digit": range(n_digits), "logit": logits, "sigma": tuple(sigmas)}
    return precomputed_widget(
        compute, plot, grid, dpi=dpi, initial=_on_grid({"logit": int(labels[0])}, grid),
        descriptions={"digit": "digit", "logit": "logit", "sigma": "σ (noise)"},
        formats={"digit": lambda i: f"#{i}: a {int(labels[i])}", "sigma": "{:g}"},
    )
