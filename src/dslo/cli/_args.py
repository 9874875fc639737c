"""Argument parsers shared by several subcommands."""

from __future__ import annotations

import argparse


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → (key, value) with the value read as int, float, bool, none or text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = (s.strip() for s in text.split("=", 1))
    low = value.lower()
    if low in ("none", "null"):
        return key, None
    if low in ("true", "false"):
        return key, low == "true"
    for conv in (int, float):
        try:
            return key, conv(value)
        except ValueError:
            pass
    return key, value


MODE_HELP = "head mode (default: the preset's); `dslo models` lists the modes"


def mode_arg(text: str) -> str:
    """``--mode``: a key of the head's mode table (imported on use, so building the parser stays
    free of torch)."""
    from dslo.head import MODES

    if text not in MODES:
        from dslo.errors import did_you_mean

        raise argparse.ArgumentTypeError(
            f"unknown mode {text!r}: choose one of {', '.join(MODES)}{did_you_mean(text, MODES)}")
    return text
