"""Chapter 9's result plots live in ``netmoments.viz.ch09_attacks``; ``netmoments.attacks.report.plot_*``, which
the chapter calls, hand over to them, and importing the report (or the attacks) still loads no matplotlib."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_report_loads_no_matplotlib():
    code = ("import json, sys\nimport netmoments.attacks, netmoments.attacks.report\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True)
    assert "matplotlib" not in json.loads(out.stdout.strip().splitlines()[-1])


def _table():
    from netmoments.attacks.metrics import L0_BUDGETS

    return [dict(method=m, n=12, **{f"success_l0_{b}": (s, s - 0.1, s + 0.1) for b in L0_BUDGETS})
            for m, s in (("gauss-sparse", 0.6), ("fmn-l0", 0.4))]


def _calibration():
    rng = np.random.default_rng(0)
    pred, mc = rng.uniform(0, 1, 20), rng.uniform(0, 1, 20)
    return dict(pred=pred, mc=mc, margin_z=rng.normal(size=20), sur_mean=rng.normal(size=20),
                mc_mean=rng.normal(size=20), bins=[(0.0, 0.5, 10, 0.25, 0.3), (0.5, 1.0, 10, 0.75, 0.7)])


def test_report_plots_draw_through_viz():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from netmoments import viz
    from netmoments.attacks import report

    fig = report.plot_budget_curves(_table(), labels={"fmn-l0": "FMN"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["gauss-sparse (n=12)", "FMN (n=12)"]
    assert np.allclose(ax.lines[0].get_ydata(), 0.6)
    fig = report.plot_calibration(_calibration())
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3  # two bin means and the diagonal
    clean = np.zeros((2, 1, 4, 4))
    fig = report.plot_draws_and_points(clean, [clean + 0.5], ["draw"], row_labels=["a", "b"])
    assert len(fig.axes) == 4 and fig.axes[1].get_title() == "draw" and fig.axes[0].get_ylabel() == "a"
    plt.close("all")
    assert viz.plot_budget_curves.__module__ == "netmoments.viz.ch09_attacks"
