"""Check a model's settings (``--logits-option`` / ``--attention-option``) before it is loaded:
names against the model family's settings, values against their types and ranges. Loading a
model takes seconds to minutes; a typo must fail before that, in one line."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["check_model_options"]


def _family(kind: str, name: str) -> str | None:
    """The model family of a registry key or a local folder (reading only its config.json);
    None when it cannot be known without the network (a Hub id not yet cached)."""
    from dslo.models.registry import ATTENTION, LOGITS, _family_from_config

    if kind == "logits":
        return "clip"
    if name in ATTENTION:
        return ATTENTION[name].family
    if name in LOGITS:
        return None  # create_attention_model explains this one
    folder = Path(name).expanduser()
    for fn in ("config.json", "model_index.json"):
        try:
            return _family_from_config(json.loads((folder / fn).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return None


def _settings_class(family: str):
    if family == "clip":
        from dslo.models.clip import ClipSettings

        return ClipSettings, {}
    if family == "clip-attention":
        from dslo.models.clip import ClipSettings

        return ClipSettings, {"variant": str, "clip": object}
    if family in ("dinov2", "dino", "focus"):
        from dslo.models.vit import VitAttentionSettings

        return VitAttentionSettings, {}
    if family == "sd2":
        from dslo.models.sd2 import Sd2Settings

        return Sd2Settings, {"model_id": str}
    return None, {}


def check_value(what: str, key: str, value: Any, default: Any, allowed: tuple | None = None) -> None:
    """One setting against its default's type and an optional range: ``("(", lo, hi)`` an open
    interval (``None``: unbounded), ``("[", lo, hi)`` a closed one, or a tuple of allowed words."""
    _check_type(what, key, value, default)
    if allowed is None or value is None:
        return
    if allowed[0] in ("(", "["):
        kind, lo, hi = allowed
        closed = kind == "["
        ok = ((lo is None or (value >= lo if closed else value > lo))
              and (hi is None or (value <= hi if closed else value < hi)))
        if not ok or value != value:  # NaN fails every comparison
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            raise ValueError(f"{what} setting {key}={value!r} is out of range: it must lie in "
                             f"{kind}{lo_s}, {hi_s}{']' if closed else ')'}")
    elif value not in allowed:
        raise ValueError(f"{what} setting {key}={value!r}: use one of {', '.join(map(str, allowed))}")


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
        raise ValueError(f"{what} setting {key}={value!r} must be {type(default).__name__} "
                         f"(default {default!r})")
    if key in ("short_side", "resolution", "text_batch_size") and isinstance(value, int) and value < 1:
        raise ValueError(f"{what} setting {key}={value} must be a positive integer")


def check_model_options(kind: str, name: str | os.PathLike | None, options: Mapping[str, Any]) -> None:
    """Raise a one-line :class:`ValueError` when ``options`` cannot be settings of the ``kind``
    ("logits" | "attention") model ``name``. Unknown families (a Hub id not cached) pass: the
    loader checks them."""
    if not options or name is None:
        return
    name = os.fspath(name)
    family = _family(kind, name)
    cls, extra = _settings_class(family) if family else (None, {})
    if cls is None:
        return
    what = f"{kind} model {name!r}"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = sorted(set(fields) | set(extra))
    bad = [k for k in options if k not in allowed]
    if bad:
        import difflib

        close = difflib.get_close_matches(bad[0], allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown setting {bad[0]!r} for the {what}{hint} Valid settings: {', '.join(allowed)}")
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
        raise ValueError(f"{what}: {exc}") from exc
