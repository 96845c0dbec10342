"""The book's helpers, one module per chapter: what the notebooks call exists, and nothing exported goes uncalled.

``netmoments.viz`` and ``netmoments.widgets`` are packages (``_common`` / ``_frames`` and ``chNN_*`` modules)
whose ``__init__`` re-exports every name, so a notebook keeps writing ``viz.plot_...`` and ``widgets.NAME``. The
notebooks are read as JSON, nothing is executed.
"""
from __future__ import annotations

import inspect
import json
import pkgutil
import re
from importlib import import_module
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("ipywidgets")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [*sorted((ROOT / "book").glob("*.ipynb")),
             *sorted((ROOT / "netmoments" / "course" / "source").rglob("*.ipynb"))]


def _code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def _used_names(package: str) -> dict[str, set[str]]:
    """``{name: notebooks}`` for every ``package.NAME`` and ``from netmoments.package import NAME`` in code cells."""
    attribute = re.compile(rf"\b{package}\.(\w+)")
    imported = re.compile(rf"from netmoments\.{package} import (?:\(([^)]*)\)|([^\n#]+))")
    used: dict[str, set[str]] = {}
    for path in NOTEBOOKS:
        code = _code(path)
        names = set(attribute.findall(code))
        for group in imported.findall(code):
            names |= {n.strip() for n in ",".join(group).split(",") if n.strip()}
        for name in names:
            used.setdefault(name, set()).add(path.name)
    return used


def _chapter_modules(package: str):
    pkg = import_module(f"netmoments.{package}")
    return pkg, [import_module(f"netmoments.{package}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]


@pytest.mark.parametrize("package", ["viz", "widgets"])
def test_every_name_a_notebook_uses_exists(package):
    pkg = import_module(f"netmoments.{package}")
    used = _used_names(package)
    assert used, f"no notebook uses netmoments.{package}: is the scan broken?"
    missing = {name: sorted(where) for name, where in used.items() if not hasattr(pkg, name)}
    assert not missing, f"notebooks use names that netmoments.{package} does not have: {missing}"


@pytest.mark.parametrize("package", ["viz", "widgets"])
def test_the_package_reexports_every_public_name_of_its_modules(package):
    pkg, modules = _chapter_modules(package)
    assert len(modules) >= 7
    for module in modules:
        for name in module.__all__:
            assert getattr(pkg, name) is getattr(module, name), f"{module.__name__}.{name}"
        defined = [n for n, v in vars(module).items() if not n.startswith("_") and inspect.isfunction(v)
                   and v.__module__ == module.__name__]
        assert set(defined) <= set(module.__all__), f"{module.__name__} defines public functions outside __all__"
    assert set(pkg.__all__) == {n for m in modules for n in m.__all__ if n in pkg.__all__}
    assert len(pkg.__all__) == len(set(pkg.__all__))


def test_every_exported_plot_is_called():
    """A plot in ``viz.__all__`` is drawn by a notebook or by another function of the package (a widget, a figure
    made of smaller ones); one that nothing calls is deleted rather than kept up."""
    import netmoments.viz as viz

    used = set(_used_names("viz"))
    # every module but the two __init__ files, which only re-export
    sources = "\n".join(p.read_text(encoding="utf8") for p in (ROOT / "netmoments").rglob("*.py")
                        if p.relative_to(ROOT).as_posix() not in ("netmoments/viz/__init__.py",
                                                                   "netmoments/widgets/__init__.py"))
    uncalled = []
    for name in viz.__all__:
        # calls, and references such as a widget's viz.plot_... handed to precomputed_widget; not the definition
        calls = re.findall(rf"(?<!def )\b{name}\(|\bviz\.{name}\b", sources)
        if name not in used and not calls:
            uncalled.append(name)
    assert not uncalled, f"nothing calls {uncalled}"
