"""The one error type for a bad setting, and the one "did you mean" helper.

A leaf module (standard library only), so every layer can use it: the head, the models, the
segmenter, the CLI. ``dslo.head`` imports nothing else of dslo.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SettingsError", "did_you_mean", "check_known", "check_choice"]


class SettingsError(TypeError, ValueError):
    """An unknown setting, a value outside its range, or a name that is not one of the choices.

    Subclasses both ``TypeError`` (what an unexpected keyword raises in Python) and ``ValueError``
    (what a bad value raises), so callers written against either keep working. The message names
    the setting, the valid choices and, for a near miss, the closest one; the CLI prints it as one
    line."""


def did_you_mean(name: object, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """``"; did you mean a or b?"`` for the choices closest to ``name``, or ``""`` when none is close.

    >>> did_you_mean("nms_treshold", ["nms_threshold", "eps"])
    '; did you mean nms_threshold?'
    >>> did_you_mean("zzz", ["mv", "op"])
    ''
    """
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3, cutoff=cutoff)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def check_known(kind: str, given: Mapping[str, Any] | Iterable[str], allowed: Iterable[str]) -> None:
    """Raise :class:`SettingsError` naming the unknown keys of ``given`` (a typo must never be
    ignored), the closest valid one and every valid one.

    >>> check_known("head", {"nms_treshold": 0.6}, ["nms_threshold", "eps"])
    Traceback (most recent call last):
    ...
    dslo.errors.SettingsError: unknown head setting(s) ['nms_treshold']; did you mean nms_threshold? (valid settings: ['eps', 'nms_threshold'])
    """
    allowed = list(allowed)
    bad = sorted(set(given) - set(allowed))
    if bad:
        raise SettingsError(
            f"unknown {kind} setting(s) {bad}{did_you_mean(bad[0], allowed)} "
            f"(valid settings: {sorted(allowed)})"
        )


def check_choice(setting: str, value: object, choices: Iterable[str]) -> None:
    """Raise :class:`SettingsError` when ``value`` is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise SettingsError(
            f"unknown {setting} {value!r}: choose one of {', '.join(map(repr, choices))}"
            f"{did_you_mean(value, choices)}"
        )
