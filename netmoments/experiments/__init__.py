"""Experiments behind the book's tables, runnable as ``python -m netmoments.experiments <subcommand>``.

Each subcommand lives in its own module exposing ``register(subparsers)``; :func:`build_parser` collects the
ones whose dependencies import.
"""
from __future__ import annotations

import argparse
import importlib

__all__ = ["SUBCOMMAND_MODULES", "build_parser"]

#: The subcommands, each a module of this package with a ``register(subparsers)``.
SUBCOMMAND_MODULES = ("tightness", "attack", "layerwise")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per importable subcommand module."""
    parser = argparse.ArgumentParser(
        prog="python -m netmoments.experiments",
        description="Run the netmoments experiments (tightness of the closed forms, layer-by-layer closures, Gaussian attacks).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            # Only a missing subcommand module is skipped; a broken one (or a missing dependency inside it)
            # should surface when it is run, not vanish from the help.
            if err.name != f"{__name__}.{name}":
                raise
            continue
        module.register(subparsers)
    return parser
