"""Per-image evidence for an attack: success at fixed budgets, sizes measured on the actual draws, perceptual
measures, draw diversity and cost, and bootstrap intervals over images (never over pooled draws).

A *point* attack (zero noise) is one draw per image. A *distribution* attack is judged on ``n_samples`` draws per
image from ``N(mean, Sigma)`` clipped to ``[0, 1]``: every size (L0, L2, TV, SSIM) is measured on the draw itself,
noise included and after clipping, because that is the image the network sees. Success of a draw is judged by
the REAL network (misclassified, or classified as the target). "Success at budget b" of a draw means: the draw
succeeds *and* its size is at most ``b``; an image's expected success at ``b`` is the mean over its draws, and
the table reports its mean and lower quantiles over images with bootstrap intervals that resample images.

Conventions (fixed here so that every attack is measured alike):

* a pixel counts as changed when ``|draw - clean| > L0_THRESHOLD`` (1e-3, a quarter of one 8-bit grey level);
* L2 is the Euclidean norm of ``draw - clean``; TV the anisotropic total variation of ``draw - clean``;
* SSIM is :func:`skimage.metrics.structural_similarity` of the clean and attacked digit (``data_range=1``);
* the size "at which an image is fooled" is the median size over its successful draws (``inf`` if none), so an
  image that is never fooled counts as an infinite size and medians over images stay honest.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import stats
from .._validation import renamed
from ..stats import quantile
from ._ops import total_variation
from .common import AttackResult, as_class_tensor, margin

__all__ = [
    "L0_BUDGETS",
    "L2_BUDGETS",
    "TV_BUDGETS",
    "L0_THRESHOLD",
    "bootstrap_ci",
    "quantile",
    "PassCounter",
    "ImageMetrics",
    "image_metrics",
    "summarize",
    "margin_of_logits",
]

#: Pixel budgets k at which success within k changed pixels is reported.
L0_BUDGETS = (5, 10, 15, 20, 30, 40, 60)
#: L2 budgets at which success within that Euclidean size of the change is reported.
L2_BUDGETS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
# Sparse and smooth attacks on MNIST have a TV of 25-60 (anisotropic, on the attacked image); budgets below 10
# would all read zero.
#: Total-variation budgets at which success within that TV of the attacked image is reported.
TV_BUDGETS = (10.0, 20.0, 30.0, 40.0, 60.0, 80.0)
#: A pixel counts as changed (for L0 sizes) when it moves by more than this.
L0_THRESHOLD = 1e-3
QUANTILES = (0.1, 0.25)


# ----------------------------------------------------------------------------------------------- statistics


def bootstrap_ci(values, statistic="mean", n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile-bootstrap interval of a statistic over *images*, by the attack tables' rule.

    :func:`netmoments.stats.bootstrap_ci` with ``method="lower"``: the end points and the named quantiles are
    attained values (:func:`quantile`), so medians of sizes with ``inf`` entries (images never fooled) have
    intervals. ``values`` may have any shape; it is flattened to one number per image.

    Args:
        values: ``(n,)`` one number per image (``inf`` allowed for medians/quantiles, not for the mean).
        statistic: ``"mean"``, ``"median"`` or a quantile level in ``(0, 1)`` (lower quantile).
        n_boot: bootstrap resamples (of the images, with replacement); level: two-sided coverage.

    Returns:
        ``(estimate, low, high)`` floats; the estimate is the statistic on the sample itself.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    return stats.bootstrap_ci(flat, statistic, n_boot, level, seed, method="lower")


# ----------------------------------------------------------------------------------------------- cost


class PassCounter:
    """Counts forward and backward passes of ``model``, in images (a batch of 8 is 8 passes).

    Use as a context manager around any attack that calls the real network (Foolbox, PGD, EOT); backward passes
    are counted by a hook on the output tensor, so ``torch.autograd.grad`` and ``.backward()`` both count.
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.forward = 0
        self.backward = 0
        self._handle = None

    def _hook(self, module, inputs, output):
        n = int(output.shape[0]) if output.dim() > 1 else 1
        self.forward += n
        if output.requires_grad:
            def count(grad, n=n):
                self.backward += n
                return grad

            output.register_hook(count)

    def __enter__(self):
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False


