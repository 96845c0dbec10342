"""Sphinx extension: every image of a captioned figure gets its caption as alt text.

myst-nb turns a notebook cell's ``"figure": {"caption": ..., "name": ...}`` metadata into a figure node around the
cell's image output, but leaves the image without ``alt``; Sphinx's HTML writer then falls back to the image's file
name (a hash). A screen reader would read that hash. This extension copies the caption, as plain text, into the
``alt`` of every image inside the figure, once the document is resolved, just before it is written. Maths in a caption
stays as its TeX source (``$\\mu = 0.5$`` is read as ``\\mu = 0.5``), which is what MathJax's own speech reads too.

An ``alt`` already given by the author (``:alt:`` on a figure directive) is kept.
"""
from __future__ import annotations

import re

from docutils import nodes

__all__ = ["caption_alt_text", "fill_figure_alt", "setup"]

_SPACE = re.compile(r"\s+")


def caption_alt_text(caption: nodes.Node) -> str:
    """The plain text of a caption node, for an ``alt`` attribute: one line, maths as TeX source.

    ``caption`` is a docutils node (a ``nodes.caption``, or any node holding the caption's inline content);
    emphasis, literals and references contribute their text, a ``nodes.math`` its TeX source without ``$``.
    Runs of whitespace (newlines included) become one space; leading and trailing space is dropped.
    """
    if not isinstance(caption, nodes.Node):
        raise TypeError(f"caption must be a docutils node, got {type(caption).__name__}")
    return _SPACE.sub(" ", caption.astext()).strip()


def fill_figure_alt(doctree: nodes.document) -> int:
    """Set ``alt`` on every image inside a captioned figure of ``doctree`` that has none; returns how many."""
    filled = 0
    for figure in doctree.findall(nodes.figure):
        captions = [child for child in figure.children if isinstance(child, nodes.caption)]
        if not captions:
            continue
        text = caption_alt_text(captions[0])
        if not text:
            continue
        for image in figure.findall(nodes.image):
            if not image.get("alt"):
                image["alt"] = text
                filled += 1
    return filled


def _on_doctree_resolved(app, doctree, docname) -> None:
    # After the post-transforms: myst-nb picks each output's MIME type (and so its image node) only then.
    fill_figure_alt(doctree)


def setup(app):
    app.connect("doctree-resolved", _on_doctree_resolved)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
