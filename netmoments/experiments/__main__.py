"""``python -m netmoments.experiments <subcommand> [options]``; ``--help`` lists the subcommands."""
from __future__ import annotations

import sys

from . import build_parser
from .runner import keep_freed_memory


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # so a subcommand can record the exact command line it ran
    keep_freed_memory()  # in-process tasks run on this (main) thread: see the runner's "Memory reuse"
    if not hasattr(args, "func"):
        raise SystemExit(f"subcommand {args.command!r} did not register a handler (set_defaults(func=...))")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
