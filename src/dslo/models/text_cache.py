"""A persistent cache of CLIP text embeddings, so a vocabulary is embedded once per machine, not
once per process.

Layout: ``$DSLO_CACHE_DIR/text/<model key>/<templates key>/<name key>.safetensors``, one file per
class name holding its ``(D,)`` float32 embedding (the normalised mean over the templates) and, as
safetensors metadata, everything the key was made from. A file is trusted only when it parses,
its metadata names the same model, template set and class name, and the vector has the expected
shape and is finite; anything else (a torn write, a file from another model, a hash collision) is
ignored, recomputed and overwritten. Only safetensors is ever read — never pickle.

The model key is the model's *identity* (see :func:`identity_of_source`: a Hub id with its commit,
or a digest of a local checkpoint's files) plus its dtype; the templates key is a digest of the
template list in order. Writes go to a temporary file in the same folder, then ``os.replace``:
two processes writing the same entry both write the same bytes and one rename wins. The cache is
bounded (``$DSLO_TEXT_CACHE_MB``, default 512 MB): after a write, the least recently used files
are removed until it is under the bound. ``DSLO_TEXT_CACHE=0`` disables it (``--no-text-cache``).

:class:`TextEmbeddings` is a vocabulary's embeddings with the key they belong to, serialisable to
safetensors bytes: a driver can embed once and hand the result to workers
(``ClipLogitsModel.export_text_embeddings`` / ``import_text_embeddings``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dslo.hashing import file_digest, text_digest
from dslo.models.weights import cache_dir

__all__ = [
    "FORMAT",
    "TextEmbeddings",
    "TextEmbeddingCache",
    "cache_enabled",
    "text_cache_dir",
    "max_cache_bytes",
    "templates_key",
    "identity_of_source",
    "parameters_identity",
    "cache_summary",
    "clear_text_cache",
]

FORMAT = "dslo-text-embedding/1"
DEFAULT_MAX_MB = 512
_OFF = {"0", "false", "no", "off"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
# The files besides the weights that decide a checkpoint's text embeddings (configs and tokenizers
# of the transformers CLIP / SigLIP and OpenCLIP formats).
_TOKENIZER_FILES = ("config.json", "open_clip_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                    "merges.txt", "special_tokens_map.json", "spiece.model", "tokenizer.model")


def cache_enabled() -> bool:
    """False when ``$DSLO_TEXT_CACHE`` is 0/false/no/off (``--no-text-cache`` sets it)."""
    return os.environ.get("DSLO_TEXT_CACHE", "1").strip().lower() not in _OFF


def text_cache_dir() -> Path:
    return cache_dir() / "text"


def max_cache_bytes() -> int:
    """The size bound: ``$DSLO_TEXT_CACHE_MB`` megabytes (default 512)."""
    raw = os.environ.get("DSLO_TEXT_CACHE_MB", str(DEFAULT_MAX_MB))
    try:
        mb = float(raw)
    except ValueError as exc:
        raise ValueError(f"DSLO_TEXT_CACHE_MB={raw!r} is not a number of megabytes") from exc
    return max(0, int(mb * 2**20))


_digest = text_digest


def templates_key(templates: Sequence[str]) -> str:
    """Digest of the template list, order included (the mean does not depend on the order, but a
    reordered list is rare and a miss is only a recomputation)."""
    return _digest(json.dumps(list(templates), ensure_ascii=False))[:32]


# ------------------------------------------------------------------------------------------------
# Model identity


def _file_digest(path: Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) under the cache so a multi-GB checkpoint
    is read once, not in every process."""
    st = path.stat()
    memo = cache_dir() / "digests" / (_digest(str(path.resolve()), str(st.st_size), str(st.st_mtime_ns))[:32] + ".txt")
    try:
        text = memo.read_text(encoding="ascii").strip()
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            return text
    except OSError:
        pass
    digest = file_digest(path)
    try:
        from dslo.outputs import atomic_write_text

        atomic_write_text(memo, digest)
    except OSError:  # a read-only cache only costs the re-hash next time
        pass
    return digest


def _local_identity(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and (p.suffix in _WEIGHT_SUFFIXES or p.name in _TOKENIZER_FILES))
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"no weight files in {folder}")
    return "local:" + _digest(*(f"{p.name}={_file_digest(p)}" for p in files))[:40]


def identity_of_source(source: str) -> str | None:
    """What determines a checkpoint's embeddings, as a string: ``hub:<id>@<commit>`` for a Hub
    model found in the Hugging Face cache, ``local:<digest>`` for a local folder (a digest of its
    weight, config and tokenizer files). None when it cannot be told (the caller then hashes the
    parameters in memory)."""
    p = Path(source).expanduser()
    if p.is_dir():
        try:
            return _local_identity(p)
        except OSError:
            return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(source, "config.json")
    except Exception:  # not a valid repo id: no identity
        return None
    if isinstance(hit, str):
        parts = Path(hit).parts
        if "snapshots" in parts:  # .../models--org--name/snapshots/<commit>/config.json
            return f"hub:{source}@{parts[parts.index('snapshots') + 1]}"
    return None


def parameters_identity(modules: Iterable[torch.nn.Module]) -> str:
    """``params:<digest>`` of the modules' parameter names, shapes, dtypes and values (for models
    built in memory, which have no checkpoint to name)."""
    h = hashlib.sha256()
    for m in modules:
        for name, t in m.state_dict().items():
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return "params:" + h.hexdigest()[:40]


# ------------------------------------------------------------------------------------------------
# Embeddings in flight


