"""Shared plumbing of the benchmark scripts: paths, the on-disk attention cache, atomic writes,
markdown tables, and process memory measurement."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dslo.outputs import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# The two real annotated sets of shared/data: dataset name -> sub-folder.
DATASET_DIRS = {"camvid": "camvid", "coco_object": "coco_object"}


def bench_cache_dir() -> Path:
    """``$DSLO_BENCH_CACHE``, else ``~/.cache/dslo/bench`` (outside the repository)."""
    env = os.environ.get("DSLO_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dslo" / "bench"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "{:.1f}") -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if v != v else fmt.format(v)
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
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
                         default=str)
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
        path = self.dir / f"{_image_digest(image)}.npz"
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
        path = self.dir / f"{_image_digest(image)}.feat.npz"
        if self.enabled and path.is_file():
            with np.load(path) as z:
                self.hits += 1
                return torch.from_numpy(z["F"].astype(np.float32)), (int(z["grid"][0]), int(z["grid"][1]))
        _, grid, feats = self._compute(image, want_features=True)
        return feats, grid

    def _compute(self, image: np.ndarray, want_features: bool):
        key = _image_digest(image)
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
            import io

            buf = io.BytesIO()
            np.savez(buf, A=A.numpy(), grid=np.asarray(grid, dtype=np.int64))
            atomic_write_bytes(self.dir / f"{key}.npz", buf.getvalue())
            if "h" in got:
                buf = io.BytesIO()
                np.savez(buf, F=got["h"].numpy().astype(np.float16), grid=np.asarray(grid, dtype=np.int64))
                atomic_write_bytes(self.dir / f"{key}.feat.npz", buf.getvalue())
        return A, grid, got.get("h")


def _image_digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()


# ------------------------------------------------------------------------------------------------
# Memory


def maxrss_bytes() -> int:
    """Peak resident set size of this process so far (bytes; Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def run_worker(cmd: Sequence[str], name: str, tail: int = 3000) -> dict | None:
    """Run one measurement in its own process (so its memory peak is its own) and return the JSON
    object on its last stdout line; on failure print the end of its stderr and return None."""
    res = subprocess.run(list(cmd), capture_output=True, text=True)
    if res.returncode != 0:
        print(f"{name}: failed\n{res.stderr[-tail:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])
