"""Linearizing deep piecewise-linear networks around a point: NM20's two-stage linearization (TSL).

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

Nothing here changes process-wide state: torch's thread count is the caller's to set (see
:func:`two_stage_linearize`'s ``threads``).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import copy
import math
import numbers
import warnings
from typing import Sequence

import torch
from torch import nn
from torch.func import jacfwd, jacrev, vmap

from ._validation import check_dtype, renamed
from .affine import AffineReLUAffine

__all__ = [
    "SUPPORTED_LAYERS",
    "check_sequential",
    "relu_positions",
    "split_at_relu",
    "batched_jacobian",
    "affine_linearize",
    "two_stage_linearize",
    "TwoStageLinearization",
    "activation_pattern",
    "prune_inactive_units",
    "pixel_noise_sensitivity",
    "maxpool_ties",
    "split_expected_linearization",
]

#: The layer types a network may be built from to be linearized.
SUPPORTED_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Identity)


def check_sequential(model) -> nn.Sequential:
    """``model`` if it is an ``nn.Sequential`` of :data:`SUPPORTED_LAYERS`; else a ``TypeError`` naming the layer."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
    for i, layer in enumerate(model):
        if not isinstance(layer, SUPPORTED_LAYERS):
            names = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
            raise TypeError(f"model[{i}] is a {type(layer).__name__}; only piecewise-linear layers ({names}) are supported")
    return model


def relu_positions(model: nn.Sequential) -> list[int]:
    """Indices into ``model`` of its ``nn.ReLU`` layers, in order."""
    check_sequential(model)
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


_CONSTANT_POINT = (
    "{name} requires grad, but the linearization treats the point as a constant: A, c1, B and c2 are piecewise "
    "constant in it (their derivative is 0 wherever it exists), so no gradient flows back to {name}. Pass "
    "{name}.detach() to silence this warning."
)


def _prepare(model, point, input_shape, dtype, name: str = "point"):
    model = check_sequential(model)
    if not isinstance(point, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(point).__name__}")
    if not point.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {point.dtype}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    # the computation dtype: an explicit dtype may widen a half-precision point (exactly), never compute in one
    check_dtype("dtype" if dtype is not None else name, dtype if dtype is not None else point.dtype)
    if point.requires_grad and torch.is_grad_enabled():
        warnings.warn(_CONSTANT_POINT.format(name=name), UserWarning, stacklevel=3)
    if not torch.isfinite(point).all():
        raise ValueError(f"{name} contains NaN or inf")
    shape, batched = _infer_input_shape(model, point, input_shape)
    if batched and point.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(point.shape)}); pass at least one point")
    dtype = point.dtype if dtype is None else dtype
    flat = point.detach().to(dtype).reshape(-1 if batched else 1, math.prod(shape))
    return _model_like(model, dtype, point.device), flat, shape, batched


_PIECEWISE = (nn.ReLU, nn.MaxPool2d)


# ---------------------------------------------------------------------------------------------------------------
# Structured (local) Jacobians: compose the layers at fixed ReLU masks and max-pool choices, using locality.
#
# A convolutional feature map's Jacobian with respect to the input image is stored as *patches*: unit (c, h, w)
# depends only on input pixels in a window whose top-left corner is (h * S0 + O0, w * S1 + O1) and whose size is
# (K0, K1), for every input channel. Each layer maps this geometry to a new one (a convolution with kernel k and
# stride s widens the window by (k - 1) * S and multiplies the stride by s), so the cost of a conv layer is the
# size of its output times its kernel times the window, never the number of input pixels. The first Linear layer
# after the convolutions is applied block-wise (one small GEMM per spatial position) and scattered onto the image
# grid; from there on the Jacobian is a dense matrix. A part without convolutions starts dense (its first Linear
# *is* the Jacobian). Layers this path does not know (groups, dilation, ceil_mode, ...) fall back to torch.func.
# ---------------------------------------------------------------------------------------------------------------

def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _structured_supported(part: nn.Sequential, shape: Sequence[int]) -> bool:
    """Whether :func:`_structured_jacobian` handles ``part`` on inputs of ``shape`` (else use torch.func)."""
    spatial = len(shape) == 3
    for layer in part:
        if isinstance(layer, nn.Conv2d):
            if (not spatial or layer.groups != 1 or _pair(layer.dilation) != (1, 1) or isinstance(layer.padding, str)
                    or layer.padding_mode != "zeros"):
                return False
        elif isinstance(layer, nn.MaxPool2d):
            if not spatial or layer.ceil_mode or _pair(layer.dilation) != (1, 1):
                return False
        elif isinstance(layer, nn.AvgPool2d):
            if (not spatial or layer.ceil_mode or layer.divisor_override is not None
                    or (not layer.count_include_pad and _pair(layer.padding) != (0, 0))):
                return False
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                return False
            spatial = False
        elif isinstance(layer, nn.Linear):
            if spatial:
                return False
    return True