@contextmanager
def timed():
    """``with timed() as t: ...`` then ``t["s"]`` holds the wall seconds."""
    box = {"s": 0.0}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - start


# ----------------------------------------------------------------------------------------------- per image


#: ``(..., B)`` margin of ``logits (..., B, p)``, negative exactly on success (:func:`~.common.margin`).
margin_of_logits = margin


@dataclass
class ImageMetrics:
    """Per-image arrays (numpy, length ``B``) for one attack on one batch; see the module docstring.

    ``success``: expected success over draws; ``success_l0 (B, len(l0_budgets))`` etc.: expected success at each
    budget; ``l0/l2/tv``: median size over successful draws (``inf`` when none); ``l0_all/...``: median size
    over all draws; ``ssim``: mean SSIM over draws; ``diversity``: mean pairwise L2 distance between draws
    (0 for a point attack); ``support_jaccard``: mean pairwise Jaccard distance between the changed-pixel sets of
    the draws; ``time_s``, ``forward``, ``backward``: cost per image (wall seconds, network passes).
    """

    n_draws: int
    success: np.ndarray
    success_l0: np.ndarray
    success_l2: np.ndarray
    success_tv: np.ndarray
    l0: np.ndarray
    l2: np.ndarray
    tv: np.ndarray
    l0_all: np.ndarray
    l2_all: np.ndarray
    tv_all: np.ndarray
    ssim: np.ndarray
    diversity: np.ndarray
    support_jaccard: np.ndarray
    time_s: np.ndarray
    forward: np.ndarray
    backward: np.ndarray
    l0_budgets: tuple = L0_BUDGETS
    l2_budgets: tuple = L2_BUDGETS
    tv_budgets: tuple = TV_BUDGETS
    extra: dict = field(default_factory=dict)

    def success_within_l0(self, budget) -> np.ndarray:
        """``(B,)`` expected success within ``budget`` changed pixels, one of :attr:`l0_budgets`
        (``success_within_l0(20)`` is the rows' ``success_l0_20``)."""
        if budget not in self.l0_budgets:
            raise ValueError(f"budget must be one of l0_budgets {tuple(self.l0_budgets)}, got {budget!r}")
        return self.success_l0[:, list(self.l0_budgets).index(budget)]

    def rows(self) -> list[dict]:
        """One flat dict per image (for CSV)."""
        out = []
        for i in range(len(self.success)):
            r = dict(success=self.success[i], l0=self.l0[i], l2=self.l2[i], tv=self.tv[i], l0_all=self.l0_all[i],
                     l2_all=self.l2_all[i], tv_all=self.tv_all[i], ssim=self.ssim[i], diversity=self.diversity[i],
                     support_jaccard=self.support_jaccard[i], time_s=self.time_s[i], forward=self.forward[i],
                     backward=self.backward[i], n_draws=self.n_draws)
            r.update({f"success_l0_{b}": self.success_l0[i, j] for j, b in enumerate(self.l0_budgets)})
            r.update({f"success_l2_{b:g}": self.success_l2[i, j] for j, b in enumerate(self.l2_budgets)})
            r.update({f"success_tv_{b:g}": self.success_tv[i, j] for j, b in enumerate(self.tv_budgets)})
            for key, arr in self.extra.items():
                r[key] = arr[i]
            out.append({k: float(v) for k, v in r.items()})
        return out


