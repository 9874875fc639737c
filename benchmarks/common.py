"""What every benchmark script shares, in one module: paths, the on-disk attention cache, JSON
and atomic writes, markdown tables, timing and memory measurement, and running a measurement in a
process of its own."""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from dslo.outputs import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# The timing frame of the speed scripts: a 480×360 CamVid test image (its ground truth gives the
# head evidence in speed.py).
TIMING_IMAGE = DEFAULT_DATA_ROOT / "camvid" / "test" / "0001TP_008550.png"

# The two real annotated sets of shared/data: dataset name -> sub-folder.
DATASET_DIRS = {"camvid": "camvid", "coco_object": "coco_object"}


def bench_cache_dir() -> Path:
    """``$DSLO_BENCH_CACHE``, else ``~/.cache/dslo/bench`` (outside the repository)."""
    env = os.environ.get("DSLO_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dslo" / "bench"


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically (numpy scalars, tuples, sets and paths allowed)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(o: Any) -> Any:
    """The ``default=`` of ``json.dumps`` for every benchmark: numpy scalars as numbers, tuples and
    sets as lists, paths as text; anything else is a TypeError (never a silent ``str``)."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def spaced_subset(n_total: int, n: int | None) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (all when ``n`` is None or too big).
    Evenly spaced rather than the first ``n``: CamVid's test split is video, consecutive frames
    are near duplicates."""
    if n is None or n >= n_total:
        return list(range(n_total))
    if n <= 0:
        return []
    return sorted({int(round(i * (n_total - 1) / max(1, n - 1))) for i in range(n)}) if n > 1 else [0]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any] | Mapping[str, Any]],
                   fmt: str = "{:.1f}") -> str:
    """A markdown table. A row is a sequence of cells in ``header`` order, or a mapping read by the
    header's names (a missing key: an empty cell). Floats are written with ``fmt`` (NaN: "–")."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if v != v else fmt.format(v)
        return str(v)

    def cells(row: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
        return [row.get(c, "") for c in header] if isinstance(row, Mapping) else list(row)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in cells(row)) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Attention cache


# The dslo.models sources that produce an attention source's affinity (None: all of dslo.models).
_SOURCES = {"focus-s14": ("common.py", "vit.py", "focus.py"), "dinov2-reg-b14": ("common.py", "vit.py")}


def _code_digest(name: str) -> str:
    """Digest of the source that produces ``name``'s affinities: a change there invalidates every
    cached affinity instead of silently reusing stale ones."""
    import dslo.models

    h = hashlib.blake2b(digest_size=8)
    folder = Path(dslo.models.__file__).parent
    files = [folder / f for f in _SOURCES[name]] if name in _SOURCES else sorted(folder.glob("*.py"))
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


class AttentionCache:
    """Affinities ``(A (N, N) float32, (h, w))`` of an attention source, computed once per image
    and kept on disk as ``.npz`` (float32: cached and fresh runs give identical numbers).

    The model is created lazily, only on the first cache miss. Key: model name, its settings, the
    dslo.models source digest and the image pixels."""

    def __init__(self, name: str, settings: dict[str, Any] | None = None, device: str = "cpu",
                 root: Path | None = None, enabled: bool = True) -> None:
        self.name, self.settings, self.device = name, dict(settings or {}), device
        self.enabled = enabled
        tag = json.dumps({"name": name, "settings": self.settings, "code": _code_digest(name)}, sort_keys=True,
                         default=json_default)
        self.tag = hashlib.blake2b(tag.encode(), digest_size=8).hexdigest()
        self.dir = (root or bench_cache_dir()) / f"{name}-{self.tag}"
        self._model = None
        self.hits = self.misses = 0
        self.compute_seconds = 0.0

    @property
    def model(self):
        if self._model is None:
            from dslo.models import create_attention_model

            self._model = create_attention_model(self.name, device=self.device, **self.settings)
        return self._model

    def get(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """``image (H, W, 3)`` uint8 → ``(A (N, N) float32 CPU tensor, (h, w))``."""
        path = self.path(image)
        if self.enabled and path.is_file():
            with np.load(path) as z:
                self.hits += 1
                return torch.from_numpy(z["A"].copy()), (int(z["grid"][0]), int(z["grid"][1]))
        A, grid, _ = self._compute(image, want_features=False)
        return A, grid

    def features(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """``image (H, W, 3)`` uint8 → ``(F (N, C) float32 CPU tensor, (h, w))``: the model's final
        (layer-normed) patch tokens on the same grid as :meth:`get`, CLS/registers dropped. Computed
        in the same forward as the affinity (both are cached when either is missing)."""
        path = self.path(image, features=True)
        if self.enabled and path.is_file():
            with np.load(path) as z:
                self.hits += 1
                return torch.from_numpy(z["F"].astype(np.float32)), (int(z["grid"][0]), int(z["grid"][1]))
        _, grid, feats = self._compute(image, want_features=True)
        return feats, grid

    def path(self, image: np.ndarray, features: bool = False) -> Path:
        """Where the image's affinity (``features``: its patch features) is cached."""
        return self.dir / f"{image_digest(image)}{'.feat' if features else ''}.npz"

    def _compute(self, image: np.ndarray, want_features: bool):
        key = image_digest(image)
        src = self.model
        got: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        A, grid = src.affinity(image)
        if want_features:
            # the affinity pass stops after the last chosen block's attention (dslo.models.vit), so
            # the final patch tokens need a full forward of their own; stored as float16, rounded
            # the same way when fresh, so cached and fresh runs agree
            with torch.inference_mode():
                out = src.model(pixel_values=src.pixel_values(image))
            got["h"] = out.last_hidden_state[0, src.num_prefix:].float().cpu().half().float()
        A = A.float().cpu()
        grid = (int(grid[0]), int(grid[1]))
        self.compute_seconds += time.perf_counter() - t0
        self.misses += 1
        if self.enabled:
            buf = io.BytesIO()
            np.savez(buf, A=A.numpy(), grid=np.asarray(grid, dtype=np.int64))
            atomic_write_bytes(self.dir / f"{key}.npz", buf.getvalue())
            if "h" in got:
                buf = io.BytesIO()
                np.savez(buf, F=got["h"].numpy().astype(np.float16), grid=np.asarray(grid, dtype=np.int64))
                atomic_write_bytes(self.dir / f"{key}.feat.npz", buf.getvalue())
        return A, grid, got.get("h")


def image_digest(image: np.ndarray) -> str:
    """A digest of the image's pixels: the key of everything cached per image."""
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()


# ------------------------------------------------------------------------------------------------
# Memory and time


def maxrss_bytes() -> int:
    """Peak resident set size of this process so far (bytes; Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def module_command(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args...`` with this interpreter (run it from
    :data:`REPO_ROOT`, as :func:`run_worker` does)."""
    return [sys.executable, "-m", module, *args]


def run_worker(cmd: Sequence[str], name: str, tail: int = 3000) -> dict | None:
    """Run one measurement in its own process (so its memory peak is its own), from the repository
    root (so ``python -m benchmarks...`` finds the package), and return the JSON object on its last
    stdout line; on failure print the end of its stderr and return None."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, cwd=REPO_ROOT)
    if res.returncode != 0:
        print(f"{name}: failed\n{res.stderr[-tail:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


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
