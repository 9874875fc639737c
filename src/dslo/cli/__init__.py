"""The ``dslo`` command line. Each subcommand lives in its own module exposing
``register(subparsers)``; this module only composes them."""

from __future__ import annotations

import argparse
import importlib
import os
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
    "dslo.cli.app",
    "dslo.cli.cache",
    "dslo.cli.data",
    "dslo.cli.label_studio",
    "dslo.cli.export",
    "dslo.cli.check_accel",
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
    _one_line_warnings(args.command)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, TypeError, KeyError, MemoryError) as exc:
        # Errors raised by dslo carry actionable messages: print them without a traceback.
        if os.environ.get("DSLO_TRACEBACK"):
            raise
        print(f"dslo {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on request
        if os.environ.get("DSLO_TRACEBACK"):
            raise
        print(f"dslo {args.command}: internal error: {type(exc).__name__}: {_message(exc)} "
              "(this is a dslo bug; DSLO_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1


def _message(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return f"out of memory ({str(exc) or 'allocation failed'}); try a smaller --max-side"
    if isinstance(exc, KeyError):  # str(KeyError) is the repr of the key
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _one_line_warnings(command: str) -> None:
    """dslo's own warnings (e.g. an animated image) as one line, like its errors."""
    import warnings

    from dslo.imageio import MultiFrameWarning

    show = getattr(warnings.showwarning, "_dslo_original", warnings.showwarning)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MultiFrameWarning):
            print(f"dslo {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning._dslo_original = show  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
