"""Check a model's settings (``--logits-option`` / ``--attention-option``) before it is loaded:
names against the model family's settings, values against their types and ranges. Loading a
model takes seconds to minutes; a typo must fail before that, in one line."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dslo.errors import SettingsError, check_known

__all__ = ["check_model_options"]


def _loader(kind: str, name: str) -> str | None:
    """The registry loader (``"module:function"``) for a registry key or a local folder (reading
    only its config.json); None when it cannot be known without the network (a Hub id)."""
    from dslo.models.registry import _BY_FAMILY, ATTENTION, LOGITS, _family_from_config

    table = LOGITS if kind == "logits" else ATTENTION
    if name in table:
        return table[name].loader
    folder = Path(name).expanduser()
    for fn in ("config.json", "model_index.json"):
        try:
            family = _family_from_config(json.loads((folder / fn).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
        entry = _BY_FAMILY.get((kind, family))
        return entry.loader if entry else None
    return None


def _settings_class(loader: str):
    """The settings dataclass a loader builds, and the extra keyword arguments it takes."""
    function = loader.rpartition(":")[2]
    if function == "load_clip":
        from dslo.models.clip import ClipSettings

        return ClipSettings, {}
    if function == "load_clip_attention":
        from dslo.models.clip import ClipSettings

        return ClipSettings, {"variant": str, "clip": object}
    if function in ("load_vit_attention", "load_focus"):
        from dslo.models.vit import VitAttentionSettings

        return VitAttentionSettings, {}
    if function == "load_sd2":
        from dslo.models.sd2 import Sd2Settings

        return Sd2Settings, {"model_id": str}
    return None, {}


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
    ("logits" | "attention") model ``name``. Unknown families (a Hub id not cached) pass: the
    loader checks them."""
    if not options or name is None:
        return
    name = os.fspath(name)
    loader = _loader(kind, name)
    cls, extra = _settings_class(loader) if loader else (None, {})
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
