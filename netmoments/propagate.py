"""Moments layer by layer: push ``x ~ N(mean, cov)`` through a whole piecewise-linear network.

The two-stage linearization of :mod:`netmoments.linearize` keeps one ReLU and freezes the rest. Here every
layer is treated in turn instead, and after each nonlinearity the distribution of the units is *closed*: replaced
by a Gaussian with (approximately) the same first two moments. Three closures trade accuracy for cost:

* ``"diag"``: the units are independent after every nonlinearity. Univariate ReLU moments are exact for a
  Gaussian input, max-pools use Clark's moments of the maximum of Gaussians.
* ``"lowrank"``: the covariance is ``R^T R + diag(d)``. The rows ``R`` (``r x N``) are the covariances of the units
  with the ``r`` independent standard normals that generate the input, so affine layers map them exactly. A ReLU
  row is Stein's regression row ``Phi(mu / sigma) R_i`` and a max is Clark's ``Phi(alpha) R_a + Phi(-alpha) R_b``,
  both exact for Gaussian inputs; ``d`` restores every unit's exact marginal variance and is treated as
  independent noise.
* ``"full"``: the full ``N x N`` covariance, with the exact general-mean ReLU covariance of
  :func:`netmoments.relu_covariance` at every ReLU and Clark's pairwise maxima, with their covariances to every
  other unit, at every max-pool. Before the first nonlinearity the covariance is kept as an exact factor, so a
  convolution's output is never formed as a dense matrix when a max-pool comes next.

A ReLU that is immediately followed by a ``MaxPool2d`` is applied after the pool instead, which changes nothing
about the network (``max(relu(a), relu(b)) = relu(max(a, b))``) but lets Clark's moments see Gaussian inputs rather
than rectified ones.

Every closure has an exact mean and covariance for affine-only networks, and an exact mean for one hidden ReLU
layer; beyond that each is an approximation whose error the book measures against Monte Carlo.
:func:`unscented` is the classic deterministic baseline: the sigma-point transform, ``2 r + 1`` forward passes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_compatible, check_covariance, check_finite, check_tensor
from .gaussian import covariance_sqrt
from .linearize import SUPPORTED_LAYERS, check_sequential
from .relu import _check_method, _relu_moments_std, _safe_sqrt, relu_covariance
from .special import normal_cdf

__all__ = ["CLOSURES", "SUPPORTED_LAYERS", "moments", "unscented", "clark_max"]

#: The Gaussian closures :func:`moments` offers: diagonal, low-rank or full covariance.
CLOSURES = ("diag", "lowrank", "full")
_NONLINEAR = (nn.ReLU, nn.MaxPool2d)
# The "full" closure refuses to form a dense covariance larger than this many bytes per batch element.
DENSE_LIMIT_BYTES = 4 << 30


# --------------------------------------------------------------------------------------------------- checks


def _check_model(model) -> nn.Sequential:
    check_sequential(model)  # the layers the linearizations accept, with the same messages
    if model.training:
        raise ValueError("model is in training mode; call model.eval() first (moments describe the deployed network)")
    for i, layer in enumerate(model):
        if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
            raise TypeError(f"model[{i}] is a MaxPool2d with return_indices=True; its output is not a tensor")
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise TypeError(f"model[{i}] is a Conv2d with padding_mode={layer.padding_mode!r}; only 'zeros' is supported")
    return model


def _check_inputs(model, mean, cov):
    check_tensor("mean", mean)
    if mean.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"mean must be float32 or float64, got {mean.dtype}")
    if mean.dim() < 2:
        raise ValueError(f"mean must be (B, *input_shape) with a leading batch dimension, got shape {tuple(mean.shape)}")
    if mean.shape[0] == 0:
        raise ValueError("mean has an empty batch (B = 0)")
    check_finite("mean", mean)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.device != mean.device:
            raise ValueError(f"model parameter {name} is on {p.device} but mean is on {mean.device}; move them to one device")
    dim = math.prod(mean.shape[1:])
    if isinstance(cov, bool) or not isinstance(cov, (int, float, torch.Tensor)):
        raise TypeError(f"cov must be a tensor (B, D, D) or (D, D), or a float variance, got {type(cov).__name__}")
    if isinstance(cov, (int, float)) or cov.dim() == 0:
        var = torch.as_tensor(cov, dtype=mean.dtype, device=mean.device) if not isinstance(cov, torch.Tensor) else cov
        check_tensor("cov", var)
        check_compatible(mean=mean, cov=var)
        check_finite("cov", var)
        if var.item() < 0:
            raise ValueError(f"cov as a scalar is the variance of every input entry and must be >= 0, got {var.item():.3g}")
        return dim, var
    check_compatible(mean=mean, cov=cov)
    cov = check_covariance("cov", cov, dim=dim)
    if cov.dim() > 3 or (cov.dim() == 3 and cov.shape[0] != mean.shape[0]):
        raise ValueError(
            f"cov must be (B, D, D) with B = {mean.shape[0]} (the mean's batch) or (D, D), got shape {tuple(cov.shape)}"
        )
    return dim, cov


# ------------------------------------------------------------------------------------------ the linear maps


def _weight(tensor, dtype):
    return None if tensor is None else tensor.to(dtype)


def _affine(layer: nn.Module, x: torch.Tensor, shape: tuple, bias: bool, chunk: int = 256) -> tuple[torch.Tensor, tuple]:
    """Apply an affine layer (with or without its bias) to vectors ``(M, N)`` laid out as ``(M, *shape)``.

    A convolution runs ``chunk`` vectors at a time: its unfolded input is ``kernel area x channels`` times the
    size of the input itself, which for thousands of covariance rows would be tens of GB at once.
    """
    if isinstance(layer, nn.Conv2d) and x.shape[0] > chunk:
        parts = [_affine(layer, x[s : s + chunk], shape, bias, chunk) for s in range(0, x.shape[0], chunk)]
        return torch.cat([part for part, _ in parts]), parts[0][1]
    x = x.reshape(x.shape[0], *shape)
    if isinstance(layer, nn.Conv2d):
        w = _weight(layer.weight, x.dtype)
        b = _weight(layer.bias, x.dtype) if bias else None
        y = F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
    elif isinstance(layer, nn.Linear):
        y = F.linear(x, _weight(layer.weight, x.dtype), _weight(layer.bias, x.dtype) if bias else None)
    else:  # AvgPool2d, Flatten, Identity: linear maps with no bias
        y = layer(x)
    return y.reshape(y.shape[0], -1), tuple(y.shape[1:])


def _squared(layer: nn.Module, d: torch.Tensor, shape: tuple) -> torch.Tensor:
    """``diag(A diag(d) A^T)`` for the linear part ``A`` of an affine layer: ``d`` ``(B, N)`` -> ``(B, N')``."""
    x = d.reshape(d.shape[0], *shape)
    if isinstance(layer, nn.Conv2d):
        w = _weight(layer.weight, d.dtype)
        y = F.conv2d(x, w * w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    elif isinstance(layer, nn.Linear):
        w = _weight(layer.weight, d.dtype)
        y = F.linear(x, w * w)
    elif isinstance(layer, nn.AvgPool2d):
        # Each output is sum(x in window) / divisor, so its squared weights give average(d) / divisor.
        ones = torch.ones_like(x[:1])
        count = F.avg_pool2d(ones, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, layer.count_include_pad, 1)
        divisor = count / layer(ones)
        y = layer(x) / divisor
    else:
        y = layer(x)
    return y.reshape(y.shape[0], -1)


# ------------------------------------------------------------------------------------------ Clark's maximum


def clark_max(mean: torch.Tensor, cov: torch.Tensor, mask: torch.Tensor | None = None):
    """Clark's moments of ``max(y_1, ..., y_k)`` for ``y ~ N(mean, cov)``, taken pairwise left to right.

    Each step replaces ``max(a, y_j)`` by a Gaussian with its exact mean and variance (Clark, 1961), and its
    covariance with every other variable by the exact rule ``Cov(max(a, b), w) = Phi(alpha) Cov(a, w) +
    Phi(-alpha) Cov(b, w)``, ``alpha = (mu_a - mu_b) / theta``, ``theta^2 = Var(a - b)``. So the maximum's
    covariance with anything is ``c . Cov(y, .)`` for a coefficient vector ``c`` (non-negative, summing to one).
    For ``k = 2`` the mean and variance are exact; for more terms Clark's recursion is an approximation.

    The pairwise step is computed as ``max(a, b) = u + relu(w - u)`` with ``u`` the one of larger mean, which is
    stable when the spread is tiny against the means and has the exact limits at ``theta = 0`` (a constant
    difference gives the larger unit, two identical units give that unit), with finite gradients.

    Args:
        mean: ``(..., k)``.
        cov: ``(..., k, k)``.
        mask: optional ``(..., k)`` bool, ``False`` for entries to leave out (padding); each row needs one ``True``.

    Returns:
        ``(mean (...), var (...), coefficients (..., k))``.
    """
    k = mean.shape[-1]
    batch = torch.broadcast_shapes(mean.shape[:-1], cov.shape[:-2])
    mean = mean.expand(*batch, k)
    cov = cov.expand(*batch, k, k)
    if mask is None:
        mask = torch.ones(k, dtype=torch.bool, device=mean.device)
    mask = mask.expand(*batch, k)
    eye = torch.eye(k, dtype=mean.dtype, device=mean.device)
    started = torch.zeros(batch, dtype=torch.bool, device=mean.device)
    run_mean = torch.zeros(batch, dtype=mean.dtype, device=mean.device)
    run_var = torch.zeros_like(run_mean)
    coef = torch.zeros(*batch, k, dtype=mean.dtype, device=mean.device)
    for j in range(k):
        valid = mask[..., j]
        mu_b, var_b = mean[..., j], cov[..., j, j]
        cov_ab = (coef * cov[..., :, j]).sum(-1)
        spread = _safe_sqrt(run_var + var_b - 2.0 * cov_ab)
        gap = run_mean - mu_b
        # Write the max around the unit with the larger mean, u, as u + relu(w - u): then a zero spread gives
        # u itself, bit for bit, and the rectified part has a non-positive mean (no cancellation).
        a_leads = gap >= 0
        lead_mean = torch.where(a_leads, run_mean, mu_b)
        lead_var = torch.where(a_leads, run_var, var_b)
        # -|gap| with the slope of the branch taken (abs has slope 0 at a tie, which would break the gradient)
        behind = torch.where(a_leads, -gap, gap)
        excess_mean, excess_var = _relu_moments_std(behind, spread)
        positive = spread > 0
        spread_safe = torch.where(positive, spread, torch.ones_like(spread))
        # P(w > u): 0 when the two differ by a constant, 1/2 when they are the same variable
        tie = 0.5 * (gap == 0).to(mean.dtype)
        p_behind = torch.where(positive, normal_cdf((behind / spread_safe).clamp(-1e6, 0.0)), tie)
        new_mean = lead_mean + excess_mean
        # Var(u + relu(w - u)) = Var u + Var relu(w - u) + 2 Cov(u, relu(w - u)), and by Stein's lemma
        # Cov(u, relu(w - u)) = P(w > u) Cov(u, w - u).
        new_var = (lead_var + excess_var + 2.0 * p_behind * (cov_ab - lead_var)).clamp_min(0.0)
        weight_a = torch.where(a_leads, 1.0 - p_behind, p_behind)
        new_coef = weight_a.unsqueeze(-1) * coef + (1.0 - weight_a).unsqueeze(-1) * eye[j]
        first = valid & ~started
        merge = valid & started
        run_mean = torch.where(first, mu_b, torch.where(merge, new_mean, run_mean))
        run_var = torch.where(first, var_b, torch.where(merge, new_var, run_var))
        coef = torch.where(first.unsqueeze(-1), eye[j].expand_as(coef), torch.where(merge.unsqueeze(-1), new_coef, coef))
        started = started | valid
    return run_mean, run_var, coef


def _pool_windows(layer: nn.MaxPool2d, shape: tuple, device) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Flat input indices ``(N_out, k)`` of every pooling window, a validity mask, and the output shape."""
    channels, height, width = shape
    flat = torch.arange(channels * height * width, dtype=torch.float64, device=device).reshape(channels, 1, height, width)
    probe = layer(torch.zeros(1, *shape, dtype=torch.float64, device=device))
    out_h, out_w = probe.shape[-2:]
    kh, kw = nn.modules.utils._pair(layer.kernel_size)
    sh, sw = nn.modules.utils._pair(layer.stride if layer.stride is not None else layer.kernel_size)
    ph, pw = nn.modules.utils._pair(layer.padding)
    dh, dw = nn.modules.utils._pair(layer.dilation)
    # Pad with -1 (no unit) on every side, and on the far sides enough for ceil_mode's last windows.
    extra_h = max(0, (out_h - 1) * sh + dh * (kh - 1) + 1 - (height + 2 * ph))
    extra_w = max(0, (out_w - 1) * sw + dw * (kw - 1) + 1 - (width + 2 * pw))
    padded = F.pad(flat + 1.0, (pw, pw + extra_w, ph, ph + extra_h))
    cols = F.unfold(padded, (kh, kw), dilation=(dh, dw), stride=(sh, sw))  # (C, k, L)
    n_h = (padded.shape[-2] - dh * (kh - 1) - 1) // sh + 1
    n_w = (padded.shape[-1] - dw * (kw - 1) - 1) // sw + 1
    cols = cols.reshape(channels, kh * kw, n_h, n_w)[:, :, :out_h, :out_w]
    index = cols.permute(0, 2, 3, 1).reshape(-1, kh * kw).round().long() - 1
    mask = index >= 0
    return index.clamp_min(0), mask, tuple(probe.shape[1:])


# ----------------------------------------------------------------------------------------------- the state


def _check_dense_size(n: int, item_size: int, where: str) -> None:
    need = n * n * item_size
    if need > DENSE_LIMIT_BYTES:
        raise ValueError(
            f"closure='full' would form a dense {n} x {n} covariance at {where} ({need / 2**30:.1f} GiB per input); "
            "use closure='lowrank'"
        )


@dataclass
class _State:
    """A Gaussian over ``N`` units laid out as ``shape``: ``cov = rows^T right + diag(resid)``, or ``dense``.

    ``rows`` and ``right`` are ``(B, r, N)``; ``right is None`` means ``right = rows`` (a factor, ``cov = R^T R``).
    A two-sided pair ``(R, K)`` stands for ``R^T M R`` with ``K = M R`` for an input covariance ``M`` that has no
    Cholesky factor (rank-deficient): every step maps both sides by the same linear operation, so no eigenvalue
    decomposition, with its undefined derivative at repeated eigenvalues, is ever needed.
    """

    mean: torch.Tensor  # (B, N)
    shape: tuple
    rows: torch.Tensor | None = None  # (B, r, N), or (1, r, N) while one input covariance is shared by the batch
    resid: torch.Tensor | None = None  # (B, N)
    dense: torch.Tensor | None = None  # (B, N, N)
    right: torch.Tensor | None = None  # (B, r, N) or None

    def map_rows(self, fn) -> None:
        """Apply the same operation to both sides of the factor."""
        self.rows = fn(self.rows)
        if self.right is not None:
            self.right = fn(self.right)

    def explained(self) -> torch.Tensor:
        """``diag(rows^T right)``, the part of each unit's variance the rows carry: ``(B, N)``."""
        other = self.rows if self.right is None else self.right
        return (self.rows * other).sum(-2)

    def variance(self) -> torch.Tensor:
        if self.dense is not None:
            return torch.diagonal(self.dense, dim1=-2, dim2=-1)
        return self.explained() + self.resid

    def covariance(self) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        other = self.rows if self.right is None else self.right
        cov = self.rows.mT @ other + torch.diag_embed(self.resid)
        return 0.5 * (cov + cov.mT)

    def fold_rows(self) -> None:
        """Make the units independent: move all covariance onto the diagonal."""
        self.resid = self.variance()
        self.rows, self.right = self.rows[:, :0], None

    def unfold_resid(self) -> None:
        """Make the independent part explicit as rows, so affine layers map it exactly (with its correlations)."""
        if bool((self.resid > 0).any()):
            extra = torch.diag_embed(_safe_sqrt(self.resid))
            batch = extra.shape[:1]
            self.rows = torch.cat([self.rows.expand(*batch, *self.rows.shape[1:]), extra], dim=1)
            if self.right is not None:
                self.right = torch.cat([self.right.expand(*batch, *self.right.shape[1:]), extra], dim=1)
        self.resid = torch.zeros_like(self.resid)

    def densify(self, where: str) -> None:
        _check_dense_size(self.mean.shape[-1], self.mean.element_size(), where)
        self.dense = self.covariance()
        self.rows = self.resid = self.right = None


def _input_state(mean: torch.Tensor, cov, rank: int | None) -> _State:
    batch, dim = mean.shape[0], math.prod(mean.shape[1:])
    shape = tuple(mean.shape[1:])
    flat_mean = mean.reshape(batch, dim)
    zeros = torch.zeros_like(flat_mean)
    eye = torch.eye(dim, dtype=mean.dtype, device=mean.device)
    if not isinstance(cov, torch.Tensor) or cov.dim() == 0:
        var = torch.as_tensor(cov, dtype=mean.dtype, device=mean.device)
        if rank is not None and rank < dim:
            # Isotropic noise has no preferred directions: keep none as rows, all of it as independent noise.
            return _State(flat_mean, shape, zeros.new_zeros(batch, 0, dim), zeros + var)
        if bool(var == 0):
            # (I, 0 I) rather than the factor sqrt(0) I, whose derivative at 0 is infinite
            return _State(flat_mean, shape, eye[None], zeros, right=(var * eye)[None])
        return _State(flat_mean, shape, (var.sqrt() * eye)[None], zeros)
    if cov.dim() == 2:
        cov = cov[None]  # one covariance for the whole batch: its rows are mapped once
    if rank is not None and rank >= dim:
        rank = None  # nothing to truncate: the exact (differentiable) factor
    if rank is not None:
        cov = cov.expand(batch, dim, dim)
    if rank is None:
        chol, info = torch.linalg.cholesky_ex(cov)
        if not bool((info != 0).any()):
            return _State(flat_mean, shape, chol.mT, zeros)
        # rank-deficient: rows in input coordinates, right = cov rows (see _State)
        return _State(flat_mean, shape, eye[None], zeros, right=cov)
    eigval, eigvec = torch.linalg.eigh(cov)
    # Eigenvalues below n eps times the largest are rounding noise of a rank-deficient matrix, not directions.
    floor = dim * torch.finfo(mean.dtype).eps * eigval[..., -1:].clamp_min(0)
    eigval = torch.where(eigval > floor, eigval, torch.zeros_like(eigval))
    keep = min(int((eigval > 0).sum(-1).max()), rank)
    eigval, eigvec = eigval[..., dim - keep :], eigvec[..., dim - keep :]
    rows = (eigvec * _safe_sqrt(eigval).unsqueeze(-2)).mT  # (B, keep, D)
    resid = (torch.diagonal(cov, dim1=-2, dim2=-1) - (rows * rows).sum(-2)).clamp_min(0.0)
    return _State(flat_mean, shape, rows, resid)


# ------------------------------------------------------------------------------------------------ the steps


def _affine_step(layer, state: _State) -> None:
    shape = state.shape
    state.mean, state.shape = _affine(layer, state.mean, shape, bias=True)
    batch = state.mean.shape[0]
    if state.dense is not None:
        n, m = state.dense.shape[-1], state.mean.shape[-1]
        _check_dense_size(m, state.mean.element_size(), f"the output of {type(layer).__name__}")
        left, _ = _affine(layer, state.dense.reshape(batch * n, n), shape, bias=False)  # rows of Sigma A^T ...
        left = left.reshape(batch, n, m).mT.reshape(batch * m, n)
        dense, _ = _affine(layer, left, shape, bias=False)
        dense = dense.reshape(batch, m, m)
        state.dense = 0.5 * (dense + dense.mT)
        return
    rows_batch, r, n = state.rows.shape
    if r:
        state.map_rows(
            lambda rows: _affine(layer, rows.reshape(rows.shape[0] * r, n), shape, bias=False)[0].reshape(rows.shape[0], r, -1)
        )
    else:
        state.rows, state.right = state.rows.new_zeros(rows_batch, 0, state.mean.shape[-1]), None
    state.resid = _squared(layer, state.resid, shape).clamp_min(0.0)


def _conv_window_blocks(conv, a_sigma, in_shape, mid_shape, index, mask, block):
    """``(A Sigma A^T)[i, j]`` for every pair ``i, j`` of one pooling window: ``(B, N_out, k, k)``.

    A window lives in one output channel ``c``, so the entry is the kernel ``W[c]`` dotted with the patch of row
    ``i`` of ``A Sigma`` (an input-shaped map) under unit ``j``: a gather of ``k^2`` patches per window, never a
    convolution of all rows.
    """
    batch = a_sigma.shape[0]
    in_channels, height, width = in_shape
    channels, out_h, out_w = mid_shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    ph, pw = conv.padding  # numeric: string paddings take the unfused path
    hp, wp = height + 2 * ph, width + 2 * pw
    ci, ky, kx = torch.meshgrid(torch.arange(in_channels), torch.arange(kh), torch.arange(kw), indexing="ij")
    kernel_offsets = (ci * hp * wp + ky * dh * wp + kx * dw).reshape(-1).to(index.device)  # matches W[c].reshape(-1)
    plane = out_h * out_w
    pos = index % plane
    starts = (pos // out_w) * sh * wp + (pos % out_w) * sw  # top-left of each member's patch, padded coordinates
    window_channel = (index * mask).amax(-1) // plane
    weight = conv.weight.to(a_sigma.dtype).reshape(channels, -1)
    k = index.shape[1]
    out = []
    for s in range(0, index.shape[0], block):
        idx = index[s : s + block]  # (o, k)
        rows = a_sigma[:, idx.reshape(-1)].reshape(batch * idx.numel(), *in_shape)
        padded = F.pad(rows, (pw, pw, ph, ph)).reshape(batch, idx.shape[0], k, -1)  # (B, o, k, C hp wp)
        gather = starts[s : s + block, None, :, None] + kernel_offsets  # (o, 1, k, K)
        patches = torch.gather(
            padded.unsqueeze(3).expand(-1, -1, -1, k, -1), -1, gather.expand(idx.shape[0], k, k, -1)[None].expand(batch, -1, -1, -1, -1)
        )  # (B, o, k rows, k members, K)
        out.append((patches * weight[window_channel[s : s + block]][None, :, None, None, :]).sum(-1))
    return torch.cat(out, dim=1)


def _conv_pool_dense_step(conv: nn.Conv2d, pool: nn.MaxPool2d, state: _State, block: int = 512) -> None:
    """A convolution and the max-pool after it, on a dense covariance, without forming the convolution's output
    covariance: only its window blocks (for Clark's moments) and ``C A Sigma A^T C^T`` are needed.

    With ``Sigma`` ``(n, n)``, ``A`` the convolution ``(m, n)`` and ``C`` the Clark coefficients ``(o, m)``, this costs
    ``n + o`` convolution passes over covariance rows instead of ``n + m`` (for LeNet's second block 9,408 instead
    of 18,816), and holds ``(o, m)`` instead of ``(m, m)``.
    """
    shape, dense = state.shape, state.dense
    batch, n = dense.shape[0], dense.shape[-1]
    mean, mid_shape = _affine(conv, state.mean, shape, bias=True)
    channels, height, width = mid_shape
    plane = height * width
    # A Sigma, row by row (Sigma is symmetric: pushing its rows through A gives (A Sigma)^T)
    a_sigma = _affine(conv, dense.reshape(batch * n, n), shape, bias=False)[0].reshape(batch, n, -1).mT
    index, mask, out_shape = _pool_windows(pool, mid_shape, mean.device)
    win_cov = _conv_window_blocks(conv, a_sigma, shape, mid_shape, index, mask, block)
    out_mean, var, coef = clark_max(mean[:, index], win_cov, mask)
    coef = coef * mask
    # X = C A Sigma (o, n), then C A Sigma A^T C^T = (A X^T)^T combined by C
    x_rows = torch.cat(
        [(a_sigma[:, index[s : s + block]] * coef[:, s : s + block, :, None]).sum(-2) for s in range(0, index.shape[0], block)],
        dim=1,
    )
    n_out = index.shape[0]
    x_at = _affine(conv, x_rows.reshape(batch * n_out, n), shape, bias=False)[0].reshape(batch, n_out, -1)
    new = _combine_columns(x_at, index, coef, block)
    new = 0.5 * (new + new.mT)
    new = new - torch.diag_embed(torch.diagonal(new, dim1=-2, dim2=-1)) + torch.diag_embed(var)
    state.mean, state.shape, state.dense = out_mean, out_shape, new


def _relu_step(state: _State, closure: str, method: str, terms: int, where: str) -> None:
    if closure == "full" and state.dense is None:
        state.densify(where)
    var = state.variance()
    std = _safe_sqrt(var)
    new_mean, new_var = _relu_moments_std(state.mean, std)
    if state.dense is not None:
        state.dense = relu_covariance(state.mean, state.dense, method=method, terms=terms, validate=False)
        state.mean = new_mean
        return
    positive = std > 0
    std_safe = torch.where(positive, std, torch.ones_like(std))
    # Stein: Cov(relu(y), z) = Phi(mu / sigma) Cov(y, z) for the Gaussian directions z behind the rows.
    gain = torch.where(positive, normal_cdf((state.mean / std_safe).clamp(-1e6, 1e6)), (state.mean > 0).to(var.dtype))
    state.map_rows(lambda rows: rows * gain.unsqueeze(-2))
    state.resid = (new_var - state.explained()).clamp_min(0.0)
    state.mean = new_mean
    if closure == "diag":
        state.fold_rows()


def _combine_columns(matrix: torch.Tensor, index: torch.Tensor, coef: torch.Tensor, block: int) -> torch.Tensor:
    """``matrix @ C^T`` for ``C[b, o, index[o, j]] = coef[b, o, j]``: ``(B, M, N)`` -> ``(B, M, N_out)``, in blocks of outputs."""
    parts = [
        (matrix[:, :, index[s : s + block]] * coef[:, None, s : s + block]).sum(-1)
        for s in range(0, index.shape[0], block)
    ]
    return torch.cat(parts, dim=-1)


def _maxpool_step(layer, state: _State, closure: str, block: int = 512) -> None:
    if len(state.shape) != 3:
        raise ValueError(f"a MaxPool2d needs (C, H, W) units, got shape {state.shape}")
    index, mask, out_shape = _pool_windows(layer, state.shape, state.mean.device)
    win_mean = state.mean[:, index]  # (B, N_out, k)
    if state.dense is not None:
        dense = state.dense
        win_cov = dense[:, index.unsqueeze(-1), index.unsqueeze(-2)]  # (B, N_out, k, k)
        mean, var, coef = clark_max(win_mean, win_cov, mask)
        coef = coef * mask
        # Sigma' = C Sigma C^T, with C the sparse (N_out, N) matrix of Clark coefficients
        right = _combine_columns(dense, index, coef, block)  # Sigma C^T: (B, N, N_out)
        new = _combine_columns(right.mT, index, coef, block)  # C Sigma C^T
        new = 0.5 * (new + new.mT)
        new = new - torch.diag_embed(torch.diagonal(new, dim1=-2, dim2=-1)) + torch.diag_embed(var)
        state.mean, state.shape, state.dense = mean, out_shape, new
        return
    rows = state.rows[:, :, index]  # (B or 1, r, N_out, k)
    right = rows if state.right is None else state.right[:, :, index]
    win_cov = rows.permute(0, 2, 3, 1) @ right.permute(0, 2, 1, 3)  # (B or 1, N_out, k, k)
    win_cov = 0.5 * (win_cov + win_cov.mT) + torch.diag_embed(state.resid[:, index])
    mean, var, coef = clark_max(win_mean, win_cov, mask)
    coef = (coef * mask).unsqueeze(1)
    state.rows = (rows * coef).sum(-1)
    if state.right is not None:
        state.right = (right * coef).sum(-1)
    state.resid = (var - state.explained()).clamp_min(0.0)
    state.mean, state.shape = mean, out_shape
    if closure == "diag":
        state.fold_rows()
    elif closure == "full":
        state.densify("a max-pool")


def _plan(model: nn.Sequential) -> list[tuple[int, nn.Module]]:
    """The layers in the order they are applied: a ReLU directly followed by a MaxPool2d moves after it."""
    layers = list(enumerate(model))
    order, i = [], 0
    while i < len(layers):
        idx, layer = layers[i]
        if isinstance(layer, nn.ReLU) and i + 1 < len(layers) and isinstance(layers[i + 1][1], nn.MaxPool2d):
            order += [layers[i + 1], layers[i]]
            i += 2
        else:
            order.append(layers[i])
            i += 1
    return order


def moments(
    model: nn.Sequential,
    mean: torch.Tensor,
    cov,
    closure: str = "lowrank",
    output: str = "cov",
    *,
    rank: int | None = None,
    method: str = "exact",
    terms: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (or variance) of ``model(x)`` for ``x ~ N(mean, cov)``, layer by layer.

    Args:
        model: an ``nn.Sequential`` of ``Conv2d`` (zero padding), ``MaxPool2d``, ``AvgPool2d``, ``Flatten``,
            ``Linear``, ``ReLU`` and ``Identity`` layers, in eval mode, on the inputs' device. Its parameters are
            used in the inputs' dtype (so a float32 model gives float64 moments for float64 inputs).
        mean: ``(B, *input_shape)`` float32 or float64.
        cov: ``(B, D, D)`` or ``(D, D)`` (shared) symmetric PSD, ``D = prod(input_shape)``; or a float / 0-dim
            tensor ``sigma^2`` for isotropic noise. Per-entry variances ``v``: pass ``torch.diag_embed(v)``.
        closure: ``"diag"``, ``"lowrank"`` or ``"full"`` (see the module docstring).
        output: ``"cov"`` for ``(B, K, K)``, ``"var"`` for its ``(B, K)`` diagonal; ``K`` = the output's size.
        rank: ``"lowrank"`` only: keep the ``rank`` leading eigen-directions of ``cov`` as rows and the rest of each
            input's variance as independent noise (default: every direction, the rank of ``cov``). An isotropic
            scalar ``cov`` has no leading directions and keeps none. The truncation goes through an eigen-
            decomposition, whose derivative is undefined where eigenvalues tie (e.g. ``c * I``): gradients with
            respect to ``cov`` are then not finite, and which of the tied directions are kept is arbitrary.
        method, terms: ``"full"`` only: the ReLU covariance formula of :func:`netmoments.relu_covariance`.

    Returns:
        ``(mean (B, K), cov (B, K, K) or var (B, K))`` in ``mean``'s dtype, on its device, differentiable with
        respect to ``mean``, ``cov`` and the model's parameters.
    """
    if closure not in CLOSURES:
        raise ValueError(f"closure must be one of {CLOSURES}, got {closure!r}")
    if output not in ("cov", "var"):
        raise ValueError(f"output must be 'cov' or 'var', got {output!r}")
    if rank is not None:
        if closure != "lowrank":
            raise ValueError(f"rank applies to closure='lowrank' only, got closure={closure!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be a non-negative int, got {rank!r}")
    _check_method(method, terms)
    _check_model(model)
    _, cov = _check_inputs(model, mean, cov)
    state = _input_state(mean, cov, rank)
    plan = _plan(model)
    last_nonlinear = max((pos for pos, (_, layer) in enumerate(plan) if isinstance(layer, _NONLINEAR)), default=-1)
    fused = False
    for pos, (idx, layer) in enumerate(plan):
        if fused:
            fused = False
            continue
        if pos == last_nonlinear + 1 and state.dense is None:
            # From here on the network is affine: map the independent part with its correlations, exactly.
            state.unfold_resid()
        where = f"model[{idx}] ({type(layer).__name__})"
        following = plan[pos + 1][1] if pos + 1 < len(plan) else None
        fusable = isinstance(layer, nn.Conv2d) and layer.groups == 1 and not isinstance(layer.padding, str)
        if state.dense is not None and fusable and isinstance(following, nn.MaxPool2d):
            _conv_pool_dense_step(layer, following, state)
            fused = True
        elif isinstance(layer, nn.ReLU):
            _relu_step(state, closure, method, terms, where)
        elif isinstance(layer, nn.MaxPool2d):
            _maxpool_step(layer, state, closure)
        else:
            _affine_step(layer, state)
    if output == "var":
        return state.mean, state.variance().clamp_min(0.0)
    return state.mean, state.covariance()


def _sigma_point_factor(mean: torch.Tensor, cov) -> torch.Tensor:
    """Rows ``(B, r, D)`` with ``rows^T rows = cov``: the columns of :func:`~netmoments.gaussian.covariance_sqrt`
    that are not zero (a rank-``r`` covariance puts sigma points along its ``r`` directions only)."""
    batch, dim = mean.shape[0], math.prod(mean.shape[1:])
    if not isinstance(cov, torch.Tensor) or cov.dim() == 0:
        std = _safe_sqrt(torch.as_tensor(cov, dtype=mean.dtype, device=mean.device))
        return (std * torch.eye(dim, dtype=mean.dtype, device=mean.device)).expand(batch, dim, dim)
    factor = covariance_sqrt(cov.expand(batch, dim, dim))
    used = (factor != 0).any(-2).any(0)
    if not bool(used.any()):
        used[0] = True  # zero covariance: one direction of zeros keeps the centre point and its weights defined
    return factor[..., used].mT


def unscented(
    model: nn.Module,
    mean: torch.Tensor,
    cov,
    output: str = "cov",
    *,
    kappa: float = 0.0,
    batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unscented transform: mean and covariance of ``model(x)`` from ``2 r + 1`` sigma points.

    With ``cov = L L^T`` of rank ``r``, the points are ``mean`` and ``mean +- sqrt(r + kappa) L_i``, weighted
    ``kappa / (r + kappa)`` and ``1 / (2 (r + kappa))``. Exact for affine networks; for a network with ``D`` inputs
    it costs ``2 D + 1`` forward passes (1,569 for an MNIST digit with dense noise).

    Args:
        model: any ``nn.Module`` mapping ``(M, *input_shape)`` to ``(M, ...)``; its parameters are used in the
            inputs' dtype.
        mean, cov: as in :func:`moments`.
        kappa: the centre point's weight parameter (``r + kappa > 0``).
        batch_size: forward passes per call.

    Returns:
        ``(mean (B, K), cov (B, K, K) or var (B, K))``.
    """
    if output not in ("cov", "var"):
        raise ValueError(f"output must be 'cov' or 'var', got {output!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("model is in training mode; call model.eval() first")
    _, cov = _check_inputs(model, mean, cov)
    factor = _sigma_point_factor(mean, cov)  # (B, r, D)
    batch, r = factor.shape[0], factor.shape[1]
    if not math.isfinite(kappa) or r + kappa <= 0:
        raise ValueError(f"kappa must be finite with rank + kappa > 0 (rank {r}), got {kappa!r}")
    params = {name: p.to(mean.dtype) for name, p in model.named_parameters()}
    params.update({name: b.to(mean.dtype) if b.is_floating_point() else b for name, b in model.named_buffers()})
    scale = math.sqrt(r + kappa)
    offsets = torch.cat([torch.zeros_like(factor[:, :1]), scale * factor, -scale * factor], dim=1)
    points = (mean.reshape(batch, 1, -1) + offsets).reshape(batch * (2 * r + 1), *mean.shape[1:])
    outs = [
        torch.func.functional_call(model, params, (points[s : s + batch_size],)).reshape(min(batch_size, len(points) - s), -1)
        for s in range(0, len(points), batch_size)
    ]
    values = torch.cat(outs).reshape(batch, 2 * r + 1, -1)
    weights = torch.full((2 * r + 1,), 1.0 / (2.0 * (r + kappa)), dtype=mean.dtype, device=mean.device)
    weights[0] = kappa / (r + kappa)
    out_mean = (weights[:, None] * values).sum(1)
    centred = values - out_mean.unsqueeze(1)
    if output == "var":
        return out_mean, (weights[:, None] * centred * centred).sum(1)
    out_cov = (centred * weights[:, None]).mT @ centred
    return out_mean, 0.5 * (out_cov + out_cov.mT)
