"""The benchmark class-name files shipped in ``dslo/eval/classnames/``, found by name. Their format
(one class per line in label order, synonyms comma-separated, ``#`` lines are comments) is read by
the one class parser, :func:`dslo.classes.parse_class_lines`."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from dslo.classes import parse_class_lines, read_classes_file
from dslo.hashing import file_digest

__all__ = ["builtin_class_files", "file_sha256", "parse_class_lines", "read_class_file", "resolve_class_file"]

BUILTIN_DIR = "classnames"


def builtin_class_files() -> dict[str, Path]:
    """Name → path of every class file shipped with dslo."""
    root = resources.files("dslo.eval") / BUILTIN_DIR
    return {
        Path(str(p)).stem: Path(str(p))
        for p in sorted(root.iterdir(), key=lambda q: q.name)
        if p.name.endswith(".txt")
    }


def resolve_class_file(name_or_path: str | os.PathLike) -> Path:
    """A shipped class file by name (``voc21``) or any file path."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    files = builtin_class_files()
    if str(name_or_path) in files:
        return files[str(name_or_path)]
    raise FileNotFoundError(
        f"class file {str(name_or_path)!r} not found: pass a path to a text file (one class per "
        f"line, synonyms comma-separated) or one of the shipped names {sorted(files)}"
    )


def read_class_file(name_or_path: str | os.PathLike) -> list[list[str]]:
    """Read a class file (shipped name or path) into synonym lists, with the one parser of class
    files (:func:`dslo.classes.read_classes_file`)."""
    return read_classes_file(resolve_class_file(name_or_path))


def file_sha256(path: str | os.PathLike) -> str:
    return file_digest(path)
