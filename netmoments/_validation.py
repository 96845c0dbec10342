"""Argument checks shared by the public functions.

Every check raises ``TypeError`` or ``ValueError`` whose message starts with the argument's name, so a
user who passes a bad covariance learns *which* argument is wrong and *how*.
"""
from __future__ import annotations

import torch

__all__ = [
    "SUPPORTED_DTYPES",
    "check_dtype",
    "check_tensor",
    "check_compatible",
    "check_covariance",
    "check_finite",
]


# float16 / bfloat16 are rejected: their 3-4 significant digits cannot hold the cancellations and tails these
# moments need, and several torch kernels used here (cholesky, eigh) do not exist for them.
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_dtype(name: str, dtype: torch.dtype) -> None:
    """Raise ``TypeError`` unless ``dtype`` is float32 or float64 (``name`` is the argument that has it)."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {dtype}; only float32 and float64 are supported "
                        "(convert with .float() or .double())")


def check_tensor(name: str, value, *, floating: bool = True, min_dim: int = 0) -> torch.Tensor:
    """Return ``value`` if it is a tensor (float32 or float64 when ``floating``) with at least ``min_dim`` dims."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {value.dtype}")
    if floating:
        check_dtype(name, value.dtype)
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}")
    return value


def check_finite(name: str, value: torch.Tensor, *, allow_inf: bool = False) -> None:
    """Raise ``ValueError`` if ``value`` holds NaN (or +-inf unless ``allow_inf``)."""
    if allow_inf:
        if torch.isnan(value).any():
            raise ValueError(f"{name} contains NaN")
    elif value.numel():
        # one reduction without a mask tensor (isfinite(...).all() is ~50x slower on a large Jacobian);
        # aminmax propagates NaN, and +-inf shows up as an extreme
        low, high = value.aminmax()
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            bad = "NaN" if torch.isnan(value).any() else "inf"
            raise ValueError(f"{name} contains {bad}; all entries must be finite")


def check_compatible(**tensors: torch.Tensor) -> None:
    """All tensors must share one dtype and one device (no silent promotion or transfer)."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; move them to one device"
            )
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; use one dtype")


def _tolerance(dtype: torch.dtype) -> float:
    # sqrt(eps): loose enough for A @ Sigma @ A.T computed in the same precision, tight enough to catch
    # a matrix that is genuinely not symmetric or has a clearly negative eigenvalue.
    return torch.finfo(dtype).eps ** 0.5


def check_covariance(name: str, cov: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Check a batch of covariance matrices ``(..., n, n)`` and return it exactly symmetrized.

    Raises if ``cov`` is not square, has the wrong size ``n != dim``, holds NaN/inf, is not symmetric
    within ``sqrt(eps)`` of its scale, or has an eigenvalue below ``-sqrt(eps)`` times its scale.
    Rank-deficient (positive semi-definite) matrices are legal.
    """
    check_tensor(name, cov, min_dim=2)
    n = cov.shape[-1]
    if cov.shape[-2] != n:
        raise ValueError(f"{name} must be square in its last two dimensions, got shape {tuple(cov.shape)}")
    if dim is not None and n != dim:
        raise ValueError(f"{name} must be ({dim}, {dim}) in its last two dimensions to match mean, got ({n}, {n})")
    check_finite(name, cov)
    if n == 0:
        # zero units (e.g. a layer with no hidden units left): the empty covariance is legal and trivially PSD
        return 0.5 * (cov + cov.mT)
    tol = _tolerance(cov.dtype)
    scale = cov.detach().abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(cov.dtype).tiny)
    asym = (cov.detach() - cov.detach().mT).abs() / scale
    if (asym > tol).any():
        raise ValueError(f"{name} is not symmetric (max relative asymmetry {asym.max().item():.3g})")
    sym = 0.5 * (cov + cov.mT)
    # A cheap Cholesky with a tiny jitter settles the common positive-definite case; only failures pay for
    # the eigenvalue decomposition that distinguishes "rank-deficient" (legal) from "indefinite" (illegal).
    eye = torch.eye(n, dtype=cov.dtype, device=cov.device)
    _, info = torch.linalg.cholesky_ex(sym.detach() + tol * scale * eye)
    if (info != 0).any():
        min_eig = torch.linalg.eigvalsh(sym.detach())[..., 0]
        rel = min_eig / scale[..., 0, 0]
        if (rel < -tol).any():
            raise ValueError(
                f"{name} is not positive semi-definite (smallest eigenvalue {min_eig.min().item():.3g}, "
                f"relative {rel.min().item():.3g})"
            )
    return sym


_UNSET = object()


def renamed(func_name: str, old: str, new: str, old_value, new_value, default=None, stacklevel: int = 3):
    """The value of a keyword renamed from ``old`` to ``new``: ``new_value`` unless only ``old_value`` was given.

    ``old_value`` is ``_UNSET`` (or ``None``) when the caller did not pass the old keyword; otherwise a
    ``DeprecationWarning`` names the new keyword, and passing both raises ``TypeError``. ``new_value`` equal to
    ``default`` means the new keyword was not passed.
    """
    if old_value is _UNSET or old_value is None:
        return new_value
    import warnings

    warnings.warn(f"{func_name}: '{old}=' is deprecated, use '{new}=' instead", DeprecationWarning,
                  stacklevel=stacklevel)
    if new_value is not default and new_value != default:
        raise TypeError(f"{func_name}: pass '{new}=' only (got both '{new}=' and its deprecated name '{old}=')")
    return old_value
