"""Files behind URIs (``s3://``, ``gs://``, ``hdfs://``, ``file://``, any scheme pyarrow's
filesystems read): detection, one filesystem object per bucket, listing, reading, atomic writes.

pyarrow is imported only when a URI is used, so local-only users never need it. A URI is kept as
a ``str`` everywhere (``pathlib`` would fold its ``//``); local paths stay ``Path``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["is_uri", "location", "join", "fs_path", "list_files", "read_bytes", "write_atomic",
           "exists", "mtime"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")  # 2+ letters: "C://x" is not a URI
# Object stores make an object visible only once its upload completes: a direct write is already
# atomic there, and a temporary name + rename would copy every byte twice.
_ATOMIC_PUT = ("s3", "gcs")


def is_uri(text: object) -> bool:
    """Whether ``text`` is a ``scheme://...`` string (not a local path)."""
    return isinstance(text, str) and bool(_SCHEME.match(text))


def location(text: str):
    """A command-line path or URI → ``Path`` for local paths, the ``str`` itself for URIs."""
    from pathlib import Path

    return text if is_uri(text) else Path(text).expanduser()


def join(root: str, rel: str) -> str:
    """``root`` URI + ``/`` + a relative posix path."""
    return root.rstrip("/") + "/" + rel.lstrip("/")


@functools.lru_cache(maxsize=64)
def _root(root: str):
    from pyarrow.fs import FileSystem

    fs, base = FileSystem.from_uri(root)
    return fs, base.rstrip("/")


def fs_path(uri: str):
    """``uri`` → ``(pyarrow FileSystem, path inside it)``; the filesystem is built once per
    scheme + host (a bucket's S3 client is not re-created for every file)."""
    parts = urlsplit(uri)
    fs, base = _root(f"{parts.scheme}://{parts.netloc}/")
    return fs, f"{base}/{parts.path.lstrip('/')}"


def _uri_of(uri_root: str, root_path: str, path: str) -> str:
    return join(uri_root, path[len(root_path):].lstrip("/"))


def list_files(uri: str) -> tuple[str, list[tuple[str, str]]] | None:
    """Files under ``uri``: ``("dir", [(file URI, path relative to uri), ...])`` for a folder
    (recursive, sorted), ``("file", [(uri, name)])`` for a file, ``None`` when nothing is there."""
    from pyarrow.fs import FileSelector, FileType

    fs, path = fs_path(uri)
    info = fs.get_file_info(path)
    if info.type == FileType.File:
        return "file", [(uri, path.rsplit("/", 1)[-1])]
    if info.type != FileType.Directory:
        return None
    infos = fs.get_file_info(FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == FileType.File)
    return "dir", [(_uri_of(uri, path, f), f[len(path):].lstrip("/")) for f in files]


def read_bytes(uri: str) -> bytes:
    fs, path = fs_path(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def exists(uri: str) -> bool:
    from pyarrow.fs import FileType

    fs, path = fs_path(uri)
    return fs.get_file_info(path).type == FileType.File


def mtime(uri: str) -> float | None:
    """Modification time (seconds since the epoch) of a file, ``None`` when it does not exist."""
    from pyarrow.fs import FileType

    fs, path = fs_path(uri)
    info = fs.get_file_info(path)
    return info.mtime.timestamp() if info.type == FileType.File and info.mtime else None


def write_atomic(uri: str, write: Callable[[Any], object]) -> str:
    """Call ``write(fileobj)`` and store the bytes at ``uri`` so that readers see the whole file
    or none: a temporary name beside it, then a rename (object stores: one upload)."""
    buf = io.BytesIO()
    write(buf)
    data = buf.getvalue()
    fs, path = fs_path(uri)
    parent, _, name = path.rpartition("/")
    if fs.type_name in _ATOMIC_PUT:
        with fs.open_output_stream(path) as f:
            f.write(data)
        return uri
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
    return uri
