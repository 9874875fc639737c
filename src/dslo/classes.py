"""Class lists and background policies for segmenting your own images.

A class is a list of synonyms; its display name is the first synonym and its score is the max over
its synonyms (SPEC §2). Users hand classes over in three forms, all normalised here to
``list[list[str]]``:

* a comma-separated string (the CLI's ``--classes "cat, dog"``): one class per comma;
* a sequence whose items are classes: a string (one class; commas inside it separate synonyms,
  exactly like a line of a classes file) or a list of synonyms;
* a text file (``pathlib.Path``, or a string path ending in ``.txt`` that exists): one class per
  line, synonyms comma-separated; blank lines and lines starting with ``#`` (comments, as in the
  benchmark files of ``dslo/eval/classnames/``) are skipped.

Empty and duplicate names are rejected with a message naming the offending entry, because a
silently dropped or doubled class shifts every class id after it.

The background policy (SPEC §5) decides what happens to pixels that belong to none of the classes:
``none`` (every pixel gets a user class), ``stuff`` (a class named ``background`` whose synonyms are
stuff words is put first) or ``threshold`` (pixels whose CLIP class probability is below a threshold
become ``background``). With a background, class id 0 is ``background`` and the user classes follow.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ClassesLike = str | os.PathLike | Sequence[str | Sequence[str]]

BACKGROUND_NAME = "background"

# Stuff words for the background class: exactly the background line of the standard VOC21 and
# COCO-Object class-name files (SCLIP's cls_voc21.txt / cls_coco_object.txt), so results stay
# comparable with published numbers. Words that are also a user class are dropped from the
# background at prediction time, so asking for "sky" or "road" still works.
DEFAULT_STUFF_WORDS: tuple[str, ...] = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk",
    "bed", "building", "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf",
    "curtain", "stair", "floor", "hill", "rail", "fence",
)

# Logit scale of the CLIP class softmax used by the threshold policy: the head's evidence scale
# (dslo.head.EVIDENCE_SCALE, SPEC §4's s), recorded in every output's background record. A leaf
# cannot import the head; tests/test_classes.py pins the two equal.
THRESHOLD_SCALE = 40.0


def _clean(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip()


def _key(name: str) -> str:
    """Comparison key for duplicates: case- and whitespace-insensitive."""
    return _clean(name).casefold()


def _split_synonyms(line: str, where: str) -> list[str]:
    names = [_clean(n) for n in line.split(",")]
    if any(not n for n in names):
        raise ValueError(
            f"empty class name in {where}: {line.strip()!r}; remove the extra comma"
        )
    return names


def parse_class_string(text: str) -> list[list[str]]:
    """``"cat, dog, potted plant"`` → ``[["cat"], ["dog"], ["potted plant"]]`` (one class per comma)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no classes given: pass class names separated by commas, e.g. \"cat, dog\"")
    names = [_clean(n) for n in text.split(",")]
    for i, n in enumerate(names):
        if not n:
            raise ValueError(
                f"class {i + 1} is empty in {text!r}; remove the extra comma "
                "(synonyms go in a classes file: one class per line, synonyms comma-separated)"
            )
    return validate_classes([[n] for n in names])


