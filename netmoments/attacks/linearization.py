"""The two-stage linearization restricted to a pixel support: the columns of ``A`` a sparse distribution needs.

With ``x = point + P_S (x_S - point_S)`` (``P_S`` puts the ``K`` support pixels back into the image),
``A x + c1 = pre(point) + A_S (x_S - point_S)``, so the surrogate is an :class:`~netmoments.AffineReLUAffine` on
``K`` inputs with ``A_S = A[:, S]`` (``m x K``), formed by ``K`` forward-mode passes of the layers before the kept
ReLU instead of a full ``m x n`` Jacobian.
"""
from __future__ import annotations

import torch
from torch import nn

from ..affine import AffineReLUAffine

__all__ = ["SupportLinearization", "put_support"]


def _split(model, relu_index):
    from ..linearize import split_at_relu

    return split_at_relu(model, relu_index)


class SupportLinearization:
    """Pre-activations, support columns of ``A`` and the affine map after the kept ReLU, for a batch of points.

    Args:
        model: ``nn.Sequential`` of piecewise-linear layers; relu_index: the kept ReLU (-1: the last).
        points: ``(Bt, C, H, W)`` where to linearize.
        support: ``(Bt, K)`` int64 pixel indices (flattened), padded entries marked by ``valid`` ``(Bt, K)`` bool.

    Attributes:
        pre: ``(Bt, m)``.
        A_S: ``(Bt, m, K)``, zero columns where not valid.
        c1: ``(Bt, m)``, with ``A x + c1 = A_S x_S + c1`` for ``x`` equal to ``points`` off the support.
        B: ``(Bt, p, m)``.
        c2: ``(Bt, p)``.
        jvp_passes: forward-mode passes spent (one per valid column).

    The columns come from the project's matrix-free :class:`netmoments.linearize.TwoStageLinearization`
    (``.columns``: one masked linear pass per column), else from batched ``torch.func.jvp``.
    """

    def __init__(self, model: nn.Sequential, points: torch.Tensor, support: torch.Tensor, valid: torch.Tensor,
                 relu_index: int = -1):
        self.before, self.after = _split(model, relu_index)
        self.model = model
        self.relu_index = relu_index
        self.shape = tuple(points.shape[1:])
        with torch.no_grad():
            self.pre = self.before(points).flatten(1)
        self.B, self.c2 = self._after_affine(self.pre)
        self.points = points.flatten(1)
        self.support = support
        self.valid = valid
        self.A_S = self._columns(points, support, valid)
        point_S = self.points.gather(1, support) * valid
        self.c1 = self.pre - (self.A_S @ point_S.unsqueeze(-1)).squeeze(-1)
        self.jvp_passes = valid.sum(1).to(points.dtype)
        if getattr(self, "_padded_passes", None) is not None:
            self.jvp_passes = torch.full_like(self.jvp_passes, self._padded_passes)

    def _after_affine(self, pre):
        after = self.after
        layers = [layer for layer in after if not isinstance(layer, (nn.Identity, nn.Flatten))]
        bsz, m = pre.shape
        if len(layers) == 0:
            eye = torch.eye(m, dtype=pre.dtype, device=pre.device)
            return eye.expand(bsz, m, m), torch.zeros_like(pre)
        if len(layers) == 1 and isinstance(layers[0], nn.Linear):
            lin = layers[0]
            bias = lin.bias if lin.bias is not None else torch.zeros(lin.out_features, dtype=pre.dtype,
                                                                     device=pre.device)
            return lin.weight.detach().expand(bsz, -1, -1), bias.detach().expand(bsz, -1)
        from torch.func import jacrev, vmap

        hidden = torch.relu(pre).detach()
        jac = vmap(jacrev(lambda h: after(h.unsqueeze(0)).squeeze(0)))(hidden)
        with torch.no_grad():
            out = after(hidden)
        return jac.detach(), (out - (jac @ hidden.unsqueeze(-1)).squeeze(-1)).detach()

    def _columns(self, points, support, valid):
        bsz, k = support.shape
        try:  # the project's matrix-free linearization: one masked linear pass per column, all images at once
            from ..linearize import TwoStageLinearization
        except ImportError:  # pragma: no cover - older netmoments
            TwoStageLinearization = None
        if TwoStageLinearization is not None:
            lin = TwoStageLinearization(self.model, points, self.relu_index)
            self._padded_passes = float(k)  # every image pays for the batch's widest support
            return lin.columns(support).detach() * valid.unsqueeze(-2).to(points.dtype)
        rows, slots = valid.nonzero(as_tuple=True)
        m = self.pre.shape[1]
        cols = points.new_zeros(bsz, m, k)
        if rows.numel() == 0:
            return cols
        pix = support[rows, slots]
        values = self._columns_flat(points, rows, pix)  # (P, m)
        cols[rows, :, slots] = values
        return cols

    def _columns_flat(self, points, rows, pix, chunk=512):
        """``A[rows[j]][:, pix[j]]`` for each pair ``j``: ``(P, m)`` (one dual-number pass per pair)."""
        from torch.func import jvp

        out = []
        for start in range(0, rows.numel(), chunk):
            r, p = rows[start : start + chunk], pix[start : start + chunk]

            tangent = torch.zeros(r.numel(), self.points.shape[1], dtype=points.dtype, device=points.device)
            tangent[torch.arange(r.numel(), device=points.device), p] = 1.0
            _, col = jvp(self.before, (points[r],), (tangent.view(-1, *self.shape),))
            out.append(col.flatten(1).detach())
        return torch.cat(out)

    def network(self) -> AffineReLUAffine:
        """The surrogate on the ``K`` support inputs."""
        return AffineReLUAffine(self.A_S, self.c1, self.B, self.c2)

    def refresh(self, points: torch.Tensor, which: torch.Tensor) -> None:
        """Re-linearize the images ``which`` ``(Bt,)`` bool at ``points`` (same support); others are kept."""
        if not bool(which.any()):
            return
        idx = which.nonzero().flatten()
        sub = SupportLinearization(self.model, points[idx], self.support[idx], self.valid[idx], self.relu_index)
        self.pre = self.pre.clone()
        self.pre[idx] = sub.pre
        self.points = self.points.clone()
        self.points[idx] = sub.points
        self.A_S = self.A_S.clone()
        self.A_S[idx] = sub.A_S
        self.c1 = self.c1.clone()
        self.c1[idx] = sub.c1
        if self.B.stride(0) != 0:
            self.B = self.B.clone()
            self.B[idx] = sub.B
            self.c2 = self.c2.clone()
            self.c2[idx] = sub.c2
        self.jvp_passes = self.jvp_passes + torch.zeros_like(self.jvp_passes).index_put_((idx,), sub.jvp_passes)

    @torch.no_grad()
    def region_changed(self, points: torch.Tensor, rtol: float = 1e-4) -> torch.Tensor:
        """``(Bt,)`` bool: the real pre-activations at ``points`` differ from the surrogate's affine prediction
        (the layers before the kept ReLU left the linearization's linear region). One real forward pass."""
        real = self.before(points).flatten(1)
        x_S = points.flatten(1).gather(1, self.support) * self.valid
        lin = (self.A_S @ x_S.unsqueeze(-1)).squeeze(-1) + self.c1
        scale = real.abs().amax(1).clamp_min(1.0)
        return (real - lin).abs().amax(1) > rtol * scale


def put_support(base: torch.Tensor, support: torch.Tensor, valid: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``base`` ``(B, n)`` with ``values`` ``(..., B, K)`` written at ``support`` ``(B, K)`` where ``valid``
    ``(B, K)``: ``(..., B, n)``, differentiable in ``values``.

    Padded slots repeat the first support pixel; they write ``base``'s own value and slot 0 is written last, so
    duplicate indices never race.
    """
    lead = values.shape[:-2]
    base = base.expand(*lead, *base.shape)
    support = support.expand(*lead, *support.shape)
    valid = valid.expand(*lead, *valid.shape)
    out = base.scatter(-1, support, torch.where(valid, values, base.gather(-1, support)))
    first = support[..., :1]
    return out.scatter(-1, first, torch.where(valid[..., :1], values[..., :1], base.gather(-1, first)))
