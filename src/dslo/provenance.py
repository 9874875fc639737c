"""What produced an output, and whether a rerun may reuse it.

Every output file of ``dslo segment`` / ``dslo refine`` carries the *request* that produced it
(classes, models, settings): the JSON under ``"request"`` / ``"request_id"``, the PNGs as text
chunks, the score file as a ``"request_id"`` entry. A rerun into the same folder then skips an
image only when each of its outputs was made by the same request; outputs of another request are
*stale* and are never silently passed off as this run's results.

Engine-independent (the local loop and the Ray engine share it): pure functions of records and
paths, no models.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PNG_KEY",
    "PNG_RECORD_KEY",
    "request_id",
    "read_request_id",
    "read_request",
    "OutputState",
    "output_state",
    "describe_difference",
]

PNG_KEY = "dslo-request-id"  # PNG text chunk holding the request id
PNG_RECORD_KEY = "dslo-request"  # PNG text chunk holding the whole request (JSON)


def _canonical(record: Mapping) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_id(record: Mapping) -> str:
    """A short stable digest of a request record (a JSON-able mapping): equal records, equal ids."""
    return hashlib.sha256(_canonical(record).encode("utf-8")).hexdigest()[:20]


def png_text(record: Mapping) -> dict[str, str]:
    """The PNG text chunks that mark an image as made by ``record``."""
    return {PNG_KEY: request_id(record), PNG_RECORD_KEY: _canonical(record)}


def _read_text(source) -> str:
    return source.read_text(encoding="utf-8") if isinstance(source, Path) else source.read().decode("utf-8")


def is_output(path) -> bool:
    """Whether an output exists: a local path, or a ``scheme://`` URI (:mod:`dslo.remote`)."""
    from dslo import remote

    return remote.exists(str(path)) if remote.is_uri(path) else Path(path).is_file()


def _opened(path):
    """``(source, suffix)``: the local ``Path``, or a URI's bytes in memory (read once)."""
    from dslo import remote

    if remote.is_uri(path):
        import io

        return io.BytesIO(remote.read_bytes(str(path))), Path(str(path).rsplit("/", 1)[-1]).suffix
    path = Path(path)
    return path, path.suffix


def _read_png_text(path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as im:  # text chunks come before the pixels: no decoding needed
        return {str(k): v for k, v in im.info.items() if isinstance(v, str)}


def read_request_id(path: str | os.PathLike) -> str | None:
    """The request id an output file carries (``.json``, ``.png``, ``.pt``), or None when it has
    none (written by an older dslo, by hand, or unreadable: all count as not this request's)."""
    try:
        path, suffix = _opened(path)
        if suffix == ".json":
            doc = json.loads(_read_text(path))
            rid = doc.get("request_id") if isinstance(doc, dict) else None
        elif suffix == ".png":
            rid = _read_png_text(path).get(PNG_KEY)
        elif suffix == ".pt":
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            rid = obj.get("request_id") if isinstance(obj, dict) else None
        else:
            return None
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not made by this request"
        return None
    return rid if isinstance(rid, str) else None


def read_request(path: str | os.PathLike) -> dict | None:
    """The whole request record an output carries (JSON or PNG), for telling the user what changed."""
    try:
        path, suffix = _opened(path)
        if suffix == ".json":
            doc = json.loads(_read_text(path))
            rec = doc.get("request") if isinstance(doc, dict) else None
        elif suffix == ".png":
            rec = json.loads(_read_png_text(path).get(PNG_RECORD_KEY, "null"))
        else:
            return None
    except Exception:  # noqa: BLE001
        return None
    return rec if isinstance(rec, dict) else None


@dataclass
class OutputState:
    """One image's outputs against a request: ``done`` (every wanted output exists and was made
    by it), ``stale`` (existing files of any kind made by another request, or by none), ``todo``
    (otherwise: missing outputs, nothing stale)."""

    state: str  # "done" | "todo" | "stale"
    stale: list[Path] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)


def output_state(wanted: Iterable[Path], others: Iterable[Path], rid: str) -> OutputState:
    """Classify one image's outputs. ``wanted``: the files this run writes; ``others``: the image's
    files of the kinds this run does not write (stale when made by another request: they would
    contradict the new outputs)."""
    wanted, others = list(wanted), list(others)
    existing = [p for p in wanted + others if is_output(p)]
    stale = [p for p in existing if read_request_id(p) != rid]
    if stale:
        return OutputState("stale", stale, existing)
    if all(is_output(p) for p in wanted):
        return OutputState("done", [], existing)
    return OutputState("todo", [], existing)


def describe_difference(old: Mapping | None, new: Mapping) -> str:
    """``"classes: 'a, b' -> 'c'; mode: mv -> op"``: the fields that differ, for a refusal message."""
    if old is None:
        return "made by an older dslo or another program (no request record)"
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if _canonical({"v": a}) != _canonical({"v": b}):
            diffs.append(f"{k}: {_short(a)} -> {_short(b)}")
    return "; ".join(diffs) if diffs else "same settings, different request id"


def _short(v: object, n: int = 60) -> str:
    if isinstance(v, list) and all(isinstance(c, list) for c in v):
        v = ", ".join("/".join(map(str, c)) for c in v)
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return repr(s[: n - 3] + "..." if len(s) > n else s)
