"""Argument parsers shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dslo.request import ModelChoice


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` as argparse's ``type``: :func:`dslo.setting_text.read_setting`, its errors as
    argparse's."""
    from dslo.errors import SettingsError
    from dslo.setting_text import read_setting

    try:
        return read_setting(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


ACCEL_HELP = ("none (default) or int8: the image towers' linear layers in dynamic int8 on the CPU "
              "(text tower float); compare with float32 on your own images first: `dslo check-accel`")


def accel_arg(text: str) -> str:
    """``--accel``: a name of :data:`dslo.models.accel.ACCEL_CHOICES` (imported on use)."""
    from dslo.errors import SettingsError
    from dslo.models.accel import check_accel

    try:
        return check_accel(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps"
MAX_SIDE_HELP = ("downscale larger images to this side for the models; masks stay at full size "
                 "(default 1024; 0 = never)")


def add_model_args(p: argparse.ArgumentParser, *, models: bool = True, mode_default: str = "the preset's",
                   device: str = "auto", max_side: int | None = 1024, accel: str = "none",
                   help: dict[str, str] | None = None) -> None:
    """The flags that choose the models and the head, one definition for every command that runs
    them (read back by :func:`model_choice`): ``--model --logits --attention --dtype
    --logits-option`` (``models=False`` leaves these out: ``dslo refine`` has its own attention and
    no logits model), ``--mode --set --attention-option --device --max-side --accel``. ``help``
    replaces a flag's help text (keyed by the flag without dashes)."""
    text = {
        "model": "preset: default, offline, paper-mv, paper-op, ... (`dslo models` lists them)",
        "logits": "logits model (CLIP) replacing the preset's",
        "attention": "attention model replacing the preset's",
        "dtype": "model dtype: auto, float32, float16, bfloat16",
        "logits-option": "a setting of the logits model (repeatable), e.g. short_side=448 or attention=qk",
        "mode": MODE_HELP.replace("the preset's", mode_default),
        "set": "a head setting (repeatable), e.g. --set nms_threshold=0.6",
        "attention-option": "a setting of the attention model (repeatable), e.g. short_side=336",
        "device": DEVICE_HELP,
        "max-side": MAX_SIDE_HELP,
        "accel": ACCEL_HELP,
    }
    text.update(help or {})
    if models:
        p.add_argument("--model", default="default", metavar="PRESET", help=text["model"])
        p.add_argument("--logits", metavar="NAME|DIR", help=text["logits"])
        p.add_argument("--attention", metavar="NAME|DIR", help=text["attention"])
        p.add_argument("--dtype", default="auto", help=text["dtype"])
        p.add_argument("--logits-option", dest="logits_options", action="append", type=parse_setting,
                       default=[], metavar="KEY=VALUE", help=text["logits-option"])
    p.add_argument("--mode", type=mode_arg, metavar="MODE", help=text["mode"])
    p.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[],
                   metavar="KEY=VALUE", help=text["set"])
    p.add_argument("--attention-option", dest="attention_options", action="append", type=parse_setting,
                   default=[], metavar="KEY=VALUE", help=text["attention-option"])
    p.add_argument("--device", default=device, help=text["device"])
    p.add_argument("--max-side", type=max_side_arg, default=max_side, metavar="N", help=text["max-side"])
    p.add_argument("--accel", type=accel_arg, default=accel, metavar="none|int8", help=text["accel"])


def model_choice(args: argparse.Namespace, **changes) -> ModelChoice:
    """The models a command's flags ask for (the flags of :func:`add_model_args`)."""
    from dslo.imageio import DEFAULT_MAX_SIDE
    from dslo.request import ModelChoice

    fields = dict(
        preset=getattr(args, "model", "default"), logits=getattr(args, "logits", None),
        attention=getattr(args, "attention", None), mode=getattr(args, "mode", None),
        settings=dict(args.settings), logits_options=dict(getattr(args, "logits_options", None) or []),
        attention_options=dict(getattr(args, "attention_options", None) or []), device=args.device,
        dtype=getattr(args, "dtype", "auto"), max_side=getattr(args, "max_side", DEFAULT_MAX_SIDE) or None,
        accel=getattr(args, "accel", "none"),
    )
    return ModelChoice(**{**fields, **changes})


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
