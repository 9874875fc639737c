"""Check a model's settings (``--logits-option`` / ``--attention-option``) before it is loaded:
names against the model family's settings, values against their types and ranges. Loading a
model takes seconds to minutes; a typo must fail before that, in one line."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from dslo.errors import SettingsError, check_known

__all__ = ["check_model_options"]


def _check_type(what: str, key: str, value: Any, default: Any) -> None:
    """A value must have its default's type (an int where a float is expected is fine)."""
    if default is None or value is None:
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        tuple: lambda v: isinstance(v, (tuple, list, str, int, float)),
    }.get(type(default))
    if ok is not None and not ok(value):
        raise SettingsError(f"{what} setting {key}={value!r} must be {type(default).__name__} "
                            f"(default {default!r})")
    if key in ("short_side", "resolution", "text_batch_size") and isinstance(value, int) and value < 1:
        raise SettingsError(f"{what} setting {key}={value} must be a positive integer")


def check_model_options(kind: str, name: str | os.PathLike | None, options: Mapping[str, Any]) -> None:
    """Raise a one-line :class:`dslo.errors.SettingsError` when ``options`` cannot be settings of the ``kind``
    ("logits" | "attention") model ``name``: names against its registry entry's settings class and
    extra options (:class:`dslo.models.registry.Entry`), values against their types and ranges.
    Unknown families (a Hub id, read only by the loader) pass: the loader checks them."""
    if not options or name is None:
        return
    from dslo.models.registry import entry_for

    name = os.fspath(name)
    entry = entry_for(kind, name)
    cls, extra = entry.settings_class() if entry is not None else (None, {})
    if cls is None:
        return
    what = f"{kind} model {name!r}"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = sorted(set(fields) | set(extra))
    check_known(what, options, allowed)
    values = {}
    for k, v in options.items():
        if k in fields:
            f = fields[k]
            default = f.default if f.default is not dataclasses.MISSING else None
            _check_type(what, k, v, default)
            values[k] = v
    try:
        cls(**values)  # the settings' own range checks
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{what}: {exc}") from exc
