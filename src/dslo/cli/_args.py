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


def max_side_arg(text: str) -> int:
    """``--max-side N``: at least 16, or 0 for never downscaling."""
    n = int(text)
    if n < 0 or 0 < n < 16:
        raise argparse.ArgumentTypeError("--max-side must be 0 (never downscale) or at least 16")
    return n


def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return n


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


def quiet_libraries() -> None:
    """Silence the progress bars that transformers / huggingface_hub draw while loading models
    (``--quiet`` means no bars at all)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - a dependency
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - a dependency
        pass