class _Patches:
    """The Jacobian of a feature map ``(Bt, C, H, W)`` w.r.t. an input image ``(Cin, Hin, Win)``, as local windows.

    ``values (K0, K1, Cin, Bt, C, H, W)``: entry ``[ky, kx, ci, b, c, h, w]`` is the derivative of unit
    ``(c, h, w)`` of item ``b`` w.r.t. input pixel ``(ci, h * stride[0] + offset[0] + ky, w * stride[1] +
    offset[1] + kx)`` (offsets may be negative: zero padding). The window indices come first so that placing a
    window at an offset inside a larger one is a slice of the leading dimensions, with whole feature maps as
    contiguous rows (strided writes of a few floats each cost several times the arithmetic).
    """

    def __init__(self, values, stride, offset):
        self.values, self.stride, self.offset = values, stride, offset

    @classmethod
    def identity(cls, batch: int, shape, dtype, device) -> "_Patches":
        C, H, W = shape
        eye = torch.eye(C, dtype=dtype, device=device).view(1, 1, C, 1, C, 1, 1)
        return cls(eye.expand(1, 1, C, batch, C, H, W), (1, 1), (0, 0))

    @property
    def window(self) -> tuple[int, int]:
        return self.values.shape[0], self.values.shape[1]

    def _grown(self, kernel, stride, padding) -> tuple[torch.Tensor, tuple, tuple]:
        """A zero window grown by a ``kernel`` of taps, and the new geometry (stride, offset)."""
        (k0, k1), (S0, S1), (K0, K1) = kernel, self.stride, self.window
        geometry = ((stride[0] * S0, stride[1] * S1), (self.offset[0] - padding[0] * S0, self.offset[1] - padding[1] * S1))
        return (K0 + (k0 - 1) * S0, K1 + (k1 - 1) * S1), geometry

    def _shifted_sum(self, taps, kernel, stride, padding, out_hw, channels):
        """Sum over kernel taps ``(a, b)`` of ``taps(a, b, src)`` placed at offset ``(a * S0, b * S1)``.

        ``src (K0, K1, Cin, Bt, C, Ho, Wo)`` is this map read at rows ``ho * s - p + a`` (zero outside the map).
        """
        (k0, k1), (s0, s1), (p0, p1) = kernel, stride, padding
        (S0, S1), (K0, K1) = self.stride, self.window
        Ho, Wo = out_hw
        padded = nn.functional.pad(self.values, (p1, p1, p0, p0)) if (p0 or p1) else self.values
        size, geometry = self._grown(kernel, stride, padding)

        def add_tap(out, tap):
            a, b = tap
            src = padded[..., a : a + s0 * (Ho - 1) + 1 : s0, b : b + s1 * (Wo - 1) + 1 : s1]
            out[a * S0 : a * S0 + K0, b * S1 : b * S1 + K1] += taps(a, b, src)

        out = _accumulate(lambda: padded.new_zeros(*size, *padded.shape[2:4], channels, Ho, Wo),
                          [(a, b) for a in range(k0) for b in range(k1)], add_tap, padded.device)
        return _Patches(out, *geometry)

    def conv(self, layer: nn.Conv2d, out_hw) -> "_Patches":
        weight = layer.weight

        def taps(a, b, src):
            lead, (C, Ho, Wo) = src.shape[:4], src.shape[4:]
            return (weight[:, :, a, b] @ src.reshape(-1, C, Ho * Wo)).view(*lead, -1, Ho, Wo)

        return self._shifted_sum(taps, _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding), out_hw,
                                 weight.shape[0])

    def avg_pool(self, layer: nn.AvgPool2d, out_hw) -> "_Patches":
        kernel = _pair(layer.kernel_size)
        scale = 1.0 / (kernel[0] * kernel[1])
        stride = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
        return self._shifted_sum(lambda a, b, src: src * scale, kernel, stride, _pair(layer.padding), out_hw,
                                 self.values.shape[4])

    def max_pool(self, layer: nn.MaxPool2d, indices: torch.Tensor) -> "_Patches":
        """``indices (Bt, C, Ho, Wo)``: flat ``h * W + w`` of each window's chosen input (as max_pool2d returns)."""
        kernel = _pair(layer.kernel_size)
        (s0, s1) = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
        (p0, p1) = _pair(layer.padding)
        H, W = self.values.shape[-2:]
        Ho, Wo = indices.shape[-2:]
        (S0, S1), (K0, K1) = self.stride, self.window
        lead = self.values.shape[:5]
        flat = self.values.reshape(*lead, H * W)
        chosen = flat.gather(-1, indices.reshape(1, 1, 1, *indices.shape[:2], Ho * Wo).expand(*lead, -1))
        chosen = chosen.view(*lead, Ho, Wo)
        rows = torch.arange(Ho, device=indices.device).view(-1, 1) * s0 - p0
        cols = torch.arange(Wo, device=indices.device).view(1, -1) * s1 - p1
        tap0, tap1 = indices // W - rows, indices % W - cols  # which tap of its window each unit chose
        size, geometry = self._grown(kernel, (s0, s1), (p0, p1))
        out = chosen.new_zeros(*size, *lead[2:], Ho, Wo)
        for a in range(kernel[0]):
            for b in range(kernel[1]):
                hit = ((tap0 == a) & (tap1 == b)).to(chosen.dtype)
                out[a * S0 : a * S0 + K0, b * S1 : b * S1 + K1] += chosen * hit
        return _Patches(out, *geometry)

    def mask(self, on: torch.Tensor) -> "_Patches":
        return _Patches(self.values * on.to(self.values.dtype), self.stride, self.offset)

    def linear(self, weight: torch.Tensor, in_shape, weight_t: torch.Tensor | None = None) -> torch.Tensor:
        """``weight (O, C * H * W) @ dense Jacobian`` as a dense ``(Bt, O, n)``: one GEMM per spatial position.

        Each position's block ``(window, C) @ (C, O)`` is added onto a canvas that covers every window; the canvas
        is then cropped to the image (the parts outside are zero padding). This costs ``O * C * H * W * window``
        multiply-adds, less than the dense product ``O * C * H * W * n`` whenever windows are smaller than images.
        """
        K0, K1, Cin, Bt, C, H, W = self.values.shape
        out_features = weight.shape[0]
        (S0, S1), (O0, O1) = self.stride, self.offset
        size0, size1 = (H - 1) * S0 + K0, (W - 1) * S1 + K1
        by_position = self.values.permute(5, 6, 0, 1, 2, 3, 4).reshape(H, W, -1, C)
        if weight_t is None:
            weight_t = _weight_by_position(weight, (C, H, W))

        def add_position(canvas, position):
            h, v = position
            block = (by_position[h, v] @ weight_t[h, v]).view(K0, K1, Cin, Bt, out_features)
            canvas[h * S0 : h * S0 + K0, v * S1 : v * S1 + K1] += block

        canvas = _accumulate(lambda: self.values.new_zeros(size0, size1, Cin, Bt, out_features),
                             [(h, v) for h in range(H) for v in range(W)], add_position, self.values.device)
        (r0, r1), (w0, w1) = _clip_window(O0, size0, in_shape[1])
        (c0, c1), (u0, u1) = _clip_window(O1, size1, in_shape[2])
        out = self.values.new_zeros(Bt, out_features, *in_shape)
        out[..., r0:r1, c0:c1] = canvas[w0:w1, u0:u1].permute(3, 4, 2, 0, 1)
        return out.reshape(Bt, out_features, -1)

    def dense(self, in_shape) -> torch.Tensor:
        """The dense Jacobian ``(Bt, C * H * W, n)``."""
        K0, K1, Cin, Bt, C, H, W = self.values.shape
        Hin, Win = in_shape[1:]
        device = self.values.device
        rows = (torch.arange(H, device=device) * self.stride[0] + self.offset[0]).view(H, 1) + torch.arange(K0, device=device)
        cols = (torch.arange(W, device=device) * self.stride[1] + self.offset[1]).view(W, 1) + torch.arange(K1, device=device)
        r, c = rows.view(H, 1, K0, 1), cols.view(1, W, 1, K1)
        inside = (r >= 0) & (r < Hin) & (c >= 0) & (c < Win)
        pixel = torch.where(inside, r * Win + c, Hin * Win)  # (H, W, K0, K1); outside -> a spare column
        src = self.values.permute(3, 4, 5, 6, 2, 0, 1).reshape(Bt, C, H, W, Cin, K0 * K1)
        index = pixel.view(1, 1, H, W, 1, K0 * K1).expand_as(src)
        out = src.new_zeros(Bt, C, H, W, Cin, Hin * Win + 1).scatter_(-1, index, src)
        return out[..., :-1].reshape(Bt, C * H * W, -1)