def read_classes_file(path: str | os.PathLike) -> list[list[str]]:
    """Read a classes file: one class per line, synonyms comma-separated; blank lines and ``#``
    comment lines are skipped.

    Returns ``K`` synonym lists. Raises ``FileNotFoundError`` / ``ValueError`` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except UnicodeDecodeError as exc:
        raise ValueError(f"classes file {path} is not UTF-8 text: {exc}") from exc
    return parse_class_lines(text, str(path))


def parse_class_lines(text: str, source: str = "<text>") -> list[list[str]]:
    """The text of a classes file → ``K`` synonym lists (the one parser of class lines).

    One class per line, synonyms comma-separated; blank lines and ``#`` comment lines are skipped;
    the result is checked by :func:`validate_classes`. Errors name ``source`` and the line.

    >>> parse_class_lines("# provenance\\nsky\\nperson, man, woman\\n")
    [['sky'], ['person', 'man', 'woman']]
    """
    classes = [
        _split_synonyms(line, f"{source}, line {lineno}")
        for lineno, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not classes:
        raise ValueError(f"classes file {source} has no classes: write one class per line")
    return validate_classes(classes, source=source)


def validate_classes(classes: Sequence[Sequence[str]], source: str = "the class list") -> list[list[str]]:
    """Check synonym lists and return a cleaned copy.

    Rejected: no classes, a class without a name, an empty name, and two classes with the same
    name (the first synonym, case-insensitive): the second could never be told apart. A synonym
    shared by two classes is allowed, as in the standard ADE20K names ("screen door, screen" and
    "blind, screen"); a synonym repeated within one class is dropped.
    """
    out: list[list[str]] = []
    seen: dict[str, int] = {}
    if not classes:
        raise ValueError(f"no classes in {source}: give at least one class name")
    for i, syns in enumerate(classes):
        if isinstance(syns, str):
            raise TypeError(f"class {i + 1} in {source} must be a list of synonyms, got {syns!r}")
        if not syns:
            raise ValueError(f"class {i + 1} in {source} has no name")
        names: list[str] = []
        for s in syns:
            if not isinstance(s, str):
                raise TypeError(f"class names must be strings; class {i + 1} in {source} has {s!r}")
            n = _clean(s)
            if not n:
                raise ValueError(f"class {i + 1} in {source} has an empty name")
            if _key(n) not in {_key(x) for x in names}:
                names.append(n)
        k = _key(names[0])
        if k in seen:
            raise ValueError(
                f"duplicate class name {names[0]!r} in classes {seen[k] + 1} and {i + 1} of {source}; "
                "each class needs its own name (put synonyms of one class on one line, "
                "separated by commas)"
            )
        seen[k] = i
        out.append(names)
    return out


_CLASS_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".names", ".lst", ".list", ".text", ".classes")


def looks_like_path(text: str) -> bool:
    """Whether a classes string is meant as a file path: one item (no comma) that ends in a
    text-file suffix or starts like a path (``/``, ``./``, ``../``, ``~/``)."""
    t = text.strip()
    if not t or "," in t or "\n" in t:
        return False
    return t.lower().endswith(_CLASS_FILE_SUFFIXES) or t.startswith(("/", "./", "../", "~/", "~\\", ".\\"))


def normalize_classes(classes: ClassesLike) -> list[list[str]]:
    """Any accepted class form → ``K`` synonym lists (see the module docstring). The one meaning
    of a class list in dslo: the segmenter, the CLIP logits model and the class files all use it.

    >>> normalize_classes("cat, dog")              # a string: one class per comma
    [['cat'], ['dog']]
    >>> normalize_classes(["cat", "dog, puppy"])   # an item: one class, commas separate synonyms
    [['cat'], ['dog', 'puppy']]
    """
    if isinstance(classes, os.PathLike):
        return read_classes_file(classes)
    if isinstance(classes, str):
        if looks_like_path(classes):
            # A mistyped file name must not become one class named after the file.
            return read_classes_file(os.path.expanduser(classes.strip()))
        return parse_class_string(classes)
    if isinstance(classes, (bytes, bytearray)):
        raise TypeError("classes must be text, not bytes")
    try:
        items = list(classes)
    except TypeError:
        raise TypeError(
            f"unsupported classes type {type(classes).__name__}: pass a comma-separated string, "
            "a list of names / synonym lists, or a pathlib.Path to a classes file"
        ) from None
    out: list[list[str]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(_split_synonyms(item, f"class {i + 1}") if item.strip() else [""])
        else:
            out.append(list(item))
    return validate_classes(out)


def class_names(classes: Sequence[Sequence[str]]) -> list[str]:
    """Display names: the first synonym of each class."""
    return [syns[0] for syns in classes]


@dataclass(frozen=True)
class BackgroundPolicy:
    """How pixels that belong to none of the user's classes are labelled (SPEC §5).

    ``kind``: ``"none"`` | ``"stuff"`` (a ``background`` class with ``words`` as synonyms is put
    first) | ``"threshold"`` (pixels whose max CLIP class probability ``softmax(scale · logits)``
    is below ``threshold`` become ``background``, class id 0).
    """

    kind: str = "none"
    words: tuple[str, ...] = field(default=DEFAULT_STUFF_WORDS)
    threshold: float = 0.0
    scale: float = THRESHOLD_SCALE

    def __post_init__(self) -> None:
        if self.kind not in ("none", "stuff", "threshold"):
            raise ValueError(f"unknown background policy {self.kind!r}; use none, stuff or threshold")
        if self.kind == "threshold" and not (0.0 < self.threshold < 1.0 and math.isfinite(self.threshold)):
            raise ValueError(
                f"background threshold must be a probability in (0, 1); got {self.threshold}"
            )
        if self.kind == "stuff" and not self.words:
            raise ValueError("the stuff background needs at least one word")

    @property
    def has_background(self) -> bool:
        return self.kind != "none"

    def describe(self) -> dict:
        """A JSON-ready record of the policy, stored in every output."""
        if self.kind == "stuff":
            return {"policy": "stuff", "class_id": 0, "words": list(self.words)}
        if self.kind == "threshold":
            return {"policy": "threshold", "class_id": 0, "threshold": self.threshold, "scale": self.scale}
        return {"policy": "none"}

    def stuff_class(self, user_classes: Sequence[Sequence[str]]) -> list[str]:
        """The background synonym list, without the words that are also user class names."""
        taken = {_key(n) for syns in user_classes for n in syns}
        words = [w for w in self.words if _key(w) not in taken]
        if not words:
            raise ValueError(
                "every background stuff word is also one of your classes; "
                "pass other words or use the threshold background"
            )
        return words


def parse_background(spec: object = None, words: Sequence[str] | str | None = None) -> BackgroundPolicy:
    """Turn a user's background choice into a :class:`BackgroundPolicy`.

    ``spec``: ``None`` / ``"none"`` / ``False``; ``"stuff"`` (default stuff words, or ``words``);
    a list of stuff words; a float in (0, 1) or ``"threshold:T"`` / ``"T"`` (probability threshold);
    or a ``BackgroundPolicy``.
    """
    if isinstance(spec, BackgroundPolicy):
        return spec
    if isinstance(words, str):
        words = [w for w in (_clean(x) for x in words.split(",")) if w]
    if spec is None or spec is False:
        if words:
            return BackgroundPolicy("stuff", tuple(words))
        return BackgroundPolicy("none")
    if isinstance(spec, bool) and spec:
        return BackgroundPolicy("stuff", tuple(words or DEFAULT_STUFF_WORDS))
    if isinstance(spec, (int, float)):
        return BackgroundPolicy("threshold", threshold=float(spec))
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("none", "off", ""):
            return BackgroundPolicy("none")
        if s in ("stuff", "class", "stuff-words"):
            return BackgroundPolicy("stuff", tuple(words or DEFAULT_STUFF_WORDS))
        if s.startswith("threshold:") or s.startswith("threshold="):
            s = s[len("threshold:"):]
        try:
            return BackgroundPolicy("threshold", threshold=float(s))
        except ValueError:
            raise ValueError(
                f"unknown background {spec!r}; use 'none', 'stuff' (a background class of stuff "
                "words) or a probability threshold such as 0.5"
            ) from None
    if isinstance(spec, (list, tuple)):
        return BackgroundPolicy("stuff", tuple(_clean(w) for w in spec if _clean(str(w))))
    raise TypeError(f"unsupported background {spec!r}; use None, 'stuff', a list of words or a float")
