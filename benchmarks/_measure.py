"""Timing and peak-memory helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose ``"peak_mb"`` is set on exit: the peak memory added by the block
    (GPU: torch's allocator peak; CPU: the kernel's resident-set high-water mark above the
    resident set at entry, after returning freed heap pages to the OS)."""
    box = {"peak_mb": float("nan")}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield box
        torch.cuda.synchronize(device)
        box["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    if not _reset_peak_rss():
        yield box  # not Linux: leave NaN rather than guess
        return
    base = _status_kb("VmRSS")
    yield box
    box["peak_mb"] = max(0, _status_kb("VmHWM") - base) / 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Return freed heap pages to the OS (so new allocations show up in RSS instead of reusing
    them silently) and reset the kernel's RSS high-water mark (Linux >= 4.0)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def best_of(fn: Callable[[], T], device: torch.device, repeat: int) -> tuple[T, float]:
    """``(last output, best wall time in ms)`` over ``repeat`` calls of ``fn`` (synchronising the
    GPU around each call). The minimum, as timeit does: other load on the machine only ever adds
    time."""
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) * 1000)
    return out, best


def time_ms(fn: Callable[[], object], device: torch.device, repeat: int = 5, warmup: int = 1) -> float:
    """Best-of-``repeat`` wall time of ``fn`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return best_of(fn, device, repeat)[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def devices(requested: str) -> list[torch.device]:
    if requested == "all":
        out = [torch.device("cpu")]
        if torch.cuda.is_available():
            out.append(torch.device("cuda"))
        return out
    return [torch.device(requested)]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