# How many Python threads the structured CPU path may spread independent work over (the caller's ``threads``).
# A context variable, not a global: each thread and asyncio task sees only what its own caller set.
_WORKER_THREADS: contextvars.ContextVar[int] = contextvars.ContextVar("netmoments_worker_threads", default=1)


@contextlib.contextmanager
def _worker_threads(threads: int):
    """Let :func:`_run_groups` inside the block use ``threads`` Python threads (this context only)."""
    token = _WORKER_THREADS.set(threads)
    try:
        yield
    finally:
        _WORKER_THREADS.reset(token)


def _check_threads(threads) -> int:
    """``threads`` as an int >= 1, else a ``TypeError`` / ``ValueError`` naming it."""
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be a positive int, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads}")
    return int(threads)


def _run_groups(work, items: list, device: torch.device) -> list:
    """``work(group)`` for the items dealt into one group per Python thread allowed (:func:`_worker_threads`).

    Each group runs on its own Python thread; with one-thread torch operations (the caller's
    ``torch.set_num_threads(1)``) the groups never wait for each other: a busy core slows a group down but does
    not stall the others. On other devices, or with one thread allowed, ``[work(items)]``.
    """
    workers = min(_WORKER_THREADS.get(), len(items)) if device.type == "cpu" else 1
    if workers <= 1:
        return [work(items)]
    grad = torch.is_grad_enabled()  # grad mode is per thread

    def run(group):
        # a group never splits again (a fresh thread's context holds the default 1; set it in case it did not)
        token = _WORKER_THREADS.set(1)
        try:
            with torch.set_grad_enabled(grad):
                return work(group)
        finally:
            _WORKER_THREADS.reset(token)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, [items[i::workers] for i in range(workers)]))


def _accumulate(new_buffer, items: list, add, device: torch.device) -> torch.Tensor:
    """``add(buffer, item)`` for every item into one zero ``new_buffer()``, split over the allowed Python threads.

    Each thread sums its items into a buffer of its own and the buffers are then added: one extra pass over
    the buffer buys a split of the work.
    """
    def work(group):
        buffer = new_buffer()
        for item in group:
            add(buffer, item)
        return buffer

    buffers = _run_groups(work, items, device)
    out = buffers[0]
    for buffer in buffers[1:]:
        out += buffer
    return out


