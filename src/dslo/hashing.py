"""Digests used across dslo (weights identity, request ids, cache keys, archive checksums): one
definition, standard library only (a leaf)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

__all__ = ["file_digest", "text_digest"]

_CHUNK = 1 << 22


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", *,
                progress: Callable[[int], None] | None = None) -> str:
    """Hex digest of a file's bytes, read in 4 MiB chunks (a multi-GB archive never sits in
    memory). ``algorithm``: any :func:`hashlib.new` name (``sha256``, ``md5``...);
    ``progress(n)`` is called with each chunk's size."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return h.hexdigest()


def text_digest(*parts: str) -> str:
    """sha256 hex digest of text parts, each followed by a NUL (so ``("ab", "c")`` and
    ``("a", "bc")`` differ)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()
