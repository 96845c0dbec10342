"""Linearizing deep piecewise-linear networks around a point (spec section 6).

A network built from convolutions, pooling, flattening, linear layers and ReLUs is piecewise affine: inside
the region where every ReLU's on/off pattern and every max-pool's argmax stay fixed it *is* an affine map.
:func:`affine_linearize` returns that map at a point (one stage, fully affine). :func:`two_stage_linearize`
keeps one ReLU: everything before it becomes ``A x + c1`` and everything after it ``B h + c2``, giving an
:class:`netmoments.AffineReLUAffine` whose Gaussian moments are known in closed form. It is exact as long as
the layers *before* the kept ReLU stay in the point's linear region (the kept ReLU itself may switch freely),
and, for the default last ReLU of a classifier, everything after it is one linear layer and always exact.

All maps act on *flattened* inputs (``n = C * H * W``). Jacobians are computed for a whole batch of points
with ``torch.func.vmap`` over ``jacfwd`` / ``jacrev`` (one vectorised pass per chunk of points, never one
backward per output row).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn
from torch.func import jacfwd, jacrev, vmap

from .affine import AffineReLUAffine

__all__ = [
    "SUPPORTED_LAYERS",
    "relu_positions",
    "split_at_relu",
    "batched_jacobian",
    "affine_linearize",
    "two_stage_linearize",
    "activation_pattern",
    "prune_inactive_units",
    "pixel_noise_sensitivity",
    "maxpool_ties",
]

SUPPORTED_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Identity)


def _check_sequential(model) -> nn.Sequential:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    for i, layer in enumerate(model):
        if not isinstance(layer, SUPPORTED_LAYERS):
            names = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
            raise TypeError(f"model[{i}] is a {type(layer).__name__}; only piecewise-linear layers ({names}) are supported")
    return model


def relu_positions(model: nn.Sequential) -> list[int]:
    """Indices into ``model`` of its ``nn.ReLU`` layers, in order."""
    _check_sequential(model)
    return [i for i, layer in enumerate(model) if isinstance(layer, nn.ReLU)]


def split_at_relu(model: nn.Sequential, relu_index: int = -1) -> tuple[nn.Sequential, nn.Sequential]:
    """Split ``model`` at its ``relu_index``-th ReLU (negative counts from the end; -1 = the last ReLU).

    Returns ``(before, after)`` with ``model == after o relu o before``; the ReLU itself is in neither part.
    """
    positions = relu_positions(model)
    if not positions:
        raise ValueError("model has no nn.ReLU layer, so there is nothing to split at")
    if not isinstance(relu_index, int) or isinstance(relu_index, bool):
        raise TypeError(f"relu_index must be an int, got {type(relu_index).__name__}")
    if not -len(positions) <= relu_index < len(positions):
        raise ValueError(
            f"relu_index={relu_index} is out of range: model has {len(positions)} ReLU(s), "
            f"valid indices are {-len(positions)}..{len(positions) - 1}"
        )
    at = positions[relu_index]
    return model[:at], model[at + 1 :]


def _model_like(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """``model`` itself if it already has ``dtype``/``device``, else a converted copy (the caller's is untouched)."""
    params = list(model.parameters()) + list(model.buffers())
    if all(p.dtype == dtype and p.device == device for p in params):
        return model
    return copy.deepcopy(model).to(device=device, dtype=dtype)


def _infer_input_shape(model: nn.Sequential, point: torch.Tensor, input_shape) -> tuple[tuple[int, ...], bool]:
    """(shape of one input as the model wants it, whether ``point`` is batched)."""
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        n = math.prod(shape)
        if tuple(point.shape) in (shape, (n,)):
            return shape, False
        if point.dim() >= 1 and (tuple(point.shape[1:]) == shape or tuple(point.shape[1:]) == (n,)):
            return shape, True
        raise ValueError(
            f"point has shape {tuple(point.shape)}; expected {shape} or ({n},) for one point, "
            f"or (B, {', '.join(map(str, shape))}) / (B, {n}) for a batch"
        )
    if point.dim() in (3, 4):
        return tuple(point.shape[-3:]), point.dim() == 4
    if point.dim() not in (1, 2):
        raise ValueError(
            f"point must have shape (n,), (B, n), (C, H, W) or (B, C, H, W), got {tuple(point.shape)}"
        )
    n = point.shape[-1]
    first = next((layer for layer in model if not isinstance(layer, nn.Identity)), None)
    if isinstance(first, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        channels = first.in_channels if isinstance(first, nn.Conv2d) else 1
        side = math.isqrt(n // channels) if n % channels == 0 else 0
        if side * side * channels != n:
            raise ValueError(
                f"point has {n} entries, which is not a square image with {channels} channel(s); pass input_shape"
            )
        return (channels, side, side), point.dim() == 2
    return (n,), point.dim() == 2


def batched_jacobian(
    fn,
    points: torch.Tensor,
    mode: str = "auto",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and Jacobians of a vector function at a batch of points.

    Args:
        fn: maps one point ``(n,)`` to ``(m,)`` (written for a single point; it is vmapped).
        points: ``(B, n)``.
        mode: ``"fwd"`` (``jacfwd``: cost ~ n passes), ``"rev"`` (``jacrev``: cost ~ m passes) or ``"auto"``
            (the cheaper of the two by ``min(n, m)``).
        chunk_size: points per vectorised pass (bounds memory); ``None`` = all at once.

    Returns:
        ``values (B, m)``, ``jacobians (B, m, n)``.
    """
    if mode not in ("auto", "fwd", "rev"):
        raise ValueError(f"mode must be 'auto', 'fwd' or 'rev', got {mode!r}")
    if points.dim() != 2:
        raise ValueError(f"points must have shape (B, n), got {tuple(points.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    def with_value(x):
        y = fn(x)
        return y, y

    if mode == "auto":
        with torch.no_grad():
            m = fn(points[0]).numel()
        mode = "fwd" if points.shape[-1] <= m else "rev"
    jac = (jacfwd if mode == "fwd" else jacrev)(with_value, has_aux=True)
    step = points.shape[0] if chunk_size is None else chunk_size
    jacobians, values = [], []
    for start in range(0, points.shape[0], step):
        j, v = vmap(jac)(points[start : start + step])
        jacobians.append(j)
        values.append(v)
    return torch.cat(values), torch.cat(jacobians)


def _flat_fn(part: nn.Module, shape: Sequence[int]):
    def fn(x):
        return part(x.reshape(1, *shape)).reshape(-1)

    return fn


def _prepare(model, point, input_shape, dtype):
    model = _check_sequential(model)
    if not isinstance(point, torch.Tensor):
        raise TypeError(f"point must be a torch.Tensor, got {type(point).__name__}")
    if not point.is_floating_point():
        raise TypeError(f"point must have a floating dtype, got {point.dtype}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    if not torch.isfinite(point).all():
        raise ValueError("point contains NaN or inf")
    shape, batched = _infer_input_shape(model, point, input_shape)
    dtype = point.dtype if dtype is None else dtype
    flat = point.to(dtype).reshape(-1 if batched else 1, math.prod(shape))
    return _model_like(model, dtype, point.device), flat, shape, batched


_PIECEWISE = (nn.ReLU, nn.MaxPool2d)


def _affine_at(part, points, shape, mode, chunk_size):
    """(W (B, m, n), b (B, m), part(points) (B, m)) of the first-order expansion of ``part`` at ``points``.

    A part without ReLU or max-pool is affine: its Jacobian is the same at every point, so it is computed once
    and returned as an expanded (stride-0) view over the batch instead of once per point.
    """
    if len(points) > 1 and not any(isinstance(layer, _PIECEWISE) for layer in part):
        _, jac = batched_jacobian(_flat_fn(part, shape), points[:1], mode=mode)
        jac = jac.expand(points.shape[0], -1, -1)
        with torch.no_grad():
            values = part(points.reshape(-1, *shape)).reshape(points.shape[0], -1)
    else:
        values, jac = batched_jacobian(_flat_fn(part, shape), points, mode=mode, chunk_size=chunk_size)
    bias = values - (jac @ points.unsqueeze(-1)).squeeze(-1)
    return jac, bias, values


def affine_linearize(
    model: nn.Sequential,
    point: torch.Tensor,
    *,
    input_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    mode: str = "auto",
    chunk_size: int | None = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order Taylor expansion of the whole network at ``point``: ``model(x) ~ W x + b`` (x flattened).

    Exact inside ``point``'s linear region (all ReLU patterns and pooling argmaxes unchanged).

    Args:
        model: ``nn.Sequential`` of Conv2d / MaxPool2d / AvgPool2d / Flatten / Linear / ReLU / Identity.
        point: one point ``(C, H, W)`` or ``(n,)``, or a batch ``(B, C, H, W)`` or ``(B, n)``.
        input_shape: shape of one input as the model takes it (inferred when omitted).
        dtype: computation dtype (e.g. ``torch.float64``); default ``point.dtype``.
        mode, chunk_size: see :func:`batched_jacobian`.

    Returns:
        ``W (p, n)``, ``b (p,)`` for one point; ``W (B, p, n)``, ``b (B, p)`` for a batch; on ``point``'s device.
    """
    model, flat, shape, batched = _prepare(model, point, input_shape, dtype)
    weight, bias, _ = _affine_at(model, flat, shape, mode, chunk_size)
    if not batched:
        return weight[0], bias[0]
    return weight, bias


def two_stage_linearize(
    model: nn.Sequential,
    point: torch.Tensor,
    relu_index: int = -1,
    *,
    input_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    mode: str = "auto",
    chunk_size: int | None = 16,
) -> AffineReLUAffine:
    """Two-stage linearization: ``model(x) ~ B relu(A x + c1) + c2`` around ``point`` (x flattened).

    Stage 1: ``A = J(p)``, ``c1 = f(p) - J(p) p`` for ``f`` = everything before the chosen ReLU. Stage 2: the
    same for everything after it, at ``relu(f(p))``. Exact wherever the layers before the ReLU stay in
    ``point``'s linear region and the layers after it stay in ``relu(f(p))``'s.

    Args:
        model: ``nn.Sequential`` of Conv2d / MaxPool2d / AvgPool2d / Flatten / Linear / ReLU / Identity.
        point: one point ``(C, H, W)`` or ``(n,)``, or a batch ``(B, C, H, W)`` or ``(B, n)``.
        relu_index: which ReLU to keep (-1 = the last).
        input_shape: shape of one input as the model takes it (inferred when omitted).
        dtype: computation dtype (e.g. ``torch.float64``); default ``point.dtype``.
        mode: Jacobian mode for both stages (``"auto"`` picks forward or reverse by the smaller dimension).
        chunk_size: points per vectorised Jacobian pass (bounds memory; ~16 LeNet points is ~1-2 GB).

    Returns:
        :class:`netmoments.AffineReLUAffine` with ``A (m, n)``, ``c1 (m,)``, ``B (p, m)``, ``c2 (p,)``, or with a
        leading batch dimension ``B`` on each for a batch of points. A factor that cannot depend on the point
        (everything on its side of the kept ReLU is affine, e.g. ``B`` at a classifier's last ReLU) is then an
        expanded view (``stride(0) == 0``) of one matrix rather than ``B`` copies.
    """
    model, flat, shape, batched = _prepare(model, point, input_shape, dtype)
    before, after = split_at_relu(model, relu_index)
    A, c1, pre = _affine_at(before, flat, shape, mode, chunk_size)
    with torch.no_grad():
        hidden_shape = before(flat[:1].reshape(1, *shape)).shape[1:]
    if len(after) == 0:
        eye = torch.eye(A.shape[-2], dtype=A.dtype, device=A.device)
        B, c2 = eye.expand(flat.shape[0], -1, -1), torch.zeros_like(c1)
    else:
        B, c2, _ = _affine_at(after, torch.relu(pre).detach(), hidden_shape, mode, chunk_size)
    A, c1, B, c2 = (t.detach() for t in (A, c1, B, c2))
    if not batched:
        A, c1, B, c2 = A[0], c1[0], B[0], c2[0]
    # Point-independent factors (e.g. LeNet's B = fc2.weight) stay expanded views: no per-point copies.
    A, B = (t if t.dim() > 2 and t.stride(0) == 0 else t.contiguous() for t in (A, B))
    return AffineReLUAffine(A, c1.contiguous(), B, c2.contiguous())


@torch.no_grad()
def activation_pattern(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The discrete state that fixes ``model``'s linear region at each input of a batch.

    Args:
        x: a batch ``(B, ...)`` in the model's input shape.

    Returns:
        One tensor per ReLU (``bool``, ``(B, ...)``: unit is on) and per max-pool (``int64`` argmax indices),
        in layer order. Two inputs lie in the same linear region exactly when all these agree.
    """
    model = _check_sequential(model)
    pattern = []
    for layer in model:
        if isinstance(layer, nn.MaxPool2d):
            out, idx = nn.functional.max_pool2d(
                x,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
                ceil_mode=layer.ceil_mode,
                return_indices=True,
            )
            pattern.append(idx)
            x = out
            continue
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            pattern.append(x > 0)
    return pattern


@torch.no_grad()
def prune_inactive_units(
    net: AffineReLUAffine, mean: torch.Tensor, cov: torch.Tensor, threshold: float = 10.0
) -> AffineReLUAffine:
    """Drop hidden units that are off for (numerically) every input draw; the moments do not change.

    A unit whose pre-activation ``y_i ~ N(mu_i, s_i^2)`` has ``mu_i / s_i < -threshold`` has ``P(y_i > 0) =
    Phi(-threshold)`` (``~1e-23`` at 10) and contributes ``E[q_i]``, ``E[q_i q_j] < s_i phi(threshold)`` ~ 0 to
    every moment. A trained classifier's wide layer is mostly such units at any one input (about half of
    LeNet's 1024 at sigma = 0.1), and the pairwise cost falls with the square of the kept width.

    Args:
        net: with ``A (..., m, n)``, ``c1 (..., m)``, ``B (..., p, m)``, ``c2 (..., p)``.
        mean: ``(..., n)``; cov: ``(..., n, n)`` (the input distribution the moments will be taken under).
        threshold: keep units with ``mu_i / s_i >= -threshold`` (zero-variance units are kept when ``mu_i > 0``).

    Returns:
        A new :class:`AffineReLUAffine` with ``m'`` hidden units (the same ``m'`` across the batch: the largest
        number kept by any item, each item keeping its own most active units, so some dead ones may remain).
    """
    y_mean = (net.A @ mean.unsqueeze(-1)).squeeze(-1) + net.c1
    y_std = ((net.A @ cov) * net.A).sum(-1).clamp_min(0).sqrt()
    score = torch.where(y_std > 0, y_mean / y_std.clamp_min(torch.finfo(y_std.dtype).tiny), y_mean.sign() * math.inf)
    keep_count = int((score >= -threshold).sum(-1).max().clamp_min(1))
    order = torch.argsort(score, dim=-1, descending=True)[..., :keep_count]
    batch = torch.broadcast_shapes(net.A.shape[:-2], mean.shape[:-1], cov.shape[:-2])
    order = order.expand(*batch, keep_count)
    A = net.A.expand(*batch, *net.A.shape[-2:])
    B = net.B.expand(*batch, *net.B.shape[-2:])
    c1 = net.c1.expand(*batch, net.c1.shape[-1])
    c2 = net.c2.expand(*batch, net.c2.shape[-1])
    A = A.gather(-2, order.unsqueeze(-1).expand(*order.shape, A.shape[-1]))
    c1 = c1.gather(-1, order)
    B = B.gather(-1, order.unsqueeze(-2).expand(*batch, B.shape[-2], keep_count))
    return AffineReLUAffine(A, c1, B, c2)


def pixel_noise_sensitivity(
    net: AffineReLUAffine,
    mean: torch.Tensor,
    pixel_var: torch.Tensor,
    logits: Sequence[int] | None = None,
    method: str = "exact",
    prune: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which input pixels' noise drives each output's variance: ``S_ki = v_i dVar[g_k]/dv_i``.

    The input is ``x ~ N(mean, diag(v))`` (independent pixel noise with variances ``v = pixel_var``) and the
    derivative is taken through the closed-form variance, so it accounts for hidden units switching on and off.
    For a purely linear network ``Var[g_k] = sum_i w_ki^2 v_i`` and ``S_ki = w_ki^2 v_i`` sums to the variance
    exactly (Euler's identity for a function of degree one in ``v``); through a ReLU the sum is close to, but not
    exactly, the variance.

    Args:
        net: one (unbatched) network, ``A (m, n)``, ``c1 (m,)``, ``B (p, m)``, ``c2 (p,)``.
        mean: ``(n,)`` the clean input.
        pixel_var: ``(n,)`` per-pixel noise variances ``>= 0`` (or a scalar, broadcast).
        logits: which outputs to attribute (default: all ``p``).
        method: hidden covariance method of :meth:`AffineReLUAffine.moments`.
        prune: drop always-off hidden units first (:func:`prune_inactive_units`; exact for ``method="exact"``).

    Returns:
        ``attribution (len(logits), n)`` and ``variance (p,)``, both in ``mean``'s dtype.
    """
    if net.A.dim() != 2:
        raise ValueError(f"net must be unbatched (A of shape (m, n)), got A of shape {tuple(net.A.shape)}")
    n = net.A.shape[-1]
    if mean.shape != (n,):
        raise ValueError(f"mean must have shape ({n},), got {tuple(mean.shape)}")
    pixel_var = torch.as_tensor(pixel_var, dtype=mean.dtype, device=mean.device).expand(n)
    if (pixel_var < 0).any():
        raise ValueError("pixel_var must be >= 0")
    p = net.B.shape[-2]
    logits = list(range(p)) if logits is None else [int(k) for k in logits]
    if any(not 0 <= k < p for k in logits):
        raise ValueError(f"logits must be in 0..{p - 1}, got {logits}")
    v = pixel_var.detach().clone().requires_grad_(True)
    cov = torch.diag_embed(v)
    used = prune_inactive_units(net, mean, cov.detach()) if prune else net
    with torch.enable_grad():
        _, var = used.moments(mean, cov, method=method, output="var")
        rows = [torch.autograd.grad(var[k], v, retain_graph=i < len(logits) - 1)[0] for i, k in enumerate(logits)]
    return torch.stack(rows) * v.detach(), var.detach()


@torch.no_grad()
def maxpool_ties(model: nn.Sequential, x: torch.Tensor, rtol: float = 0.0) -> list[tuple[int, int]]:
    """Count the max-pool windows whose largest input is tied (a point on a linear-region boundary).

    A blank image background makes a convolution output the same value (its bias) across a whole pooling
    window, so the window's argmax is not unique, the network is not differentiable there, and any noise picks
    the largest of several equal affine functions: the linearization is exact on no neighbourhood of the point.

    Args:
        model: ``nn.Sequential`` (only its ``nn.MaxPool2d`` layers with ``stride == kernel_size`` are inspected).
        x: one input ``(C, H, W)`` (or a batch ``(B, C, H, W)``, counted together).
        rtol: count as tied when the top two differ by at most ``rtol * |top|`` (0 = exact ties).

    Returns:
        ``[(tied windows, all windows)]`` per max-pool layer, in order.
    """
    model = _check_sequential(model)
    x = x if x.dim() == 4 else x.unsqueeze(0)
    out = []
    for layer in model:
        if isinstance(layer, nn.MaxPool2d):
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
            windows = x.unfold(2, k, k).unfold(3, k, k).reshape(*x.shape[:2], x.shape[2] // k, x.shape[3] // k, -1)
            top2 = windows.topk(2, dim=-1).values
            tied = (top2[..., 0] - top2[..., 1]) <= rtol * top2[..., 0].abs()
            out.append((int(tied.sum()), tied.numel()))
        x = layer(x)
    return out
