"""Tuning, on training digits, of the sparse Gaussian attack's support searches.

``python -m netmoments.experiments.attack_search_tuning --out book/data/attack_tuning_search.json``

The support solver's phase 1 decides which pixels the Gaussian may touch (:mod:`netmoments.attacks.search`).
Its default, proximal L1 steps, moves about twice as many pixels as Foolbox's L0 fast minimum-norm attack. Two
searches aimed at L0 are tuned here, each on a grid of its own settings and of the number of final-check rounds
(the distribution phase keeps no L1 price on the support: on 64 training digits a price of 0, 0.03 or 0.1 scored
the same and the default 0.3 lost successes, :data:`EXPLORED`):

* ``l0``: projected steps onto an L0 ball whose radius adapts per image (hard thresholding): its starting
  radius, step length and radius change;
* ``fmn``: a warm start from Foolbox's L0-FMN point: its step length and radius change.

Foolbox's L0-FMN, the point attack the searches are compared with, gets a grid of the same size on the same digits
(:data:`FMN_L0_GRID`). Every setting runs on the first correctly classified *training* digits (never the reported
test digits), and is scored as chapter 9 scores the sparse attacks: the expected success within 20 changed pixels on
100 draws per digit (ties: the smaller median L0). The cost ratio to the yardstick (100 steps of L-infinity PGD,
timed in the same process on the same digits) must stay within :data:`COST_LIMIT`. The file records every score, the
chosen settings, the digits, and the command, commit, versions and machine.
"""
from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

__all__ = ["SEARCH_GRID", "FMN_L0_GRID", "COST_LIMIT", "EXPLORED", "tune_search", "main"]

#: The settings tried per search (every combination), with the distribution phase's L1 price ``l1_weight``.
SEARCH_GRID = {
    "l0": dict(search_radius=(40.0, 80.0), search_step=(8.0, 16.0), search_gamma=(0.2, 0.3), tighten_rounds=(1, 3),
               l1_weight=(0.0,)),
    "fmn": dict(search_step=(1.0, 3.0), search_gamma=(0.05, 0.2), tighten_rounds=(1, 3), l1_weight=(0.0,)),
}
#: The settings tried before this grid was fixed, on the first 64 correctly classified training digits with the
#: same scores (100 draws per digit; cost against one yardstick per 16 digits), kept so that every variant tried
#: is on record: ``(search, settings, success within 20 pixels, median L0, cost ratio, success)``. Unnamed
#: settings are the defaults (radius 20, step 3, gamma 0.05, L1 price 0.3, kappa 1, 60 search steps).
EXPLORED = (
    ("fmn-l0 (point)", "100 steps, max_stepsize 3, gamma 0.05", 0.938, 11.0, 1.07, 1.000),
    ("l0", "defaults", 0.771, 12.0, 1.48, 0.797),
    ("l0", "radius 10", 0.725, 12.0, 1.43, 0.778),
    ("l0", "radius 40", 0.870, 11.0, 1.46, 0.892),
    ("l0", "step 1", 0.847, 11.0, 1.46, 0.879),
    ("l0", "step 8", 0.863, 10.0, 1.46, 0.894),
    ("l0", "gamma 0.1", 0.851, 11.0, 1.48, 0.866),
    ("l0", "gamma 0.2", 0.890, 11.0, 1.52, 0.901),
    ("l0", "L1 price 0.1", 0.845, 12.0, 1.39, 0.923),
    ("l0", "L1 price 1.0", 0.140, float("inf"), 1.63, 0.140),
    ("l0", "kappa 2", 0.531, 11.5, 1.52, 0.532),
    ("l0", "radius 40, step 8, gamma 0.2, L1 price 0", 0.941, 10.0, 1.19, 0.972),
    ("l0", "radius 40, step 8, gamma 0.2, L1 price 0.03", 0.941, 10.0, 1.22, 0.972),
    ("l0", "radius 40, step 8, gamma 0.2, L1 price 0.1", 0.941, 10.0, 1.18, 0.972),
    ("l0", "radius 40, step 8, gamma 0.2, L1 price 0, no noise reward (a point)", 0.969, 10.0, 1.01, 1.000),
    ("l0", "L1 price 0", 0.857, 12.0, 1.38, 0.948),
    ("fmn", "defaults (60 FMN steps)", 0.848, 11.0, 1.52, 0.879),
    ("fmn", "L1 price 0", 0.899, 11.0, 1.45, 0.944),
    ("fmn", "L1 price 0.1", 0.899, 11.0, 1.46, 0.937),
    ("fmn", "L1 price 0, 100 FMN steps", 0.873, 11.0, 1.84, 0.919),
)
#: Foolbox L0-FMN's settings tried on the same digits (100 steps), so that the point attack the searches are
#: compared with gets as wide a grid as the L0 search (:data:`SEARCH_GRID`, 16 settings) on the same digits.
FMN_L0_GRID = dict(max_stepsize=(0.3, 1.0, 3.0, 10.0), gamma=(0.02, 0.05, 0.1, 0.2))
#: The most a setting may cost, in units of the yardstick's wall time per digit (twice the yardstick).
COST_LIMIT = 2.0