@dataclass(frozen=True)
class TextEmbeddings:
    """A vocabulary's embeddings: ``vectors`` ``(Q, D)`` float32 (CPU), row i for ``names[i]``,
    and ``key``, the model + template identity they were computed with."""

    key: str
    names: tuple[str, ...]
    vectors: torch.Tensor

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.names):
            raise ValueError(f"vectors {tuple(self.vectors.shape)} do not fit {len(self.names)} names")

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.vectors, strict=False))

    def to_bytes(self) -> bytes:
        """safetensors bytes (names and key in the metadata): safe to send to another process."""
        from safetensors.torch import save

        meta = {"format": FORMAT, "key": self.key, "names": json.dumps(list(self.names), ensure_ascii=False)}
        return save({"vectors": self.vectors.to("cpu", torch.float32).contiguous()}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> TextEmbeddings:
        import safetensors
        from safetensors.torch import load

        try:
            vectors = load(data)["vectors"]
            meta = _metadata_of_bytes(data)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            return cls(meta["key"], tuple(json.loads(meta["names"])), vectors)
        except (KeyError, ValueError, safetensors.SafetensorError) as exc:
            raise ValueError(f"not dslo text embeddings ({exc})") from exc


def _metadata_of_bytes(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__", {})


# ------------------------------------------------------------------------------------------------
# The on-disk cache


class TextEmbeddingCache:
    """Per-name embeddings of one (model key, templates key) on disk. ``root`` defaults to
    :func:`text_cache_dir` (read when the cache is created)."""

    def __init__(self, model_key: str, templates: Sequence[str], *, root: Path | None = None,
                 max_bytes: int | None = None) -> None:
        self.model_key = model_key
        self.templates_key = templates_key(templates)
        self.root = Path(root) if root is not None else text_cache_dir()
        self.folder = self.root / _digest(model_key)[:32] / self.templates_key
        self.max_bytes = max_cache_bytes() if max_bytes is None else max_bytes

    def path(self, name: str) -> Path:
        return self.folder / (_digest(name)[:40] + ".safetensors")

    def _meta(self, name: str) -> dict[str, str]:
        return {"format": FORMAT, "model": self.model_key, "templates": self.templates_key, "name": name}

    def get(self, name: str, dim: int | None = None) -> torch.Tensor | None:
        """The cached ``(D,)`` embedding of ``name``, or None (missing, torn, foreign, bad)."""
        import safetensors
        from safetensors import safe_open

        path = self.path(name)
        try:
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() != self._meta(name) or list(f.keys()) != ["embedding"]:
                    return None
                v = f.get_tensor("embedding")
        except (OSError, ValueError, safetensors.SafetensorError, RuntimeError):
            return None
        if v.ndim != 1 or v.dtype != torch.float32 or (dim is not None and v.numel() != dim) \
                or not bool(torch.isfinite(v).all()):
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently *used* goes first when the cache is pruned
        return v

    def get_many(self, names: Iterable[str], dim: int | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for n in names:
            v = self.get(n, dim)
            if v is not None:
                out[n] = v
        return out

    def put_many(self, embeddings: Mapping[str, torch.Tensor]) -> None:
        """Write each ``(D,)`` embedding atomically, then prune to the size bound. A cache that
        cannot be written (read-only, disk full) is skipped silently: it only costs time."""
        from safetensors.torch import save

        from dslo.outputs import atomic_write_bytes

        if self.max_bytes <= 0:
            return
        try:
            for name, v in embeddings.items():
                data = save({"embedding": v.detach().to("cpu", torch.float32).contiguous()}, metadata=self._meta(name))
                atomic_write_bytes(self.path(name), data)
            prune(self.root, self.max_bytes)
        except OSError:
            pass


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    out: list[tuple[float, int, Path]] = []
    if not root.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            p = Path(dirpath) / fn
            try:
                st = p.stat()
            except OSError:  # removed by another process meanwhile
                continue
            out.append((st.st_mtime, st.st_size, p))
    return out


def prune(root: Path, max_bytes: int) -> int:
    """Remove least recently used files until ``root`` holds at most ``max_bytes`` (down to 90 %
    of it, so a full cache is not pruned on every write). Returns the number removed."""
    entries = _entries(root)
    total = sum(s for _, s, _ in entries)
    if total <= max_bytes:
        return 0
    removed = 0
    for _, size, p in sorted(entries):
        if total <= 0.9 * max_bytes:
            break
        try:
            p.unlink()
            total -= size
            removed += 1
        except OSError:
            pass
    return removed


def cache_summary(root: Path | None = None) -> dict:
    """``{"path", "enabled", "entries", "bytes", "max_bytes", "models": {model: entries}}``."""
    import safetensors
    from safetensors import safe_open

    root = Path(root) if root is not None else text_cache_dir()
    entries = _entries(root)
    models: dict[str, int] = {}
    for _, _, p in entries:
        try:
            with safe_open(str(p), framework="pt") as f:
                model = (f.metadata() or {}).get("model", "?")
        except (OSError, safetensors.SafetensorError, ValueError):
            model = "(unreadable)"
        models[model] = models.get(model, 0) + 1
    return {"path": str(root), "enabled": cache_enabled(), "entries": len(entries),
            "bytes": sum(s for _, s, _ in entries), "max_bytes": max_cache_bytes(), "models": models,
            "newest": max((t for t, _, _ in entries), default=None)}


def clear_text_cache(root: Path | None = None) -> int:
    """Delete every cached text embedding; returns how many files were removed."""
    import shutil

    root = Path(root) if root is not None else text_cache_dir()
    n = len(_entries(root))
    shutil.rmtree(root, ignore_errors=True)
    return n
