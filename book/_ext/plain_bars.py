"""Sphinx extension: a ``|`` in a docstring is a bar (``|rho|``, an absolute value), not a reST substitution.

The package's docstrings are written to be read as plain text too, and write absolute values as ``|rho| < 1``;
reStructuredText would read ``|rho|`` as a reference to an undefined substitution and fail the strict build. Before
napoleon and autodoc read a docstring, every ``|`` outside an inline literal (````...````) is escaped.
"""
from __future__ import annotations

import re

__all__ = ["escape_bars", "setup"]

_LITERAL = re.compile(r"(``.+?``)")


def escape_bars(line: str) -> str:
    """``line`` with each ``|`` outside double-backquoted literals escaped as ``\\|`` (already escaped ones kept)."""
    parts = _LITERAL.split(line)
    for i in range(0, len(parts), 2):  # even parts lie outside the literals
        parts[i] = re.sub(r"(?<!\\)\|", r"\\|", parts[i])
    return "".join(parts)


def _on_docstring(app, what, name, obj, options, lines) -> None:
    lines[:] = [escape_bars(line) for line in lines]


def setup(app):
    # priority below napoleon's default (500): the bars are escaped before it parses the sections
    app.connect("autodoc-process-docstring", _on_docstring, priority=400)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