def _ssim(clean: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Mean SSIM over draws: clean ``(B, H, W)``, draws ``(n, B, H, W)`` -> ``(B,)``."""
    from skimage.metrics import structural_similarity

    n, bsz = draws.shape[:2]
    out = np.zeros(bsz)
    for b in range(bsz):
        out[b] = np.mean([structural_similarity(clean[b], draws[d, b], data_range=1.0) for d in range(n)])
    return out


def _median_where(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per column median of ``values (n, B)`` over rows where ``mask``; ``inf`` for an empty column."""
    filled = torch.where(mask, values, torch.full_like(values, float("inf")))
    count = mask.sum(0)
    ordered = filled.sort(0).values
    # lower median of the kept entries (they sort first)
    pick = ((count - 1).clamp_min(0) // 2).unsqueeze(0)
    med = ordered.gather(0, pick).squeeze(0)
    return torch.where(count > 0, med, torch.full_like(med, float("inf")))


@torch.no_grad()
def judge_draws(model: nn.Module, result, labels, target=None, n_samples: int = 100, generator=None,
                batch_size: int = 4096, name: str = "n_samples", *, n_draws: int | None = None):
    """Draw from an attack and classify the draws with the real ``model`` (shared by every evaluator).

    Checks ``result`` (an :class:`~netmoments.attacks.AttackResult`), ``n_samples`` (positive int; a point
    attack is one draw whatever it says; formerly ``n_draws=``, still accepted with a ``DeprecationWarning``),
    and ``labels``/``target`` (``(B,)`` or int class indices of the model).

    Returns:
        ``draws (n, B, C, H, W)`` clipped to the box, ``success (n, B)`` bool (misclassified, or classified as
        the target), and the checked ``labels`` and ``target`` as ``(B,)`` int64 on the result's device.
    """
    if not isinstance(result, AttackResult):
        raise TypeError(f"result must be an AttackResult, got {type(result).__name__}")
    n_samples = renamed("judge_draws", "n_draws", "n_samples", n_draws, n_samples, 100, stacklevel=4)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"{name} must be a positive int, got {n_samples!r}")
    bsz = result.batch_size
    device = result.clean.device
    num_classes = model(result.clean[:1]).shape[-1]
    labels = as_class_tensor("labels", labels, bsz, device, num_classes)
    if target is not None:
        target = as_class_tensor("target", target, bsz, device, num_classes)
    n = 1 if result.is_point else n_samples
    draws = result.sample(n, generator=generator)
    flat = draws.reshape(n * bsz, *draws.shape[2:])
    preds = torch.cat([model(flat[i : i + batch_size]).argmax(-1) for i in range(0, flat.shape[0], batch_size)])
    preds = preds.view(n, bsz)
    success = preds != labels if target is None else preds == target
    return draws, success, labels, target


@torch.no_grad()
def image_metrics(
    model: nn.Module,
    result,
    labels: torch.Tensor,
    target: torch.Tensor | None = None,
    n_samples: int = 100,
    generator: torch.Generator | None = None,
    *,
    n_draws: int | None = None,
    ssim_draws: int = 8,
    l0_budgets=L0_BUDGETS,
    l2_budgets=L2_BUDGETS,
    tv_budgets=TV_BUDGETS,
    cost: dict | None = None,
    batch_size: int = 4096,
) -> ImageMetrics:
    """Per-image metrics of an :class:`~netmoments.attacks.AttackResult` judged on the real ``model``.

    Args:
        result: the attack (point attacks are one draw per image whatever ``n_samples`` says).
        labels: ``(B,)`` int64; target: ``None`` or ``(B,)`` int64 (success = classified as the target).
        n_samples: draws per image of a distribution attack (formerly ``n_draws=``, still accepted with a
            ``DeprecationWarning``); generator: for the draws (default: the result's seed).
        ssim_draws: SSIM is averaged over the first this many draws (it runs on the CPU, one image at a time).
        cost: optional ``dict(time_s=, forward=, backward=)`` totals for the whole batch (divided by ``B``);
            default: ``result.time_s`` and the pass counts the result carries (``result.options`` keys
            ``"forward_passes"``/``"backward_passes"``, per image), else ``nan``.

    Returns:
        :class:`ImageMetrics`.
    """
    if isinstance(ssim_draws, bool) or not isinstance(ssim_draws, int) or ssim_draws < 1:
        raise ValueError(f"ssim_draws must be a positive int, got {ssim_draws!r}")
    n_samples = renamed("image_metrics", "n_draws", "n_samples", n_draws, n_samples, 100, stacklevel=4)
    draws, ok, labels, target = judge_draws(model, result, labels, target, n_samples, generator, batch_size)
    n, bsz = ok.shape
    diff = (draws - result.clean.unsqueeze(0)).flatten(2)  # (n, B, npix)
    changed = diff.abs() > L0_THRESHOLD
    l0 = changed.sum(-1).double()
    l2 = diff.double().norm(dim=-1)
    tv = total_variation(diff.double(), result.image_shape)

    def at(sizes, budgets):
        return torch.stack([(ok & (sizes <= b)).double().mean(0) for b in budgets], -1).cpu().numpy()

    all_draws = torch.ones_like(ok)
    # diversity: mean pairwise distance between the draws of one image (U-statistic over pairs)
    if n > 1:
        sq = diff.double().pow(2).sum(-1)  # (n, B)
        gram = torch.einsum("ibp,jbp->bij", diff.double(), diff.double())
        d2 = (sq.T.unsqueeze(-1) + sq.T.unsqueeze(-2) - 2 * gram).clamp_min(0)
        diversity = d2.sqrt().sum((-2, -1)) / (n * (n - 1))
        c = changed.double()
        inter = torch.einsum("ibp,jbp->bij", c, c)
        union = c.sum(-1).T.unsqueeze(-1) + c.sum(-1).T.unsqueeze(-2) - inter
        jac = torch.where(union > 0, 1 - inter / union.clamp_min(1), torch.zeros_like(union))
        jaccard = jac.sum((-2, -1)) / (n * (n - 1))
    else:
        diversity = torch.zeros(bsz, dtype=torch.float64)
        jaccard = torch.zeros(bsz, dtype=torch.float64)
    clean_np = result.clean[:, 0].double().cpu().numpy()
    ssim = _ssim(clean_np, draws[: min(n, ssim_draws), :, 0].double().cpu().numpy())
    if cost is None:
        fwd = result.options.get("forward_passes", float("nan"))
        bwd = result.options.get("backward_passes", float("nan"))
        cost = dict(time_s=result.time_s, forward=fwd * bsz, backward=bwd * bsz)
    per = lambda key: np.full(bsz, float(cost.get(key, float("nan"))) / bsz)  # noqa: E731
    return ImageMetrics(
        n_draws=n,
        success=ok.double().mean(0).cpu().numpy(),
        success_l0=at(l0, l0_budgets),
        success_l2=at(l2, l2_budgets),
        success_tv=at(tv, tv_budgets),
        l0=_median_where(l0, ok).cpu().numpy(),
        l2=_median_where(l2, ok).cpu().numpy(),
        tv=_median_where(tv, ok).cpu().numpy(),
        l0_all=_median_where(l0, all_draws).cpu().numpy(),
        l2_all=_median_where(l2, all_draws).cpu().numpy(),
        tv_all=_median_where(tv, all_draws).cpu().numpy(),
        ssim=ssim,
        diversity=diversity.cpu().numpy(),
        support_jaccard=jaccard.cpu().numpy(),
        time_s=per("time_s"),
        forward=per("forward"),
        backward=per("backward"),
        l0_budgets=tuple(l0_budgets),
        l2_budgets=tuple(l2_budgets),
        tv_budgets=tuple(tv_budgets),
    )


def summarize(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Table entries from per-image rows (dicts as from :meth:`ImageMetrics.rows` or a CSV): for each metric
    ``(estimate, low, high)`` by bootstrap over images.

    Success metrics get the mean and the lower quantiles ``QUANTILES``; sizes (``l0``, ``l2``, ``tv``) get the
    median over images (``inf`` for an image never fooled); SSIM, diversity and costs get the mean.
    """
    if not rows:
        raise ValueError("rows must hold at least one image")
    keys = rows[0].keys()
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    out = {"n_images": len(rows)}
    for k in keys:
        values = col(k)
        if k == "success" or k.startswith("success_"):
            out[k] = bootstrap_ci(values, "mean", n_boot, seed=seed)
            for q in QUANTILES:
                out[f"{k}@q{q:g}"] = bootstrap_ci(values, q, n_boot, seed=seed)
        elif k in ("l0", "l2", "tv", "l0_all", "l2_all", "tv_all"):
            out[k] = bootstrap_ci(values, "median", n_boot, seed=seed)
        elif np.isfinite(values).all():
            out[k] = bootstrap_ci(values, "mean", n_boot, seed=seed)
    return out
