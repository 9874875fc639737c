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
