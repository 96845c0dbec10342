"""Chapter 9, Gaussian attacks: the attack browser."""
from __future__ import annotations

from .. import viz
from ._frames import FRAME_DPI, FrameWidget, precomputed_widget

__all__ = ["load_attack_browser_data", "attack_browser_summary", "attack_browser_widget"]

def load_attack_browser_data(path) -> dict:
    """The precomputed chapter-8 attacks (``book/data/attacks_widget.npz``) as a dict of numpy arrays.

    Arrays are indexed ``[image, target, weight, ...]``: ``mean``, ``noise_std`` ``(I, T, W, 1, H, W)``,
    ``draws`` ``(I, T, W, S, 1, H, W)``, ``success`` ``(I, T, W)``; plus ``clean``, ``labels``, ``targets``
    ``(I, T)`` and ``weights`` ``(W,)``.
    """
    import numpy as np

    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def attack_browser_summary(data: dict, image: int, target: int, weight: int) -> dict:
    """Pure selection for the attack browser: one precomputed attack and its numbers.

    ``image``, ``target``, ``weight`` are indices into the arrays of :func:`load_attack_browser_data`.
    Returns the panels (clean, mean, noise std, draws, each with a leading batch axis of 1), the label, the
    target class, the L1 weight, the MC success rate and the pixels touched (|δ| or noise std > 1e-3).
    """
    n_img, n_tgt, n_w = data["success"].shape
    for name, value, size in (("image", image, n_img), ("target", target, n_tgt), ("weight", weight, n_w)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise ValueError(f"{name} must be an int index in [0, {size - 1}], got {value!r}")
    clean = data["clean"][image]
    mean = data["mean"][image, target, weight]
    std = data["noise_std"][image, target, weight]
    touched = int(((abs(mean - clean) > 1e-3) | (std > 1e-3)).sum())
    return {
        "clean": clean[None],
        "mean": mean[None],
        "noise_std": std[None],
        "draws": data["draws"][image, target, weight][None],
        "label": int(data["labels"][image]),
        "target": int(data["targets"][image, target]),
        "l1_weight": float(data["weights"][weight]),
        "success": float(data["success"][image, target, weight]),
        "pixels_touched": touched,
    }


def attack_browser_widget(data: dict, *, dpi: int = FRAME_DPI) -> FrameWidget:
    """Browse precomputed targeted sparse Gaussian attacks: digit, target and L1 weight (see the summary).
    One frame per stored attack; the readouts name the digit's label, the target class and the weight."""
    n_img, n_tgt, n_w = data["success"].shape

    def compute(image, target, weight):
        return attack_browser_summary(data, image, target, weight)

    def plot(s):
        title = f"{s['label']} → {s['target']}, λ={s['l1_weight']:g}"
        return viz.plot_attack_grid(s["clean"], s["mean"], s["noise_std"], s["draws"], titles=[title],
                                    success=[s["success"]])

    def describe(s):
        return f"pixels touched {s['pixels_touched']}; success of the draws on the real LeNet {s['success']:.3f}"

    # Targets are per digit; when each column is the label shifted by a fixed amount, say so in the readout.
    shifts = (data["targets"] - data["labels"][:, None]) % 10

    def target_label(t):
        column = {int(v) for v in shifts[:, t]}
        return f"#{t}: label + {column.pop()}" if len(column) == 1 else f"#{t}"

    grid = {"image": range(n_img), "target": range(n_tgt), "weight": range(n_w)}
    return precomputed_widget(
        compute, plot, grid, describe=describe, dpi=dpi, initial={"weight": min(1, n_w - 1)},
        descriptions={"image": "digit", "target": "target", "weight": "L1 weight"},
        formats={"image": lambda i: f"#{i}: a {int(data['labels'][i])}", "target": target_label,
                 "weight": lambda w: f"#{w}: λ = {float(data['weights'][w]):g}"},
    )
