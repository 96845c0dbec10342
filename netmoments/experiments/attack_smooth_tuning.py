"""Tuning, on training digits, of blurred PGD's step size, the smooth suite's point-attack baseline.

``python -m netmoments.experiments.attack_smooth_tuning --out book/data/attack_tuning_smooth.json``

The smooth suite gives blurred PGD (:func:`netmoments.attacks.smooth_pgd_attack`) a per-digit L2 budget matched
to our smooth attack's draws, so its step is tuned at exactly those budgets. On the first correctly classified
*training* digits (never the reported test digits) our smooth attack runs first, as in the suite; then blurred
PGD runs at each relative step of :data:`STEP_GRID` (the step is ``factor * eps / steps``, so one factor serves
every budget; the default factor is 2.5) and is scored by its success rate at the matched budget (ties: the
smaller factor). The file records every score, the choice, the digits, and the command, commit, versions and
machine.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

__all__ = ["STEP_GRID", "DEFAULT_FACTOR", "tune_smooth", "main"]

#: The relative steps tried (the step is ``factor * eps / steps`` for a budget ``eps`` and ``steps`` steps).
STEP_GRID = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0)
#: The factor :func:`~netmoments.attacks.smooth_pgd_attack` uses when no step is given.
DEFAULT_FACTOR = 2.5


def tune_smooth(out, images: int = 64, chunk: int = 8, progress: bool = True, command: str | None = None) -> dict:
    """Score every factor of :data:`STEP_GRID` on the first ``images`` correctly classified training digits (in
    batches of ``chunk``, as the suite attacks them); write ``out`` (JSON) and return its content."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..attacks import gaussian_attack, smooth_pgd_attack
    from ..attacks.metrics import image_metrics
    from .attack_suite import DRAWS, EXTRA_VERSIONS, load_digits
    from .runner import write_json
    from .sittings import tuning_record

    start = time.perf_counter()
    torch.manual_seed(0)
    model, x, y, idx = load_digits("train", images)
    success = {factor: [] for factor in STEP_GRID}
    budgets = []
    for b in tqdm(range(0, len(y), chunk), desc="tuning blurred PGD", disable=not progress):
        xb, yb = x[b:b + chunk], y[b:b + chunk]
        ours = gaussian_attack(model, xb, yb, structure="smooth", seed=b)
        m = image_metrics(model, ours, yb, n_samples=DRAWS, generator=torch.Generator().manual_seed(b))
        # the suite's budget: the median L2 of our draws (noise included, after clipping), per digit
        eps = torch.as_tensor(m.l2_all, dtype=xb.dtype).clamp_min(1e-3)
        budgets.extend(eps.tolist())
        for factor in STEP_GRID:
            res = smooth_pgd_attack(model, xb, yb, eps=eps, blur_sigma=1.5, steps=100, step_size=factor * eps / 100)
            with torch.no_grad():
                fooled = model(res.mean).argmax(-1) != yb
            success[factor].extend(fooled.double().tolist())
    scores = {str(f): dict(factor=f, success=float(np.mean(s)), digits=len(s)) for f, s in success.items()}
    best = max(STEP_GRID, key=lambda f: (scores[str(f)]["success"], -f))
    data = dict(split="train", images=len(y), chunk=chunk, image_indices=idx.tolist(), scores=scores,
                best_factor=best, default_factor=DEFAULT_FACTOR, budget_median=float(np.median(budgets)),
                **tuning_record(command, start, EXTRA_VERSIONS))
    write_json(Path(out), data)
    return data


def main(argv=None) -> int:
    """The command line: ``--out JSON`` (refused if it exists), ``--images`` training digits, ``--no-progress``."""
    from .sittings import tuning_main

    return tuning_main(argv, "netmoments.experiments.attack_smooth_tuning", __doc__.split("\n\n")[0], tune_smooth, 64)


if __name__ == "__main__":
    sys.exit(main())
