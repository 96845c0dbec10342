"""The Reference part of the book (``book/reference/*.md``) covers the package, and every public name has a docstring.

A public module is a module of ``netmoments`` whose dotted name has no part starting with ``_`` and that declares
``__all__``; its public names are that ``__all__``. Then

- every public function and class has a docstring of its own (not one inherited from a base class or written by
  ``dataclasses``), and every public constant a ``#:`` doc comment where it is assigned;
- every public module has an ``automodule`` on some reference page, and every public name is documented there:
  an ``auto...`` directive names the same object (a re-exported name counts where its object is documented).

The build (``jupyter-book build -W -n``) checks that the pages render; these tests check that nothing is missing.
Also here: the text function of the book's alt-text extension (``book/_ext/alt_text.py``) and the alt-text check
of ``scripts/check_book.py``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "book" / "reference"
DIRECTIVE = re.compile(r"^\.\. auto(module|function|class|exception|data)::\s*([\w.]+)\s*$", re.M)

pytest.importorskip("sphinx")
from sphinx.pycode import ModuleAnalyzer  # noqa: E402
from sphinx.errors import PycodeError  # noqa: E402


def public_modules(package: str = "netmoments") -> list[types.ModuleType]:
    """The package and its submodules that declare ``__all__`` and have no ``_``-prefixed part in their name."""
    root = importlib.import_module(package)
    modules = [root] if hasattr(root, "__all__") else []
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            modules.append(module)
    return modules


def _own_docstring(obj) -> str | None:
    """The docstring ``obj`` itself was written with, or None (inherited and dataclass-made ones do not count)."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        # dataclasses and NamedTuple fill an empty docstring with the signature, "Name(field: type, ...)"
        if doc and re.match(rf"{re.escape(obj.__name__)}\(", doc):
            return None
    else:
        doc = getattr(obj, "__doc__", None)
    return doc if doc and doc.strip() else None


def _has_doc_comment(name: str, obj, modules: list[types.ModuleType]) -> bool:
    """Whether some module holding ``obj`` under ``name`` documents its assignment with a ``#:`` comment."""
    for module in modules:
        if getattr(module, name, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
        except PycodeError:
            continue
        if ("", name) in docs and "".join(docs[("", name)]).strip():
            return True
    return False


def undocumented_names(module: types.ModuleType, holders: list[types.ModuleType] | None = None) -> list[str]:
    """``module.name`` for each name in ``module.__all__`` with no docstring (functions, classes) or no ``#:`` doc
    comment (constants, looked up in ``holders``, by default ``module`` and the modules it was imported from)."""
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj):
            ok = _own_docstring(obj) is not None
        else:
            candidates = [module, *(holders or [])]
            candidates += [sys.modules[m] for m in list(sys.modules) if m.startswith(module.__name__.split(".")[0])]
            ok = _has_doc_comment(name, obj, candidates)
        if not ok:
            missing.append(f"{module.__name__}.{name}")
    return missing


def reference_directives(folder: Path = REFERENCE) -> list[tuple[str, str]]:
    """``(kind, dotted name)`` of every autodoc directive on the reference pages (``kind`` is ``module``, ...)."""
    found = []
    for page in sorted(folder.glob("*.md")):
        found += DIRECTIVE.findall(page.read_text(encoding="utf8"))
    return found


@functools.lru_cache(maxsize=None)
def _reexports():
    return _load(ROOT / "book" / "_ext" / "reexports.py", "reexports")


def _resolve(dotted: str):
    # the book's own resolver (book/_ext/reexports.py), so the test and the build agree on what a name is
    return _reexports().import_dotted(dotted)


def missing_from_reference(modules: list[types.ModuleType], directives: list[tuple[str, str]]) -> list[str]:
    """Public modules without an ``automodule`` and public names whose object no directive documents."""
    pages = {name for kind, name in directives if kind == "module"}
    documented = {}
    for kind, dotted in directives:
        if kind != "module":
            documented.setdefault(dotted.rsplit(".", 1)[1], []).append(_resolve(dotted))
    missing = [f"module {m.__name__}" for m in modules if m.__name__ not in pages]
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if not any(doc is obj for doc in documented.get(name, [])):
                missing.append(f"{module.__name__}.{name}")
    return missing


MODULES = public_modules()


def test_the_package_has_public_modules():
    names = {m.__name__ for m in MODULES}
    assert {"netmoments", "netmoments.relu", "netmoments.attacks", "netmoments.viz"} <= names


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_every_public_name_has_a_docstring(module):
    missing = undocumented_names(module)
    assert not missing, f"public names without a docstring (or a #: comment for a constant): {missing}"


def test_every_public_module_and_name_is_in_the_reference():
    directives = reference_directives()
    assert directives, f"no autodoc directive found under {REFERENCE}"
    missing = missing_from_reference(MODULES, directives)
    assert not missing, f"missing from book/reference/*.md (add an automodule / auto... directive): {missing}"


