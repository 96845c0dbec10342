"""The Gaussian attack's objective for one fixed two-stage linearization ``g(x) = B relu(A x + c1) + c2``.

For each competing class ``k`` the margin ``M_k`` (label minus ``k`` when untargeted, ``k`` minus target when
targeted) under the attack distribution ``N(clean + G v, G diag(w) G^T)`` is treated as Gaussian and
standardized, ``r_k = (E[M_k] + kappa) / sqrt(Var[M_k] + T^2)``; the objective is the hinge
``relu(r + Phi^-1(goal))`` with ``r = min_k r_k`` (untargeted) or ``max_k r_k`` (targeted).
"""
from __future__ import annotations

import warnings

import torch

from .._validation import renamed
from ..affine import AffineReLUAffine
from ..relu import relu_moments
from ._ops import blur, blur_squared, clipped_gaussian_moments
from .common import goal_z
from .options import VARIANCES

__all__ = ["LinearizedAttackObjective", "pixel_moments"]


def _matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``(..., m, n) @ (..., n) -> (..., m)`` written as a row vector times ``matrix^T``.

    On CPU, batched ``matrix @ column`` runs ~10x slower than ``row @ matrix^T`` for a 1024 x 784 matrix (both in
    the forward pass and, through autograd's transposes, in the backward pass); the result is the same.
    """
    return (vector.unsqueeze(-2) @ matrix.mT).squeeze(-2)


def pixel_moments(clean, v, w, shape, blur_sigma, clip_aware):
    """Mean ``(B, n)`` of the input pixels and the variance vector that multiplies ``(A G)^2``.

    The mean is ``clip(clean + G v, 0, 1)``. With ``clip_aware`` the draws' clipping to ``[0, 1]`` is modelled:
    clipping acts pixel by pixel, so for a diagonal ``Sigma`` (``G = I``) the clipped pixels stay independent and
    their exact means and variances are used; for a blurred ``Sigma`` only the mean is corrected (``w`` stays, an
    upper bound on the clipped variance).

    Args:
        clean, v, w: ``(B, n)`` clean pixels, mean-shift parameter and noise variances before the blur.
        shape: the image shape ``(C, H, W)``; blur_sigma: the blur of ``G`` (0: identity); clip_aware: as above.
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
        method, temperature, goal, clip_aware, series_terms: as in :class:`~netmoments.attacks.AttackOptions`
            (``method`` was ``variance=``, still accepted with a ``DeprecationWarning``).
        kappa: the margin offset, a float or ``(B,)`` (one per image, as the support solver raises it).

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
        method: str = "linear",
        kappa: float | torch.Tensor = 0.0,
        temperature: float = 1.0,
        goal: float = 0.99,
        clip_aware: bool = True,
        series_terms: int = 5,
        *,
        variance: str | None = None,
    ):
        method = renamed("LinearizedAttackObjective", "variance", "method", variance, method, "linear")
        if method not in VARIANCES:
            raise ValueError(f"method must be one of {VARIANCES}, got {method!r}")
        self.net = surrogate
        self.clean = clean
        self.reference = reference
        self.targeted = targeted
        self.shape = image_shape
        self.blur_sigma = float(blur_sigma)
        self.method = method
        self.kappa = kappa.unsqueeze(-1) if isinstance(kappa, torch.Tensor) else float(kappa)
        self.temperature = float(temperature)
        self.z_goal = goal_z(goal)
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

    @property
    def variance(self) -> str:
        """Deprecated name of :attr:`method`."""
        warnings.warn("LinearizedAttackObjective.variance is deprecated, use .method instead", DeprecationWarning,
                      stacklevel=2)
        return self.method

    def pixel_moments(self, v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel mean ``(B, n)`` of the (clip-aware) input and the variance vector that scales ``(A G)^2``."""
        return pixel_moments(self.clean, v, w, self.shape, self.blur_sigma, self.clip_aware)

    def output_moments(self, v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``E[g]`` ``(B, p)`` and ``Cov[g]`` ``(B, p, p)`` (zeros for ``method="none"``)."""
        net = self.net
        mean, var_vec = self.pixel_moments(v, w)
        if self.method in ("exact", "series", "hybrid"):
            # G diag(w) G^T without a square root (its gradient at w = 0, e.g. pixels without noise, is infinite)
            cov_in = torch.diag_embed(var_vec.clamp_min(0.0))
            if not self.diagonal:
                cov_in = blur(blur(cov_in, self.shape, self.blur_sigma).mT, self.shape, self.blur_sigma).mT
            return net.moments(mean, 0.5 * (cov_in + cov_in.mT), method=self.method, output="cov",
                               terms=self.series_terms)
        y_mean = _matvec(self.A, mean) + net.c1
        y_var = _matvec(self.AG2, var_vec)
        q_mean, _ = relu_moments(y_mean, y_var)
        g_mean = _matvec(net.B, q_mean) + net.c2
        p = g_mean.shape[-1]
        if self.method == "none":
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
