"""Settings written as text, ``KEY=VALUE``, read into the typed values the library takes.

One reader for every front end that takes settings as text: the command line's ``--set`` and
``--*-option`` flags (``dslo.cli._args.parse_setting`` wraps it for argparse) and the CVAT
function's ``settings`` parameter. The library itself takes typed values only.
"""

from __future__ import annotations

import dataclasses

from dslo.errors import SettingsError

__all__ = ["read_setting"]


def read_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → (key, value): the value read as int, float, bool, none or text, and a
    comma list ``a,b,c`` as a tuple of such values (``fusion_levels=0,6,24`` → ``(0, 6, 24)``).

    A head setting (a field of ``dslo.head.HeadConfig``) is read as its type says: a text setting
    keeps ``none`` as text (``fusion=none``: the paper's readout), and a tuple of flags reads
    ``1``/``0``/``yes``/``no`` as True/False (``fusion_recover=1,0,1``). A :class:`SettingsError`
    names what cannot be read."""
    if "=" not in text:
        raise SettingsError(f"expected KEY=VALUE, got {text!r}")
    key, value = (s.strip() for s in text.split("=", 1))
    kind = _head_setting_kind(key)
    if kind == "text":
        return key, value
    if "," in value:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if kind == "flags":
            return key, tuple(_flag(key, p) for p in parts)
        return key, tuple(_scalar(p) for p in parts)
    if kind == "flags":
        return key, _flag(key, value)
    return key, _scalar(value)


def _scalar(value: str) -> object:
    low = value.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _flag(key: str, value: str) -> bool | None:
    if value.lower() in ("none", "null"):
        return None
    if value.lower() not in _FLAGS:
        raise SettingsError(f"{key} takes true/false (or 1/0) values, got {value!r}")
    return _FLAGS[value.lower()]


def _head_setting_kind(key: str) -> str | None:
    """``"text"`` for a text head setting, ``"flags"`` for a tuple of flags, None otherwise (not a
    head setting, or one read like any other value)."""
    from dslo.head import HeadConfig  # on use: reading the parser's flags stays free of torch

    for f in dataclasses.fields(HeadConfig):
        if f.name == key:
            kind = str(f.type).replace(" ", "")
            return "text" if kind == "str" else "flags" if kind.startswith("tuple[bool") else None
    return None