def _in_slices(op, length: int, device: torch.device, pieces: int = 8) -> None:
    """``op(rows)`` for consecutive slices ``rows`` covering ``range(length)``, spread over the allowed threads.

    For large transposing copies: they are bound by memory latency, so a second thread helps them too.
    """
    pieces = max(1, min(pieces, length))
    bounds = [slice(i * length // pieces, (i + 1) * length // pieces) for i in range(pieces)]
    _run_groups(lambda group: [op(rows) for rows in group], bounds, device)


def _weight_by_position(weight: torch.Tensor, shape) -> torch.Tensor:
    """A Linear weight ``(O, C * H * W)`` read on a ``(C, H, W)`` map, as ``(H, W, C, O)`` blocks."""
    source = weight.reshape(weight.shape[0], *shape).permute(2, 3, 1, 0)
    out = torch.empty(source.shape, dtype=weight.dtype, device=weight.device)
    _in_slices(lambda rows: out[rows].copy_(source[rows]), source.shape[0], weight.device)
    return out


def _clip_window(start: int, size: int, full: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(input range, window range) of a window ``[start, start + size)`` clipped to ``[0, full)``."""
    lo, hi = max(start, 0), min(start + size, full)
    return (lo, hi), (lo - start, hi - start)


@torch.no_grad()
def _forward_pattern(part: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """``part(x)`` and, per layer, what fixes its local linear map: ReLU masks, max-pool indices, else ``None``."""
    pattern = []
    for layer in part:
        if isinstance(layer, nn.MaxPool2d):
            x, idx = nn.functional.max_pool2d(
                x, layer.kernel_size, layer.stride, layer.padding, layer.dilation, ceil_mode=layer.ceil_mode,
                return_indices=True,
            )
            pattern.append(idx)
            continue
        x = layer(x)
        pattern.append(x > 0 if isinstance(layer, nn.ReLU) else None)
    return x, pattern


def _structured_jacobian(part: nn.Sequential, points: torch.Tensor, shape, pattern, prepared=None) -> torch.Tensor:
    """Jacobian ``(Bt, m, n)`` of ``part`` at the points whose per-layer ``pattern`` is given (see _forward_pattern).

    Returns ``None`` for an empty part (the identity). A part with no conv layer never forms an identity matrix:
    its first Linear's weight is the Jacobian so far. ``prepared`` (a dict) keeps rearranged weights between
    calls on chunks of the same batch.
    """
    prepared = {} if prepared is None else prepared
    Bt = points.shape[0]
    state = None  # None: identity so far; _Patches; or a dense (Bt or 1, m, n) tensor
    spatial = tuple(shape)
    for layer, pat in zip(part, pattern):
        if isinstance(layer, (nn.Identity, nn.Flatten)):
            if isinstance(layer, nn.Flatten):
                spatial_before_flatten, spatial = spatial, (math.prod(spatial),)
            continue
        if isinstance(layer, nn.ReLU):
            on = pat.reshape(Bt, *spatial)
            if state is None:
                state = torch.diag_embed(on.reshape(Bt, -1).to(points.dtype))
            elif isinstance(state, _Patches):
                state = state.mask(on)
            else:
                state = state * on.reshape(Bt, -1, 1).to(state.dtype)
            continue
        if isinstance(layer, nn.Linear):
            weight = layer.weight
            if state is None:
                state = weight.unsqueeze(0)
            elif isinstance(state, _Patches):
                key = ("by_position", id(layer))
                if key not in prepared:
                    prepared[key] = _weight_by_position(weight, spatial_before_flatten)
                state = state.linear(weight, shape, prepared[key])
            else:
                state = weight @ state
            spatial = (weight.shape[0],)
            continue
        # spatial layers: start from the identity as 1x1 windows, one per input pixel and channel
        if state is None:
            state = _Patches.identity(Bt, spatial, points.dtype, points.device)
        if isinstance(layer, nn.MaxPool2d):
            state = state.max_pool(layer, pat)
            spatial = (spatial[0], *pat.shape[-2:])
        else:
            out_hw = _conv_out_hw(layer, spatial[1:])
            state = state.conv(layer, out_hw) if isinstance(layer, nn.Conv2d) else state.avg_pool(layer, out_hw)
            spatial = (layer.out_channels if isinstance(layer, nn.Conv2d) else spatial[0], *out_hw)
    if isinstance(state, _Patches):
        state = state.dense(shape)
    return state.expand(Bt, -1, -1) if state is not None else None


def _conv_out_hw(layer, hw) -> tuple[int, int]:
    kernel = _pair(layer.kernel_size)
    stride = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
    padding = _pair(layer.padding)
    return tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(hw, padding, kernel, stride))


def _linear_apply(part: nn.Sequential, pattern: list, v: torch.Tensor, shape) -> torch.Tensor:
    """The linear part of ``part`` at fixed ``pattern`` applied to ``v (Bt, k, n)`` -> ``(Bt, k, m)``.

    This is the Jacobian-vector product at the points the pattern came from: the network with biases dropped,
    ReLUs replaced by their masks and max-pools by gathers at their recorded choices.
    """
    Bt, k = v.shape[:2]

    def per_item(t):  # (Bt, ...) -> (Bt * k, ...), shared by the k vectors of each point
        return t.unsqueeze(1).expand(Bt, k, *t.shape[1:]).reshape(Bt * k, *t.shape[1:])

    x = v.reshape(Bt * k, *shape)
    for layer, pat in zip(part, pattern):
        if isinstance(layer, nn.Conv2d):
            x = layer._conv_forward(x, layer.weight, None)
        elif isinstance(layer, nn.Linear):
            x = nn.functional.linear(x, layer.weight)
        elif isinstance(layer, nn.MaxPool2d):
            C, H, W = x.shape[1:]
            idx = per_item(pat.reshape(Bt, C, -1))
            x = x.reshape(Bt * k, C, H * W).gather(-1, idx).reshape(Bt * k, C, *pat.shape[-2:])
        elif isinstance(layer, nn.ReLU):
            x = x * per_item(pat).to(x.dtype)
        else:  # AvgPool2d, Flatten, Identity are linear already
            x = layer(x)
    return x.reshape(Bt, k, -1)


class TwoStageLinearization:
    """Matrix-free two-stage linearization ``model(x) ~ B relu(A x + c1) + c2`` at a batch of points.

    ``A`` is never formed unless asked for (:attr:`A`, :meth:`network`): products with it are masked linear
    passes through the layers before the kept ReLU (``A @ v``) and their transposes (``A^T @ u``, by autograd
    through that linear pass), so a caller that needs a few columns or a few output directions pays for those
    only. :meth:`update` moves to new points and recomputes only the points whose linear region changed.

    Args:
        model: ``nn.Sequential`` of Conv2d / MaxPool2d / AvgPool2d / Flatten / Linear / ReLU / Identity.
        points: a batch ``(Bt, C, H, W)`` or ``(Bt, n)`` (a single point ``(C, H, W)`` / ``(n,)`` becomes ``Bt = 1``).
        relu_index: which ReLU to keep (-1 = the last).
        input_shape: shape of one input as the model takes it (inferred when omitted).
        dtype: computation dtype (default ``points.dtype``).
        jacobian: how the dense ``A`` (and ``B``) are formed: ``"structured"`` (layer by layer with locality),
            ``"autograd"`` (torch.func Jacobians) or ``"auto"`` (structured when every layer allows it).
            (Formerly ``method=``, still accepted with a ``DeprecationWarning``.)
        chunk_size: points per dense-Jacobian pass (bounds memory); ``None``: one point at a time for the
            structured method on a CPU (cache-friendly), the whole batch on a GPU, 16 for the autograd method.
        threads: Python threads the structured method may use on a CPU (see :func:`two_stage_linearize`).

    ``points`` is a constant (detached; a ``UserWarning`` if it requires grad), must hold at least one point and be
    float32/float64 (or be widened by ``dtype``).

    Attributes:
        points: ``(Bt, n)``.
        pre: ``(Bt, m)``, the kept ReLU's input at the points.
        c1: ``(Bt, m)``.
        B: ``(Bt, p, m)``, an expanded view when it cannot depend on the point.
        c2: ``(Bt, p)``.
    """

    def __init__(self, model, points, relu_index: int = -1, *, input_shape=None, dtype=None, jacobian: str = "auto",
                 chunk_size: int | None = None, mode: str = "auto", threads: int = 1, method: str | None = None):
        jacobian = renamed("TwoStageLinearization", "method", "jacobian", method, jacobian, "auto")
        _check_jacobian(jacobian)
        self.threads = _check_threads(threads)
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        model, flat, shape, _ = _prepare(model, points, input_shape, dtype, name="points")
        self.before, self.after = split_at_relu(model, relu_index)
        self.input_shape = shape
        self.jacobian, self.chunk_size, self.mode = jacobian, chunk_size, mode
        self._set_points(flat)

    @property
    def method(self) -> str:
        """Deprecated name of :attr:`jacobian`."""
        warnings.warn("TwoStageLinearization.method is deprecated, use .jacobian instead", DeprecationWarning,
                      stacklevel=2)
        return self.jacobian

    # -- construction -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _set_points(self, flat: torch.Tensor) -> None:
        self._set_points_lazily(flat)
        self.c1 = self.pre - self.matvec(flat)
        self._A = None
        self.B, self.c2 = self._second_stage(torch.relu(self.pre))

    def _second_stage(self, hidden: torch.Tensor):
        if len(self.after) == 0:
            eye = torch.eye(hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
            return eye.expand(hidden.shape[0], -1, -1), torch.zeros_like(hidden)
        jac, values = _jacobian_at(self.after, hidden, self.hidden_shape, self.jacobian, self.chunk_size, self.mode,
                                   self.threads)
        bias = values - (jac @ hidden.unsqueeze(-1)).squeeze(-1)
        return (jac if jac.stride(0) == 0 else jac.contiguous()), bias

    # -- matrix-free products -----------------------------------------------------------------------------------
    def _check_vectors(self, name: str, x, size: int) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        Bt = self.points.shape[0]
        if x.dim() not in (2, 3) or x.shape[0] != Bt or x.shape[-1] != size:
            raise ValueError(f"{name} must have shape ({Bt}, {size}) or ({Bt}, k, {size}), got {tuple(x.shape)}")
        if x.dtype != self.points.dtype or x.device != self.points.device:
            raise TypeError(f"{name} must be {self.points.dtype} on {self.points.device} like the linearization's "
                            f"points, got {x.dtype} on {x.device}")

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A @ v``: ``v (Bt, n)`` -> ``(Bt, m)``, or ``(Bt, k, n)`` -> ``(Bt, k, m)``."""
        self._check_vectors("v", v, self.points.shape[-1])
        single = v.dim() == 2
        with torch.no_grad():
            out = _linear_apply(self.before, self._pattern, v.unsqueeze(1) if single else v, self.input_shape)
        return out.squeeze(1) if single else out

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        """``A^T @ u``: ``u (Bt, m)`` -> ``(Bt, n)``, or ``(Bt, k, m)`` -> ``(Bt, k, n)``."""
        self._check_vectors("u", u, self.pre.shape[-1])
        single = u.dim() == 2
        u = u.unsqueeze(1) if single else u
        with torch.enable_grad():
            probe = torch.zeros(*u.shape[:2], self.points.shape[-1], dtype=u.dtype, device=u.device,
                                requires_grad=True)
            out = _linear_apply(self.before, self._pattern, probe, self.input_shape)
            (grad,) = torch.autograd.grad(out, probe, grad_outputs=u.detach())
        return grad.squeeze(1) if single else grad

    def columns(self, index: torch.Tensor) -> torch.Tensor:
        """Selected columns ``A[:, :, index]``: ``index`` long ``(k,)`` or ``(Bt, k)`` -> ``(Bt, m, k)``."""
        Bt, n = self.points.shape
        index = torch.as_tensor(index, device=self.points.device)
        if index.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"index must be an integer tensor, got {index.dtype}")
        index = index.long().expand(Bt, -1) if index.dim() == 1 else index.long()
        if index.dim() != 2 or index.shape[0] != Bt:
            raise ValueError(f"index must have shape (k,) or ({Bt}, k), got {tuple(index.shape)}")
        if index.numel() and (index.min() < 0 or index.max() >= n):
            raise ValueError(f"index must be in 0..{n - 1}")
        basis = self.points.new_zeros(Bt, index.shape[1], n).scatter_(2, index.unsqueeze(-1), 1.0)
        return self.matvec(basis).transpose(1, 2)

    def weighted_output_map(self, weights: torch.Tensor) -> torch.Tensor:
        """``B diag(weights) A``: ``weights (Bt, m)`` -> ``(Bt, p, n)``, one ``A^T`` product per output.

        With ``weights = Phi(mu_h / sd_h)`` this is the Jacobian of the output mean, and ``M Sigma M^T`` the
        linearized output covariance.
        """
        self._check_vectors("weights", weights, self.pre.shape[-1])
        if weights.dim() != 2:
            raise ValueError(f"weights must have shape ({self.points.shape[0]}, {self.pre.shape[-1]}), "
                             f"got {tuple(weights.shape)}")
        return self.rmatvec(self.B * weights.unsqueeze(-2))

    # -- dense views --------------------------------------------------------------------------------------------
    @property
    def A(self) -> torch.Tensor:
        """The dense ``(Bt, m, n)`` first stage (computed on first use, then cached)."""
        if self._A is None:
            self._A = _dense_jacobian(self.before, self.points, self.input_shape, self._pattern, self.jacobian,
                                      self.chunk_size, self.mode, self.threads)
        return self._A

    def network(self) -> AffineReLUAffine:
        """The linearization as an :class:`netmoments.AffineReLUAffine` (batched; forms the dense ``A``)."""
        A = self.A if self.A.stride(0) == 0 else self.A.contiguous()
        return AffineReLUAffine(A, self.c1.contiguous(), self.B, self.c2.contiguous())

    # -- moving ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, points: torch.Tensor) -> tuple["TwoStageLinearization", torch.Tensor]:
        """The linearization at new ``points`` (same batch size), reusing every point whose region is unchanged.

        Inside one linear region ``A`` and ``c1`` (and, if the second stage's region is unchanged too, ``B`` and
        ``c2``) are the same, so only the points whose ReLU masks or max-pool choices changed are recomputed.

        Returns:
            ``(new linearization, changed (Bt,) bool)``.
        """
        if not isinstance(points, torch.Tensor):
            raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
        if points.numel() != self.points.numel() or points.shape[0] != self.points.shape[0]:
            raise ValueError(
                f"points must be a batch of the same size and shape as the linearization's, "
                f"{tuple(self.points.shape)}, got {tuple(points.shape)}"
            )
        flat = points.to(self.points.dtype).reshape(self.points.shape)
        if not torch.isfinite(flat).all():
            raise ValueError("points contains NaN or inf")
        new = copy.copy(self)
        new._set_points_lazily(flat)
        Bt, dev = flat.shape[0], flat.device
        changed = _pattern_changed(self._pattern, new._pattern, Bt, dev)
        _, old_after = _forward_pattern(self.after, torch.relu(self.pre).reshape(-1, *self.hidden_shape))
        _, new_after = _forward_pattern(self.after, torch.relu(new.pre).reshape(-1, *self.hidden_shape))
        changed_after = changed | _pattern_changed(old_after, new_after, Bt, dev)
        new.c1 = torch.where(changed.unsqueeze(-1), new.pre - new.matvec(flat), self.c1)
        if self._A is not None and bool(changed.any()):
            fresh = _dense_jacobian(self.before, flat[changed], self.input_shape,
                                    [p[changed] if p is not None else None for p in new._pattern],
                                    self.jacobian, self.chunk_size, self.mode, self.threads)
            new._A = self._A.clone()
            new._A[changed] = fresh
        else:
            new._A = self._A
        if bool(changed_after.any()):
            B, c2 = new._second_stage(torch.relu(new.pre[changed_after]))
            if self.B.stride(0) == 0 and B.stride(0) == 0:
                new.B = self.B
            else:
                new.B = self.B.clone()
                new.B[changed_after] = B
            new.c2 = self.c2.clone()
            new.c2[changed_after] = c2
        return new, changed

    @torch.no_grad()
    def _set_points_lazily(self, flat):
        """Points, activation pattern and pre-activations only (what :meth:`update` compares before reusing)."""
        self.points = flat
        pre, self._pattern = _forward_pattern(self.before, flat.reshape(-1, *self.input_shape))
        self.hidden_shape = tuple(pre.shape[1:])
        self.pre = pre.reshape(flat.shape[0], -1)


def _pattern_changed(old: list, new: list, batch: int, device) -> torch.Tensor:
    """``(Bt,)`` bool: whether any ReLU mask or max-pool choice of each item differs."""
    changed = torch.zeros(batch, dtype=torch.bool, device=device)
    for a, b in zip(old, new):
        if a is not None:
            changed |= (a != b).reshape(batch, -1).any(-1)
    return changed


def _jacobian_at(part, points, shape, jacobian, chunk_size, mode="auto", threads: int = 1):
    """(Jacobian ``(Bt, m, n)``, ``part(points) (Bt, m)``); a point-independent Jacobian is an expanded view."""
    values, pattern = _forward_pattern(part, points.reshape(-1, *shape))
    jac = _dense_jacobian(part, points, shape, pattern, jacobian, chunk_size, mode, threads)
    return jac, values.reshape(points.shape[0], -1)


def _dense_jacobian(part, points, shape, pattern, jacobian, chunk_size, mode="auto", threads: int = 1):
    if jacobian == "auto":
        jacobian = "structured" if _structured_supported(part, shape) else "autograd"
    elif jacobian == "structured" and not _structured_supported(part, shape):
        raise ValueError("jacobian='structured' does not support this model (a Conv2d with groups/dilation/string "
                         "padding, a ceil-mode pool, ...); use jacobian='auto' or 'autograd'")
    Bt = points.shape[0]
    if Bt > 1 and not any(isinstance(layer, _PIECEWISE) for layer in part):
        # an affine part has one Jacobian for every point: compute it once, return a stride-0 view
        first = [p[:1] if p is not None else None for p in pattern]
        return _dense_jacobian(part, points[:1], shape, first, jacobian, chunk_size, mode, threads).expand(Bt, -1, -1)
    if jacobian == "autograd":
        return batched_jacobian(_flat_fn(part, shape), points, mode=mode, chunk_size=chunk_size or 16)[1].detach()
    # On a CPU one point at a time keeps the windows of a layer in cache (a batch of 16 LeNet points would
    # stream ~150 MB per layer through memory); a GPU wants the whole batch at once.
    step = chunk_size or (Bt if points.device.type == "cuda" else 1)
    starts = list(range(0, Bt, step))
    prepared = {}

    def chunk(start):
        sub = [p[start : start + step] if p is not None else None for p in pattern]
        with torch.no_grad():
            # detach: views of a parameter made under no_grad still require grad (the B of an affine last part)
            return _structured_jacobian(part, points[start : start + step], shape, sub, prepared).detach()

    with _worker_threads(threads):
        # The first chunk may split its own work over the threads, and fills ``prepared``, which the other
        # chunks then only read; those run one per thread.
        first = chunk(0)
        if len(starts) == 1:
            return first
        out = first.new_empty(Bt, *first.shape[1:])
        out[:step] = first

        def fill(group):
            for start in group:
                out[start : start + step] = chunk(start)

        _run_groups(fill, starts[1:], points.device)
    return out


def affine_linearize(
    model: nn.Sequential,
    point: torch.Tensor,
    *,
    input_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    jacobian: str = "auto",
    mode: str = "auto",
    chunk_size: int | None = None,
    threads: int = 1,
    method: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order Taylor expansion of the whole network at ``point``: ``model(x) ~ W x + b`` (x flattened).

    Exact inside ``point``'s linear region (all ReLU patterns and pooling argmaxes unchanged).

    Args:
        model: ``nn.Sequential`` of Conv2d / MaxPool2d / AvgPool2d / Flatten / Linear / ReLU / Identity.
        point: one point ``(C, H, W)`` or ``(n,)``, or a batch ``(B, C, H, W)`` or ``(B, n)``.
        input_shape: shape of one input as the model takes it (inferred when omitted).
        dtype: computation dtype (e.g. ``torch.float64``); default ``point.dtype``.
        jacobian: ``"structured"`` (layer by layer with locality), ``"autograd"`` (torch.func) or ``"auto"``
            (formerly ``method=``, still accepted with a ``DeprecationWarning``).
        mode, chunk_size, threads: see :func:`two_stage_linearize` (``mode`` applies to the autograd method).

    Returns:
        ``W (p, n)``, ``b (p,)`` for one point; ``W (B, p, n)``, ``b (B, p)`` for a batch; on ``point``'s device.

    The point is a constant of the result (``W`` and ``b`` are piecewise constant in it, see
    :func:`two_stage_linearize`): a ``point`` that requires grad gets a ``UserWarning``; an empty batch, a
    float16/bfloat16 point or ``dtype`` raise.
    """
    jacobian = renamed("affine_linearize", "method", "jacobian", method, jacobian, "auto")
    _check_jacobian(jacobian)
    threads = _check_threads(threads)
    model, flat, shape, batched = _prepare(model, point, input_shape, dtype)
    weight, values = _jacobian_at(model, flat, shape, jacobian, chunk_size, mode, threads)
    bias = values - (weight @ flat.unsqueeze(-1)).squeeze(-1)
    if not batched:
        return weight[0], bias[0]
    return weight, bias


def _check_jacobian(jacobian) -> None:
    if jacobian not in ("auto", "structured", "autograd"):
        raise ValueError(f"jacobian must be 'auto', 'structured' or 'autograd', got {jacobian!r}")


def two_stage_linearize(
    model: nn.Sequential,
    point: torch.Tensor,
    relu_index: int = -1,
    *,
    input_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    jacobian: str = "auto",
    mode: str = "auto",
    chunk_size: int | None = None,
    threads: int = 1,
    method: str | None = None,
) -> AffineReLUAffine:
    """Two-stage linearization: ``model(x) ~ B relu(A x + c1) + c2`` around ``point`` (x flattened).

    Stage 1: ``A = J(p)``, ``c1 = f(p) - J(p) p`` for ``f`` = everything before the chosen ReLU. Stage 2: the
    same for everything after it, at ``relu(f(p))``. Exact wherever the layers before the ReLU stay in
    ``point``'s linear region and the layers after it stay in ``relu(f(p))``'s.

    By default the Jacobians are composed layer by layer at the point's fixed ReLU masks and max-pool choices,
    using each unit's small receptive field (``jacobian="structured"``): for LeNet the only large product left is
    fc1 applied to the pooled-conv Jacobian. ``jacobian="autograd"`` uses torch.func (forward- or reverse-mode,
    ``mode``) and works for every supported layer; ``"auto"`` picks structured whenever the layers allow it.
    For products with ``A`` without forming it, see :class:`TwoStageLinearization`.

    Threads: this function never changes torch's (process-wide) thread count. The structured method runs many
    small, memory-bound operations; each multi-threaded one waits for every intra-op thread, so on a CPU whose
    cores other processes keep busy they are several times slower than on one thread (LeNet: 1-2.3 s instead
    of 70 ms on a shared 2-core machine). There, the application should call ``torch.set_num_threads(1)``
    and may pass ``threads=k``: the structured method then spreads independent work (a batch's points; a
    single point's convolution taps and fc1 positions) over ``k`` Python threads, which never wait for each
    other. On an idle 2-core machine ``threads=2`` with one torch thread makes LeNet's linearization about 1.5x
    (one point) to 1.8x (a batch) faster than ``threads=1``. With several torch threads keep ``threads=1``
    (the default): ``k`` Python threads would each start a team of torch threads.
    On a GPU a batch runs in one pass: on an H200, 256 LeNet digits take 90 ms (0.35 ms each), while one digit
    is bound by kernel launches (9.9 ms; ``jacobian="autograd"`` takes 7.0 ms there). Batch points on a GPU.

    Args:
        model: ``nn.Sequential`` of Conv2d / MaxPool2d / AvgPool2d / Flatten / Linear / ReLU / Identity.
        point: one point ``(C, H, W)`` or ``(n,)``, or a batch ``(B, C, H, W)`` or ``(B, n)``.
        relu_index: which ReLU to keep (-1 = the last).
        input_shape: shape of one input as the model takes it (inferred when omitted).
        dtype: computation dtype (e.g. ``torch.float64``); default ``point.dtype``.
        jacobian: the Jacobian algorithm, ``"auto"``, ``"structured"`` or ``"autograd"`` (see above; formerly
            ``method=``, still accepted with a ``DeprecationWarning``; ``method=`` elsewhere names a covariance
            formula).
        mode: Jacobian mode of the autograd method (``"auto"`` picks forward or reverse by the smaller dimension).
        chunk_size: points per Jacobian pass (bounds memory); ``None`` picks a good size for the method and device.
        threads: Python threads the structured method may use on a CPU (see above); results agree to round-off.

    Returns:
        :class:`netmoments.AffineReLUAffine` with ``A (m, n)``, ``c1 (m,)``, ``B (p, m)``, ``c2 (p,)``, or with a
        leading batch dimension ``B`` on each for a batch of points. A factor that cannot depend on the point
        (everything on its side of the kept ReLU is affine, e.g. ``B`` at a classifier's last ReLU) is then an
        expanded view (``stride(0) == 0``) of one matrix rather than ``B`` copies.

    Raises:
        TypeError: ``point`` (or ``dtype``) is not float32/float64, e.g. float16; ``model`` has other layers;
            ``threads`` is not an int.
        ValueError: ``point`` is an empty batch ``(0, ...)``, holds NaN/inf, or has the wrong shape; ``threads < 1``.

    Note:
        The point is a constant of the result: ``A``, ``c1``, ``B`` and ``c2`` are piecewise constant in it (inside
        a linear region ``c1 = f(p) - J p`` does not move), so their derivative is 0 wherever it exists and no
        autograd graph is built back to ``point``. A ``point`` that requires grad gets a ``UserWarning`` saying so.
    """
    jacobian = renamed("two_stage_linearize", "method", "jacobian", method, jacobian, "auto")
    _check_jacobian(jacobian)
    if mode not in ("auto", "fwd", "rev"):
        raise ValueError(f"mode must be 'auto', 'fwd' or 'rev', got {mode!r}")
    _, _, _, batched = _prepare(model, point, input_shape, dtype)
    point = point.detach()  # a constant (see the Note); _prepare has warned if it required grad
    lin = TwoStageLinearization(model, point, relu_index, input_shape=input_shape, dtype=dtype, jacobian=jacobian,
                                chunk_size=chunk_size, mode=mode, threads=threads)
    A, c1, B, c2 = lin.A, lin.c1, lin.B, lin.c2
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
    model = check_sequential(model)
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
    model = check_sequential(model)
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


def split_expected_linearization(
    model: nn.Sequential, x: torch.Tensor, eps: torch.Tensor, average: str, relu_index: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The expected linearization of the layers before the kept ReLU with one kind of nonlinearity frozen.

    The tie-aware point of chapter 7 averages the Jacobian of *every* piecewise-linear layer over the noise. To
    tell which kind carries its effect, this averages only one kind and freezes the other at its choice at ``x``:

    - ``average="pool"``: each max-pool picks its window's maximum at every draw ``x + eps_j``, so a window's
      Jacobian row, averaged, weighs each entry by the fraction of draws in which it is the maximum; every ReLU
      is a fixed mask, the one it has at ``x`` (an entry active at ``x`` passes even if a draw makes it negative);
    - ``average="relu"``: each ReLU gate is on in the draws where its input is positive (its average is the
      fraction of such draws); every max-pool gathers, at every draw, the entry it chose at ``x`` (the first
      maximum, as ``max_pool2d``).

    The frozen layers make the part a piecewise-linear function ``h~`` with pieces of one kind only; the result
    is its statistical linearization on the draws, ``A = mean_j J~(x + eps_j)``, ``c1 = mean_j h~(x + eps_j) - A x``
    (with antithetic draws ``+-eps`` it equals the two-stage linearization at ``x`` wherever no draw leaves
    ``x``'s linear region).

    Args:
        model: ``nn.Sequential`` as :class:`TwoStageLinearization` takes it (Conv2d / MaxPool2d / AvgPool2d /
            Flatten / Linear / ReLU / Identity); its parameters' dtype is the computation's.
        x: the point, one input ``(C, H, W)``.
        eps: the noise draws ``(S, C, H, W)`` or ``(S, C*H*W)``, ``S >= 1``.
        average: ``"pool"`` or ``"relu"``, the kind averaged over the draws.
        relu_index: which ReLU is kept (-1 = the last), as in :func:`split_at_relu`.

    Returns:
        ``A (m, n)`` and ``c1 (m,)`` in the model's dtype, ``n = C*H*W``, ``m`` the kept ReLU's width.
    """
    model = check_sequential(model)
    if average not in ("pool", "relu"):
        raise ValueError(f"average must be 'pool' or 'relu', got {average!r}")
    for name, t in (("x", x), ("eps", eps)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must be one input (C, H, W), got shape {tuple(x.shape)}")
    shape = tuple(x.shape)
    if eps.dim() == 2 and eps.shape[1] == x.numel():
        eps = eps.reshape(-1, *shape)
    if eps.dim() != 4 or tuple(eps.shape[1:]) != shape or eps.shape[0] < 1:
        raise ValueError(f"eps must be (S, {', '.join(map(str, shape))}) or (S, {x.numel()}) with S >= 1, "
                         f"got shape {tuple(eps.shape)}")  # fmt: skip
    before, _ = split_at_relu(model, relu_index)
    dtype = next(iter(model.parameters())).dtype
    x = x.to(dtype)
    S = eps.shape[0]
    with torch.no_grad():
        _, at_x = _forward_pattern(before, x.unsqueeze(0))
        h = x.unsqueeze(0) + eps.to(dtype)
        pattern = []
        for layer, frozen in zip(before, at_x):
            if isinstance(layer, nn.MaxPool2d) and average == "relu":
                idx = frozen.expand(S, *frozen.shape[1:]).contiguous()
                C, H, W = h.shape[1:]
                h = h.reshape(S, C, H * W).gather(-1, idx.reshape(S, C, -1)).reshape(S, C, *idx.shape[-2:])
                pattern.append(idx)
            elif isinstance(layer, nn.MaxPool2d):
                h, idx = nn.functional.max_pool2d(h, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                                  ceil_mode=layer.ceil_mode, return_indices=True)  # fmt: skip
                pattern.append(idx)
            elif isinstance(layer, nn.ReLU) and average == "pool":
                on = frozen.expand(S, *frozen.shape[1:])
                h = h * on.to(h.dtype)
                pattern.append(on)
            elif isinstance(layer, nn.ReLU):
                pattern.append(h > 0)
                h = torch.relu(h)
            else:
                h = layer(h)
                pattern.append(None)
        A = torch.zeros(h[0].numel(), x.numel(), dtype=dtype)
        for j in range(S):  # one draw at a time, as the structured Jacobian is fastest on a CPU
            sub = [p[j : j + 1] if p is not None else None for p in pattern]
            A += _structured_jacobian(before, h.new_empty(1, x.numel()), shape, sub)[0]
        A /= S
        c1 = h.reshape(S, -1).mean(0) - A @ x.reshape(-1)
    return A, c1
