"""What ``import netmoments`` costs, and where the optional dependencies are declared.

The core (special functions, ReLU moments, affine moments, Monte Carlo) needs only torch and numpy; the heavier
submodules load on first access. Each check imports in a fresh interpreter, since this test process has long
since imported everything.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# Not needed by the core: plotting, the distributed runner, nbgrader (only netmoments.course's grading uses it).
HEAVY = ("matplotlib", "dask", "distributed", "nbgrader")


def _loaded_after(statement: str) -> set[str]:
    """Top-level packages in sys.modules after running ``statement`` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_netmoments_pulls_in_neither_matplotlib_nor_dask():
    loaded = _loaded_after("import netmoments; netmoments.relu_moments")
    assert "netmoments" in loaded and "torch" in loaded
    assert not loaded & set(HEAVY), f"import netmoments loads {sorted(loaded & set(HEAVY))}"


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: the plotting module, reached through the lazy attribute, does load matplotlib."""
    pytest.importorskip("matplotlib")
    assert "matplotlib" in _loaded_after("import netmoments; netmoments.viz")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier  # every line pins one version
            assert spec.operator == "==", line
            pins[req.name.lower()] = spec.version
    return pins


def test_optional_dependencies_cover_the_optional_imports_and_admit_the_pinned_versions():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = _pins()
    declared = set()
    for extra, reqs in extras.items():
        for text in reqs:
            req = Requirement(text)
            name = req.name.lower()
            declared.add(name)
            assert name in pins, f"[{extra}] {name} is not pinned in requirements.txt"
            assert req.specifier.contains(pins[name]), f"[{extra}] {text} excludes the pinned {name}=={pins[name]}"
    # What netmoments imports beyond torch and numpy, by distribution name.
    for name in ("matplotlib", "ipywidgets", "tqdm", "scikit-learn", "mlxtend", "scipy", "dask", "foolbox",
                 "scikit-image", "nbgrader", "jupytext"):
        assert name in declared, f"{name} is in no optional-dependency extra of pyproject.toml"


def test_every_declared_pytest_marker_is_used():
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    tests = "".join(p.read_text(encoding="utf8") for p in (ROOT / "tests").glob("*.py"))
    for marker in (m.split(":", 1)[0].strip() for m in markers):
        assert re.search(rf"\bmark\.{marker}\b", tests), f"marker {marker!r} is declared in pyproject.toml, never used"
