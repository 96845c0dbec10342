"""Affine layers and the Affine-ReLU-Affine network ``g(x) = B relu(A x + c1) + c2`` (Bibi et al. 2018).

An affine map of any input distribution: ``E[A x + b] = A mu + b``, ``Cov[A x + b] = A Sigma A^T``. For
``x ~ N(mu, Sigma)`` the hidden pre-activations are ``y = A x + c1 ~ N(A mu + c1, A Sigma A^T)``, so
``E[g] = B E[q(y)] + c2`` and ``Cov[g] = B Cov[q(y)] B^T`` with ``q = relu`` (see :mod:`netmoments.relu`).
"""
from __future__ import annotations

import torch
from torch import nn

from ._validation import check_compatible, check_covariance, check_finite, check_tensor
from .relu import _check_method, _relu_moments_std, _safe_sqrt, relu_covariance

__all__ = ["affine_moments", "affine_variance", "AffineReLUAffine"]


def affine_variance(cov: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``diag(W Sigma W^T)`` without forming the ``(m, m)`` product: ``sum_k (W Sigma)_ik W_ik``.

    Args:
        cov: ``(..., n, n)``.
        weight: ``(..., m, n)``.

    Returns:
        ``(..., m)``.
    """
    return ((weight @ cov) * weight).sum(-1)


def _apply(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``W x`` for weights ``(..., m, n)`` and vectors ``(..., n)`` -> ``(..., m)``.

    Written as a row vector times ``W^T``: with an unbatched ``W`` and many vectors this is one GEMM,
    whereas ``W @ x[..., None]`` would broadcast ``W`` over the batch (about 10x slower on CPU).
    """
    return (x.unsqueeze(-2) @ weight.mT).squeeze(-2)


def _check_affine_inputs(mean, cov, weight, bias, weight_name="weight", bias_name="bias"):
    check_tensor("mean", mean, min_dim=1)
    check_tensor(weight_name, weight, min_dim=2)
    check_tensor(bias_name, bias, min_dim=1)
    check_compatible(mean=mean, cov=cov, **{weight_name: weight, bias_name: bias})
    for name, value in (("mean", mean), (weight_name, weight), (bias_name, bias)):
        check_finite(name, value)
    n = mean.shape[-1]
    if weight.shape[-1] != n:
        raise ValueError(f"{weight_name} has {weight.shape[-1]} columns but mean has {n} entries")
    if bias.shape[-1] != weight.shape[-2]:
        raise ValueError(f"{bias_name} has {bias.shape[-1]} entries but {weight_name} has {weight.shape[-2]} rows")
    return check_covariance("cov", cov, dim=n)


def affine_moments(
    mean: torch.Tensor,
    cov: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    output: str = "cov",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (or variance) of ``W x + b`` for ``x ~ N(mean, cov)`` (exact for any distribution).

    Args:
        mean: ``(..., n)``.
        cov: ``(..., n, n)`` symmetric PSD.
        weight: ``(..., m, n)``.
        bias: ``(..., m)``.
        output: ``"cov"`` for the ``(..., m, m)`` covariance, ``"var"`` for its ``(..., m)`` diagonal only.

    Returns:
        ``(mean (..., m), cov (..., m, m) or var (..., m))``.
    """
    if output not in ("cov", "var"):
        raise ValueError(f"output must be 'cov' or 'var', got {output!r}")
    cov = _check_affine_inputs(mean, cov, weight, bias)
    out_mean = _apply(weight, mean) + bias
    if output == "var":
        return out_mean, affine_variance(cov, weight)
    out_cov = weight @ cov @ weight.mT
    return out_mean, 0.5 * (out_cov + out_cov.mT)


class AffineReLUAffine(nn.Module):
    """The two-layer network ``g(x) = B relu(A x + c1) + c2`` with closed-form Gaussian moments.

    Weights may carry leading batch dimensions (e.g. one linearization per image), which broadcast against
    the inputs' batch dimensions.

    Args:
        A: ``(..., m, n)`` first layer weight.
        c1: ``(..., m)`` first layer bias.
        B: ``(..., p, m)`` second layer weight.
        c2: ``(..., p)`` second layer bias.

    All four must share one floating dtype and one device; they are stored as buffers, so ``.to()`` moves them.
    """

    def __init__(self, A: torch.Tensor, c1: torch.Tensor, B: torch.Tensor, c2: torch.Tensor):
        super().__init__()
        for name, value, dims in (("A", A, 2), ("c1", c1, 1), ("B", B, 2), ("c2", c2, 1)):
            check_tensor(name, value, min_dim=dims)
            check_finite(name, value)
        check_compatible(A=A, c1=c1, B=B, c2=c2)
        if c1.shape[-1] != A.shape[-2]:
            raise ValueError(f"c1 has {c1.shape[-1]} entries but A has {A.shape[-2]} rows")
        if B.shape[-1] != A.shape[-2]:
            raise ValueError(f"B has {B.shape[-1]} columns but A has {A.shape[-2]} rows (hidden width)")
        if c2.shape[-1] != B.shape[-2]:
            raise ValueError(f"c2 has {c2.shape[-1]} entries but B has {B.shape[-2]} rows")
        self.register_buffer("A", A)
        self.register_buffer("c1", c1)
        self.register_buffer("B", B)
        self.register_buffer("c2", c2)

    @property
    def in_features(self) -> int:
        return self.A.shape[-1]

    @property
    def hidden_features(self) -> int:
        return self.A.shape[-2]

    @property
    def out_features(self) -> int:
        return self.B.shape[-2]

    def extra_repr(self) -> str:
        batch = tuple(self.A.shape[:-2])
        extra = f", batch={batch}" if batch else ""
        return f"{self.in_features} -> {self.hidden_features} -> {self.out_features}{extra}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The real network: ``(..., n) -> (..., p)``."""
        hidden = torch.relu(_apply(self.A, x) + self.c1)
        return _apply(self.B, hidden) + self.c2

    def hidden_moments(self, mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(..., m)`` and covariance ``(..., m, m)`` of the pre-activations ``y = A x + c1``."""
        return affine_moments(mean, cov, self.A, self.c1)

    def moments(
        self,
        mean: torch.Tensor,
        cov: torch.Tensor,
        method: str = "exact",
        output: str = "cov",
        terms: int | None = 5,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance (or variance) of ``g(x)`` for ``x ~ N(mean, cov)``.

        The mean is exact for every ``method``; ``method`` picks the hidden covariance (see
        :func:`netmoments.relu_covariance`): ``"exact"``, ``"series"``, ``"hybrid"`` (NM18) or ``"zero_mean"``;
        ``terms``: the series' terms, ``None`` for no truncation (the exact Phi2).

        Args:
            mean: ``(..., n)``.
            cov: ``(..., n, n)`` symmetric PSD (rank-deficient is fine).
            output: ``"cov"`` -> ``(..., p, p)``; ``"var"`` -> ``(..., p)``, without forming ``B C B^T``.

        Returns:
            ``(mean (..., p), cov (..., p, p) or var (..., p))``.
        """
        if output not in ("cov", "var"):
            raise ValueError(f"output must be 'cov' or 'var', got {output!r}")
        _check_method(method, terms)
        check_tensor("mean", mean, min_dim=1)
        check_tensor("cov", cov, min_dim=2)
        check_compatible(mean=mean, cov=cov, A=self.A)
        y_mean, y_cov = self.hidden_moments(mean, cov)
        std = _safe_sqrt(torch.diagonal(y_cov, dim1=-2, dim2=-1))
        q_mean, _ = _relu_moments_std(y_mean, std)
        out_mean = _apply(self.B, q_mean) + self.c2
        q_cov = relu_covariance(y_mean, y_cov, method=method, terms=terms, validate=False)
        if output == "var":
            return out_mean, affine_variance(q_cov, self.B)
        out_cov = self.B @ q_cov @ self.B.mT
        return out_mean, 0.5 * (out_cov + out_cov.mT)
