"""What a run reports, whichever engine ran it: counts, failures (also written to
``dslo-failures.jsonl`` under the output), timing, and engine notes (e.g. per Ray worker)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dslo import remote
from dslo.outputs import atomic_write_text

__all__ = ["FAILURES_FILE", "Logger", "RunSummary", "write_failures"]

FAILURES_FILE = "dslo-failures.jsonl"

Logger = Callable[[str], None]  # one line for the user (a progress bar's write, or stderr)


@dataclass
class RunSummary:
    """``total`` images given; ``done`` segmented now; ``skipped`` finished by the same request
    before; ``failed``: ``(image name, reason)``; ``seconds`` of work (model loading included,
    engine start-up apart); ``notes``: lines the engine adds (e.g. per worker);
    ``failures_file``: where the failures were written (None when there were none); ``errors``:
    inputs the engine refused before running (their outputs would collide); ``timing``: the
    engine's rate in words (e.g. ``0.84 s/img``), empty when nothing ran."""

    total: int
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    failures_file: str | None = None
    errors: list[str] = field(default_factory=list)
    timing: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors


def _read(loc: Path | str) -> str | None:
    try:
        data = remote.read_bytes(loc) if isinstance(loc, str) else loc.read_bytes()
        return data.decode("utf-8")
    except (OSError, ValueError):
        return None


def write_failures(out: Path | str, failures: list[tuple[str, str]]) -> str | None:
    """``dslo-failures.jsonl`` (one ``{"image", "error"}`` per line) under the output, replaced on
    every run (left untouched when unchanged: a rerun that fails the same way writes nothing);
    removed when a run has no failures. Returns where it is."""
    loc = remote.join(str(out), FAILURES_FILE) if remote.is_uri(out) else Path(out) / FAILURES_FILE
    if failures:
        # sorted: the Ray engine's rows arrive in any order, and both engines write the same file
        text = "".join(json.dumps({"image": i, "error": e}, ensure_ascii=False) + "\n" for i, e in sorted(failures))
        if _read(loc) != text:
            atomic_write_text(loc, text)
        return str(loc)
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
    elif remote.exists(loc):
        fs, path = remote.fs_path(loc)
        fs.delete_file(path)
    return None