def test_every_reference_page_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf8")
    unlisted = [p.stem for p in REFERENCE.glob("*.md") if f"book/reference/{p.stem}" not in toc]
    assert not unlisted, f"reference pages missing from _toc.yml: {unlisted}"


# ---------------------------------------------------------------- the detectors can fail


def _made_up_module() -> types.ModuleType:
    module = types.ModuleType("made_up")

    def documented():
        """Has a docstring."""

    def bare():
        pass

    class Bare:
        pass

    module.documented, module.bare, module.Bare, module.LIMIT = documented, bare, Bare, 12345
    module.__all__ = ["documented", "bare", "Bare", "LIMIT"]
    return module


def test_detector_catches_undocumented_names():
    missing = undocumented_names(_made_up_module(), holders=[])
    assert missing == ["made_up.bare", "made_up.Bare", "made_up.LIMIT"]


def test_detector_ignores_dataclass_made_docstrings():
    import dataclasses

    @dataclasses.dataclass
    class Point:
        x: float

    module = types.ModuleType("made_up_dc")
    module.Point, module.__all__ = Point, ["Point"]
    assert Point.__doc__  # dataclasses wrote one
    assert undocumented_names(module, holders=[]) == ["made_up_dc.Point"]


def test_detector_catches_a_missing_page_and_name():
    relu = importlib.import_module("netmoments.relu")
    directives = [("module", "netmoments.relu"), ("function", "netmoments.relu.relu_moments")]
    missing = missing_from_reference([relu], directives)
    assert "netmoments.relu.relu_moments" not in missing
    assert "netmoments.relu.relu_covariance" in missing
    assert missing_from_reference([relu], directives[1:])[0] == "module netmoments.relu"


def test_a_reexported_name_counts_where_its_object_is_documented():
    package = importlib.import_module("netmoments")
    module = types.ModuleType("made_up_reexport")
    module.relu_moments, module.__all__ = package.relu_moments, ["relu_moments"]
    directives = [("module", "made_up_reexport"), ("function", "netmoments.relu.relu_moments")]
    assert missing_from_reference([module], directives) == []


# ---------------------------------------------------------------- figure alt text


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_alt_text_is_the_caption_with_tex_kept():
    from docutils import nodes

    alt_text = _load(ROOT / "book" / "_ext" / "alt_text.py", "alt_text")
    caption = nodes.caption("", "", nodes.Text("The law of "), nodes.math("", r"q = \max(z, 0)"),
                            nodes.Text(" for\n  two "), nodes.emphasis("", "sigmas"), nodes.Text(". "))
    assert alt_text.caption_alt_text(caption) == r"The law of q = \max(z, 0) for two sigmas."
    with pytest.raises(TypeError):
        alt_text.caption_alt_text("not a node")


def test_alt_text_fills_images_of_captioned_figures_only():
    from docutils import nodes
    from docutils.utils import new_document
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser

    alt_text = _load(ROOT / "book" / "_ext" / "alt_text.py", "alt_text")
    doc = new_document("test", get_default_settings(Parser))
    captioned = nodes.figure("", nodes.image(uri="a1b2.png"), nodes.caption("", "A caption."))
    kept = nodes.figure("", nodes.image(uri="c3d4.png", alt="Given by the author."), nodes.caption("", "Other."))
    bare = nodes.figure("", nodes.image(uri="e5f6.png"))
    doc += [captioned, kept, bare]
    assert alt_text.fill_figure_alt(doc) == 1
    alts = [image.get("alt") for image in doc.findall(nodes.image)]
    assert alts == ["A caption.", "Given by the author.", None]


def test_check_book_flags_a_hash_alt():
    check_book = _load(ROOT / "scripts" / "check_book.py", "check_book")
    caption = ('<figcaption><p><span class="caption-number">Fig. 2.1 </span><span class="caption-text">The law of '
               '<span class="math notranslate nohighlight">\\(q = \\max(z, 0)\\)</span>.</span></p></figcaption>')
    good = f'<figure id="f"><img alt="The law of q = \\max(z, 0)." src="../_images/ab12.png" />{caption}</figure>'
    hashed = f'<figure id="f"><img alt="../_images/ab12.png" src="../_images/ab12.png" />{caption}</figure>'
    other = f'<figure id="f"><img alt="Something else entirely." src="../_images/ab12.png" />{caption}</figure>'
    assert check_book.figure_alt_problems(good, "p.html") == []
    assert len(check_book.figure_alt_problems(hashed, "p.html")) == 1
    assert len(check_book.figure_alt_problems(other, "p.html")) == 1


# ---------------------------------------------------------------- docstring bars


def test_bars_are_escaped_outside_literals_only():
    plain_bars = _load(ROOT / "book" / "_ext" / "plain_bars.py", "plain_bars")
    assert plain_bars.escape_bars("for |rho| < 1") == r"for \|rho\| < 1"
    assert plain_bars.escape_bars("``|x|`` and |y|") == r"``|x|`` and \|y\|"
    assert plain_bars.escape_bars(r"already \| escaped") == r"already \| escaped"
