"""What fixes a tightness run's rows: the covariance families, linearization points and methods, the
configuration (:class:`TightnessConfig`), the task keys, and the settings a run's metadata records and a resumed
run must share (:func:`run_settings`, :func:`check_settings`). The protocol is in
:mod:`netmoments.experiments.tightness`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .runner import RunnerError

__all__ = [
    "NM20_CLUSTER_FRACTIONS",
    "COV_KINDS",
    "POINT_KINDS",
    "METHODS",
    "SPARSE_PIXELS",
    "BLUR_STD",
    "ROW_LISTS",
    "TightnessConfig",
    "task_list",
    "default_metadata_path",
    "run_settings",
    "check_settings",
]

# NM20 clustered 10,000 images into k in {250, 500, 1000, 2500, 5000} clusters: these fractions of the pool.
#: Cluster counts as fractions of the image pool, matching NM20's clustering experiment.
NM20_CLUSTER_FRACTIONS = (0.025, 0.05, 0.1, 0.25, 0.5)
#: The input covariances of the tightness experiment.
COV_KINDS = ("dense", "sparse", "blur")
#: The choices of linearization point the tightness experiment compares.
POINT_KINDS = ("input", "dither", "tie_aware", "centroid", "farthest")
#: The closed-form covariance methods the tightness experiment checks.
METHODS = ("exact", "series", "hybrid")
#: The default ``sparse_pixels`` of :class:`TightnessConfig`: how many pixels the sparse covariance perturbs.
SPARSE_PIXELS = 60
#: The default ``blur_std`` of :class:`TightnessConfig`: the width of the blurred covariance's kernel, in pixels.
BLUR_STD = 1.5
# Per-logit lists in every row (10 numbers each).
# The mean's standard errors are not stored: they are sqrt(var / N) of the stored variances.
#: The per-logit lists stored in every result row.
ROW_LISTS = (
    "mc_mean", "mc_var", "mc_var_se",
    "mean", "var_exact", "var_series", "var_hybrid",
    "f_dmean", "lin_var", "lin_var_se",
    "l_dmean", "l_dmean_se", "l_dvar", "l_dvar_se",
)  # fmt: skip


@dataclass(frozen=True)
class TightnessConfig:
    """Everything that fixes a task's rows (stored in the metadata; a resumed run must use the same).

    Attributes:
        seed: base seed of every task.
        mc_samples: draws per task (shared by all its points).
        mc_batch: draws per network evaluation batch (memory only; does not change the rows).
        dither: half-width of the uniform dither of the ``"dither"`` control.
        tie_samples: draws (``S/2`` antithetic pairs) for the ``"tie_aware"`` linearization.
        points: point kinds evaluated under the dense covariance (the others use ``("input",)``).
        clusters: ``k`` values for Table 3 (pool-wide cluster counts).
        sparse_pixels: the attack-like sparse covariance, how many pixels it perturbs.
        blur_std: the attack-like blurred covariance, the width of its kernel in pixels.
    """

    seed: int = 0
    mc_samples: int = 10_000
    mc_batch: int = 2_000
    dither: float = 1e-3
    tie_samples: int = 8
    points: tuple[str, ...] = ("input", "dither", "tie_aware", "centroid", "farthest")
    clusters: tuple[int, ...] = (100, 200, 400, 1000, 2000)
    sparse_pixels: int = SPARSE_PIXELS
    blur_std: float = BLUR_STD

    def __post_init__(self):
        bad = [p for p in self.points if p not in POINT_KINDS]
        if bad or not self.points or "input" not in self.points:
            raise ValueError(f"points must include 'input' and be drawn from {POINT_KINDS}, got {self.points}")
        if not isinstance(self.mc_samples, int) or self.mc_samples < 2:
            raise ValueError(f"mc_samples must be an int >= 2, got {self.mc_samples!r}")
        if not isinstance(self.tie_samples, int) or self.tie_samples < 2 or self.tie_samples % 2:
            raise ValueError(f"tie_samples must be an even int >= 2, got {self.tie_samples!r}")
        if any(not isinstance(k, int) or k < 1 for k in self.clusters):
            raise ValueError(f"clusters must be positive ints, got {self.clusters}")


def task_list(n_images: int, sigmas: Sequence[float], covs: Sequence[str]) -> list[tuple]:
    """Task keys ``(image, sigma, cov)``, image-major: a partial run has whole images for every setting."""
    return [(i, float(s), c) for i in range(n_images) for c in covs for s in sigmas]


def default_metadata_path(out: Path) -> Path:
    """``out``'s metadata file: beside it, ``.json`` for ``.jsonl`` and ``.jsonl.gz``."""
    stem = out.with_suffix("") if out.suffix == ".gz" else out
    return stem.with_suffix(".json")


def run_settings(n_images, sigmas, covs, config: TightnessConfig, ctx=None) -> dict:
    """A run's settings as its metadata keeps them; without ``ctx`` (a
    :class:`netmoments.experiments.tightness.TightnessContext`), only those known before the set-up."""
    settings = {"n_images": n_images, "sigmas": [float(s) for s in sigmas], "covs": list(covs),
                "config": _jsonable(asdict(config))}  # fmt: skip
    if ctx is not None:
        settings["fingerprint"] = ctx.fingerprint()
        settings["n_clusters"] = {str(k): v for k, v in ctx.n_clusters.items()}
    return settings


def check_settings(old: dict, settings: dict, out: Path, meta_path: Path) -> None:
    """Refuse to continue ``out`` with settings other than those its metadata ``old`` records (only the keys in
    ``settings`` are compared, so the check can run before the set-up, without the fingerprint)."""
    recorded = old["settings"]
    differ = []
    for key in sorted(settings):
        if recorded.get(key) == settings[key]:
            continue
        if isinstance(settings[key], dict) and isinstance(recorded.get(key), dict):  # e.g. config.seed
            differ += [f"{key}.{k}" for k in sorted(settings[key]) if recorded[key].get(k) != settings[key][k]]
        else:
            differ.append(key)
    if differ:
        raise RunnerError(f"{out} was written with other settings than this run's ({', '.join(differ)} differ; see "
                          f"{meta_path}); use the same options, or another --out")  # fmt: skip


def _jsonable(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value, default=list))
