"""The book's piecewise-linear classifiers for MNIST, with shipped trained weights.

``lenet()`` is the network of NM20's tightness experiments:
conv(1->32, 5x5, pad 2) -> maxpool 2 -> ReLU -> conv(32->64, 5x5, pad 2) -> maxpool 2 -> ReLU -> flatten
-> linear(3136->1024) -> ReLU -> linear(1024->10). ``mlp()`` is a one-hidden-layer network that *is* an
Affine-ReLU-Affine map, so its moments need no linearization at all. ``deep_cnn()`` is a deeper network shaped
like AlexNet (five 3x3 convolutions, three max-pools, three fully connected layers) for studying how the
approximations behave with depth.

Trained weights live in ``netmoments/weights/`` (stored as float16, loaded as float32). When a file is missing
the network is retrained deterministically from a fixed seed on the 4,000 training digits of
:func:`netmoments.data.load_mnist` and cached under ``~/.cache/netmoments`` (or ``$NETMOMENTS_CACHE``).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "lenet",
    "mlp",
    "deep_cnn",
    "load_lenet",
    "load_mlp",
    "load_deep_cnn",
    "load_or_train",
    "train_classifier",
    "accuracy",
    "save_weights",
    "weights_path",
    "TRAINING_RECIPES",
]

_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Every choice that changes the trained weights, so a retrain reproduces the shipped file.
#: The training settings of each shipped network, by model name.
TRAINING_RECIPES = {
    "lenet": dict(epochs=15, batch_size=50, lr=1e-3, seed=0),
    "mlp": dict(epochs=30, batch_size=50, lr=1e-3, seed=0),
    "deep_cnn": dict(epochs=20, batch_size=50, lr=1e-3, seed=0),
}


def lenet() -> nn.Sequential:
    """Untrained LeNet; input ``(B, 1, 28, 28)`` -> logits ``(B, 10)``."""
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=5, padding=2),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    )


def mlp(hidden: int = 256) -> nn.Sequential:
    """Untrained one-hidden-layer network; input ``(B, 1, 28, 28)`` or ``(B, 784)`` -> logits ``(B, 10)``."""
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive int, got {hidden!r}")
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def deep_cnn() -> nn.Sequential:
    """Untrained AlexNet-shaped network; input ``(B, 1, 28, 28)`` -> logits ``(B, 10)``.

    Five 3x3 convolutions (padding 1; 16, 32, 32, 64, 64 channels), each followed by a ReLU, with 2x2 max-pools
    after the first, third and fifth (28 -> 14 -> 7 -> 3), then linear(576->256) -> ReLU -> linear(256->128)
    -> ReLU -> linear(128->10): 8 layers with weights against LeNet's 4.
    """
    def conv(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *conv(1, 16), nn.MaxPool2d(2),
        *conv(16, 32), *conv(32, 32), nn.MaxPool2d(2),
        *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 3 * 3, 256), nn.ReLU(),
        nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, 10),
    )  # fmt: skip


_ARCHITECTURES = {"lenet": lenet, "mlp": mlp, "deep_cnn": deep_cnn}


def weights_path(name: str) -> Path:
    """Path of the shipped weights of ``name`` ("lenet", "mlp" or "deep_cnn") inside the package."""
    if name not in _ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(_ARCHITECTURES)}, got {name!r}")
    return _WEIGHTS_DIR / f"{name}_mnist5k.pt"


def _cache_dir() -> Path:
    root = os.environ.get("NETMOMENTS_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "netmoments"


@contextlib.contextmanager
def _deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of ``images`` ``(N, 1, 28, 28)`` whose argmax logit equals ``labels`` ``(N,)``."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels disagree on N: {images.shape[0]} vs {labels.shape[0]}")
    param = next(model.parameters())
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(param)
        correct += (model(batch).argmax(-1).cpu() == labels[start : start + batch_size]).sum().item()
    return correct / images.shape[0]


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy, deterministically (seeded init order and batches).

    Args:
        images: ``(N, 1, 28, 28)`` float32; labels: ``(N,)`` int64.
    Returns the model in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = images.shape[0]
    epoch_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="training", unit="epoch")
    with _deterministic():
        model.train()
        for _ in epoch_iter:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(images[idx]), labels[idx]).backward()
                optimizer.step()
    return model.eval()


def save_weights(model: nn.Module, path: str | os.PathLike, **metadata) -> None:
    """Store ``model``'s parameters as float16 (half the bytes; accuracy checked unchanged) plus metadata."""
    state = {k: v.detach().to("cpu", torch.float16).clone() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save({"state_dict": state, "metadata": dict(metadata)}, tmp)
    os.replace(tmp, path)  # atomic, so a concurrent reader never sees half a file


def _load_state(model: nn.Module, path: Path) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.to(torch.float32) for k, v in blob["state_dict"].items()})
    return blob.get("metadata", {})


def load_or_train(
    name: str, *, retrain: bool = False, save_to: str | os.PathLike | None = None, progress: bool = False
) -> nn.Sequential:
    """The trained network ``name`` ("lenet", "mlp" or "deep_cnn") in eval mode, float32, on the CPU.

    Loads the shipped weights; if they are missing (or ``retrain``), trains from ``TRAINING_RECIPES[name]`` on the
    training split and saves the result to ``save_to`` (default: the user cache directory; pass
    ``weights_path(name)`` to regenerate the shipped file). The test accuracy is attached as
    ``model.test_accuracy`` (from the file's metadata when loaded).
    """
    if name not in _ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(_ARCHITECTURES)}, got {name!r}")
    recipe = TRAINING_RECIPES[name]
    candidates = [weights_path(name), _cache_dir() / weights_path(name).name]
    if not retrain:
        for path in candidates:
            if path.is_file():
                # the constructor's random init is overwritten at once; fork so loading leaves the global RNG alone
                with torch.random.fork_rng(devices=[]):
                    model = _ARCHITECTURES[name]()
                metadata = _load_state(model, path)
                model.test_accuracy = metadata.get("test_accuracy")
                return model.eval()

    from .data import load_mnist

    train_x, train_y = load_mnist("train")
    test_x, test_y = load_mnist("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])  # the initial weights are part of the recipe
        model = _ARCHITECTURES[name]()
    model = train_classifier(model, train_x, train_y, progress=progress, **recipe)
    float32_acc = accuracy(model, test_x, test_y)
    # Evaluate after the float16 round trip: that is what users of the stored file get.
    save_path = Path(save_to) if save_to is not None else candidates[1]
    save_weights(model, save_path, recipe=recipe)
    _load_state(model, save_path)
    test_acc = accuracy(model, test_x, test_y)
    save_weights(
        model,
        save_path,
        recipe=recipe,
        test_accuracy=test_acc,
        test_accuracy_float32=float32_acc,
        train_accuracy=accuracy(model, train_x, train_y),
        torch_version=str(torch.__version__),
    )
    model.test_accuracy = test_acc
    return model.eval()


def load_lenet(**kwargs) -> nn.Sequential:
    """Trained LeNet (see :func:`lenet`) in eval mode, float32; ~98% accurate on the 1,000 test digits."""
    return load_or_train("lenet", **kwargs)


def load_mlp(**kwargs) -> nn.Sequential:
    """Trained 784-256-10 ReLU network (see :func:`mlp`) in eval mode, float32."""
    return load_or_train("mlp", **kwargs)


def load_deep_cnn(**kwargs) -> nn.Sequential:
    """Trained AlexNet-shaped network (see :func:`deep_cnn`) in eval mode, float32."""
    return load_or_train("deep_cnn", **kwargs)