def _best(table: dict) -> str:
    usable = [k for k, v in table.items() if "error" not in v and v["cost_ratio"] <= COST_LIMIT]
    return max(usable, key=lambda k: (table[k]["success_l0_20"], -table[k]["l0_median"]))


def tune_search(out, images: int = 96, chunk: int = 8, progress: bool = True, command: str | None = None) -> dict:
    """Score every setting of :data:`SEARCH_GRID` and of :data:`FMN_L0_GRID` on the first ``images`` correctly
    classified training digits, with the default (L1) search and Foolbox L0-FMN at the suites' frozen settings as
    references; write ``out`` (JSON) and return its content.

    The digits are attacked in batches of ``chunk`` (the suites' batch), each batch timing the yardstick first in
    the same process, so that ``cost_ratio`` (the ratio of mean times per digit) is measured as the suites
    measure it."""
    import torch
    from tqdm.auto import tqdm

    from ..attacks import fmn_attack, gaussian_attack
    from .attack_fair_tuning import score_batch
    from .attack_suite import EXTRA_VERSIONS, TUNED, _yardstick, load_digits
    from .runner import write_json
    from .sittings import tuning_record

    start = time.perf_counter()
    torch.manual_seed(0)
    model, x, y, idx = load_digits("train", images)
    settings_list = [(search, dict(zip(axes, values))) for search, axes in SEARCH_GRID.items()
                     for values in itertools.product(*axes.values())]
    runs = {}
    for search, settings in settings_list:
        key = ",".join(f"{k}={v}" for k, v in settings.items())
        runs[(search, key)] = (settings, lambda xb, yb, s=search, kw=settings: gaussian_attack(
            model, xb, yb, support_search=s, seed=0, **kw), 100)
    for values in itertools.product(*FMN_L0_GRID.values()):
        settings = dict(zip(FMN_L0_GRID, values))
        key = ",".join(f"{k}={v}" for k, v in settings.items())
        runs[("fmn-l0", key)] = (settings, lambda xb, yb, kw=settings: fmn_attack(model, xb, yb, norm="l0",
                                                                                   steps=100, **kw), 1)
    runs[("references", "l1 (default)")] = ({}, lambda xb, yb: gaussian_attack(model, xb, yb, seed=0), 100)
    runs[("references", "fmn-l0 (point)")] = ({}, lambda xb, yb: fmn_attack(model, xb, yb, norm="l0", steps=100,
                                                                            **TUNED["fmn_l0"]), 1)
    parts: dict = {name: [] for name in runs}
    yardsticks = []
    batches = range(0, len(y), chunk)
    for b in tqdm(batches, desc="tuning the support searches", disable=not progress):
        xb, yb = x[b:b + chunk], y[b:b + chunk]
        yardsticks.append(_yardstick(model, xb, yb) * len(yb))
        for name, (_, attack, draws) in runs.items():
            try:
                parts[name].append(score_batch(model, xb, yb, lambda a=attack: a(xb, yb), draws, seed=b))
            except (ValueError, IndexError) as err:  # a setting Foolbox cannot run: recorded, never chosen
                parts[name].append(dict(error=str(err)))
    yardstick_s = sum(yardsticks) / len(y)
    scores: dict = {}
    for (group, key), (settings, _, _) in runs.items():
        scores.setdefault(group, {})[key] = dict(settings, **_pooled(parts[(group, key)], yardstick_s))
    references = scores.pop("references")
    grids = {**SEARCH_GRID, "fmn-l0": FMN_L0_GRID}
    best = {search: {k: v for k, v in table[_best(table)].items() if k in grids[search]}
            for search, table in scores.items()}
    data = dict(split="train", images=len(y), chunk=chunk, image_indices=idx.tolist(), yardstick_s=yardstick_s,
                cost_limit=COST_LIMIT, scores=scores, best=best, references=references,
                grids={s: {k: list(v) for k, v in axes.items()} for s, axes in grids.items()},
                explored=[dict(zip(("search", "settings", "success_l0_20", "l0_median", "cost_ratio", "success"), e))
                          for e in EXPLORED],
                **tuning_record(command, start, EXTRA_VERSIONS))
    write_json(Path(out), data)
    return data


def _pooled(parts: list, yardstick_s: float) -> dict:
    """One setting's scores over all batches: means over digits, the median L0 over digits, the time and passes
    per digit, and ``cost_ratio``, its time per digit over the yardstick's."""
    import numpy as np

    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        return dict(error=errors[0])
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("success_l0_20", "success", "l0")}
    n = len(cat["success"])
    per_image = sum(p["seconds"] for p in parts) / n
    return dict(success_l0_20=float(cat["success_l0_20"].mean()), success=float(cat["success"].mean()),
                l0_median=float(np.median(cat["l0"])), time_per_image_s=per_image,
                passes_per_image=sum(p["passes"] for p in parts) / n, cost_ratio=per_image / yardstick_s)


def main(argv=None) -> int:
    """The command line: ``--out JSON`` (refused if it exists), ``--images`` training digits, ``--no-progress``."""
    from .sittings import tuning_main

    return tuning_main(argv, "netmoments.experiments.attack_search_tuning", __doc__.split("\n\n")[0], tune_search, 96)


if __name__ == "__main__":
    sys.exit(main())
