"""The per-image step every engine runs, with the one failure policy.

A run must not stop for one image: an image that cannot be read, that the models cannot take, or
that does not fit in memory is reported by name with a one-line reason, and the run goes on.
What counts as such a failure, and how it is worded, is decided here, once, for the local engine,
the Ray workers and every server built on them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dslo.imageio import ImageReadError

__all__ = ["IMAGE_FAILURES", "Outcome", "failed", "failure_message", "release_memory", "segment_chunk"]

# Failures of one image (not of the run): unreadable or undecodable input, a shape or value the
# models refuse, a device error, an allocation failure. Anything else is a bug and propagates.
IMAGE_FAILURES: tuple[type[BaseException], ...] = (ImageReadError, ValueError, RuntimeError, OSError, TypeError,
                                                   MemoryError)


@dataclass(frozen=True)
class Outcome:
    """What became of one image: ``status`` ``done`` or ``failed``, ``error`` the reason,
    ``unreadable`` when the image itself could not be read (skipped rather than failed)."""

    status: str
    error: str = ""
    unreadable: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def describe(self, name: str) -> str:
        """The log line: ``skipped NAME: why`` for an unreadable image, ``failed NAME: why``."""
        return f"{'skipped' if self.unreadable else 'failed'} {name}: {self.error}"


def failure_message(exc: BaseException) -> str:
    """One line saying why an image failed (no traceback): an unreadable image's own message,
    out-of-memory with the fix, otherwise the exception type and its first line."""
    if isinstance(exc, ImageReadError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"out of memory ({str(exc) or 'allocation failed'}); try a smaller --max-side"
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    hint = "; try a smaller --max-side" if "memory" in text.lower() else ""
    return f"{type(exc).__name__}: {first}{hint}"


def release_memory() -> None:
    """After an allocation failure: drop what the failed image left behind before the next one."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def failed(exc: BaseException) -> Outcome:
    """The outcome of an image that raised ``exc`` (one of :data:`IMAGE_FAILURES`)."""
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        release_memory()
    return Outcome("failed", failure_message(exc), unreadable=isinstance(exc, ImageReadError))


def segment_chunk(segmenter: Any, images: Sequence[Callable[[], np.ndarray]], classes: Any,
                  finish: Callable[[int, Any], None]) -> list[Outcome]:
    """Segment a chunk of images and hand each result to ``finish(index, result)`` (which writes
    it); returns one :class:`Outcome` per image, in order.

    ``images``: one loader per image (``() -> (H, W, 3) uint8``; it raises ImageReadError for an
    unreadable one). Several images run through one batched pass (``predict_batch``); when the
    batch fails (a bad image, or it does not fit in memory) it is redone one image at a time, so
    one bad image never fails its neighbours. A failure in ``finish`` (a write) fails that image."""
    results: list[Any] | None = None
    if len(images) > 1:
        try:
            results = segmenter.predict_batch([load() for load in images], classes)
        except IMAGE_FAILURES as exc:  # redo one by one, each with its own outcome
            if isinstance(exc, MemoryError):
                release_memory()
            results = None
    outcomes = []
    for i, load in enumerate(images):
        try:
            result = results[i] if results is not None else segmenter.predict(load(), classes)
            finish(i, result)
            outcomes.append(Outcome("done"))
        except IMAGE_FAILURES as exc:
            outcomes.append(failed(exc))
    return outcomes
