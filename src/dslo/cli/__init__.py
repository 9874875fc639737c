"""The ``dslo`` command line. Each subcommand lives in its own module exposing
``register(subparsers)``; this module only composes them."""

from __future__ import annotations

import argparse
import importlib
import sys

from dslo.cli._args import parse_setting  # public: KEY=VALUE as the CLI reads it (benchmarks use it)

__all__ = ["build_parser", "main", "parse_setting"]

# (module, description) — modules are imported lazily so `dslo --help` stays fast.
_SUBCOMMANDS = [
    "dslo.cli.segment",
    "dslo.cli.refine",
    "dslo.cli.models",
    "dslo.cli.score",
    "dslo.cli.evaluate",
    "dslo.cli.cache",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dslo",
        description="Training-free open-vocabulary semantic segmentation (DSLO).",
    )
    from dslo import __version__

    parser.add_argument("--version", action="version", version=f"dslo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in _SUBCOMMANDS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:  # a subcommand not built yet
            if exc.name == mod_name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Errors raised by dslo carry actionable messages: print them without a traceback.
        print(f"dslo {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
