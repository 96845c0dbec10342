"""What a tightness task draws from and linearizes at: the three covariance families of the noise
(:func:`noise_factor`; the sparse family's pixels from :func:`sparse_pixels`) and Table 3's cluster points
(:func:`cluster_linearization_points`, from the labelled k-means of a pool of digits). The protocol is in
:mod:`netmoments.experiments.tightness`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..data import MNIST_SHAPE
from ..gaussian import random_spd
from .tightness_settings import BLUR_STD, COV_KINDS, NM20_CLUSTER_FRACTIONS

__all__ = [
    "noise_factor",
    "sparse_pixels",
    "scaled_cluster_counts",
    "labelled_kmeans",
    "cluster_linearization_points",
]


def _blur_matrix(side: int, std: float) -> torch.Tensor:
    """``(side^2, side^2)`` matrix of a separable Gaussian blur (zero padding, radius ``ceil(3 std)``)."""
    idx = torch.arange(side, dtype=torch.float64)
    one = torch.exp(-0.5 * ((idx[:, None] - idx[None, :]) / std) ** 2)
    one = torch.where((idx[:, None] - idx[None, :]).abs() <= math.ceil(3 * std), one, torch.zeros_like(one))
    one = one / one.sum(1, keepdim=True).max()
    return torch.kron(one, one)


def noise_factor(kind: str, sigma: float, n: int, generator: torch.Generator | None = None, pixels=None,
                 blur_std: float = BLUR_STD) -> torch.Tensor:  # fmt: skip
    """A factor ``L`` (float64, ``(n, n)``) with ``Sigma = L L^T`` for one covariance family.

    Args:
        kind: ``"dense"`` (Cholesky of :func:`random_spd` with trace ``n sigma^2``, drawn from ``generator``),
            ``"sparse"`` (``sigma`` on the given ``pixels``, 0 elsewhere) or ``"blur"`` (a blur matrix scaled to
            trace ``n sigma^2``; the image must be square).
    """
    if kind == "dense":
        return torch.linalg.cholesky(random_spd(n, n * sigma**2, generator=generator, dtype=torch.float64))
    if kind == "sparse":
        if pixels is None:
            raise ValueError("sparse noise needs the pixels it lives on")
        diag = torch.zeros(n, dtype=torch.float64)
        diag[torch.as_tensor(pixels)] = sigma
        return torch.diag(diag)
    if kind == "blur":
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"blurred noise needs a square image, got n = {n}")
        g = _blur_matrix(side, blur_std)
        return g * math.sqrt(n * sigma**2 / float((g * g).sum()))
    raise ValueError(f"cov must be one of {COV_KINDS}, got {kind!r}")


def sparse_pixels(model, x: torch.Tensor, label: int, count: int) -> torch.Tensor:
    """The ``count`` pixels with the largest |d logit_label / d x| at ``x`` (where a sparse attack puts noise)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logit = model(x.reshape(1, *MNIST_SHAPE))[0, label]
        (grad,) = torch.autograd.grad(logit, x)
    # argsort on (-|g|, index) so equal gradients pick the lower index on every machine
    return torch.argsort(-grad.abs().to(torch.float64), stable=True)[:count]


def scaled_cluster_counts(n_images: int, fractions: Sequence[float] = NM20_CLUSTER_FRACTIONS) -> list[int]:
    """NM20's cluster counts scaled to a pool of ``n_images`` (``round(f * n)``, at least 1, without duplicates)."""
    return sorted({max(1, min(n_images, round(f * n_images))) for f in fractions})


def labelled_kmeans(points, labels, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means within each label: label ``c`` gets ``k_c = max(1, round(k n_c / N))`` clusters (scikit-learn).

    Runs single-threaded (``threadpoolctl``), so the clusters are the same on every machine and sitting.

    Args:
        points: ``(N, n)``; labels: ``(N,)`` ints; k: total clusters wanted, ``1 <= k <= N``.

    Returns:
        ``assignment (N,)`` cluster ids, ``centroids (K, n)`` float64 and ``centroid_labels (K,)``; ``K`` is the
        sum of the ``k_c`` (close to ``k``).
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"points must be (N, n) and labels (N,), got {x.shape} and {y.shape}")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be an int in 1..{x.shape[0]} (the number of points), got {k!r}")
    assignment = np.empty(x.shape[0], dtype=np.int64)
    centroids, centroid_labels = [], []
    with threadpool_limits(1):
        for c in np.unique(y):
            members = np.flatnonzero(y == c)
            k_c = int(min(members.size, max(1, round(k * members.size / x.shape[0]))))
            km = KMeans(n_clusters=k_c, n_init=1, random_state=seed).fit(x[members])
            assignment[members] = km.labels_ + len(centroids)
            centroids.extend(km.cluster_centers_)
            centroid_labels.extend([int(c)] * k_c)
    return assignment, np.asarray(centroids, dtype=np.float64), np.asarray(centroid_labels, dtype=np.int64)


def cluster_linearization_points(pool, pool_labels, test, test_labels, k: int, seed: int = 0) -> dict:
    """Table 3's linearization points for each test digit at one ``k``: its label's nearest centroid and that
    cluster's farthest member (see :mod:`netmoments.experiments.tightness`).

    Returns:
        ``{"centroid": (T, n), "farthest": (T, n)}`` float32 arrays, plus ``"cluster" (T,)`` (the nearest centroid
        of the digit's label) and ``"n_clusters"``. The farthest point is a pool member, never a test digit.
    """
    pool = np.asarray(pool, dtype=np.float64).reshape(len(pool), -1)
    test = np.asarray(test, dtype=np.float64).reshape(len(test), -1)
    pool_labels, test_labels = np.asarray(pool_labels), np.asarray(test_labels)
    assignment, centroids, centroid_labels = labelled_kmeans(pool, pool_labels, k, seed)
    farthest = np.empty_like(centroids)
    for c in range(len(centroids)):
        members = np.flatnonzero(assignment == c)
        if members.size == 0:  # k-means can empty a cluster; it can then never be the nearest centroid's
            farthest[c] = centroids[c]
            continue
        farthest[c] = pool[members[np.argmax(((pool[members] - centroids[c]) ** 2).sum(1))]]
    cluster = np.empty(len(test), dtype=np.int64)
    for c in np.unique(test_labels):
        ids = np.flatnonzero(centroid_labels == c)
        if ids.size == 0:
            raise ValueError(f"the pool has no digit of label {c}")
        rows = np.flatnonzero(test_labels == c)
        dist = ((test[rows, None, :] - centroids[None, ids, :]) ** 2).sum(-1)
        cluster[rows] = ids[np.argmin(dist, axis=1)]
    return {
        "centroid": centroids[cluster].astype(np.float32),
        "farthest": farthest[cluster].astype(np.float32),
        "cluster": cluster,
        "n_clusters": len(centroids),
    }
