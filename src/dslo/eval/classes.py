"""Class-name files: one class per line in label order, synonyms comma-separated, lines starting
with ``#`` are comments (provenance). The benchmark files ship in ``dslo/eval/classnames/``."""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

BUILTIN_DIR = "classnames"


def parse_class_lines(text: str, source: str = "<text>") -> list[list[str]]:
    """Class-file text → list of synonym lists (one per class, in label order).

    Blank lines and lines starting with ``#`` are skipped; synonyms are split on commas and
    stripped. Raises ValueError naming ``source`` when a class line has an empty synonym.
    """
    classes: list[list[str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        names = [s.strip() for s in line.split(",")]
        if any(not n for n in names):
            raise ValueError(f"{source}:{lineno}: empty class name in {raw!r}")
        classes.append(names)
    if not classes:
        raise ValueError(f"{source}: no class lines (one class per line, synonyms comma-separated)")
    return classes


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
    """Read a class file (shipped name or path) into synonym lists."""
    path = resolve_class_file(name_or_path)
    return parse_class_lines(path.read_text(encoding="utf-8"), str(path))


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
