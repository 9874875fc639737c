"""What a scaled run decides on the driver before any model work: which images are finished
(resume), and the text embeddings of the vocabulary, computed once and shared with every worker."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import torch

from dslo import remote
from dslo.outputs import OUTPUT_KINDS
from dslo.scale.inputs import Item


def existing_files(out: str | Path) -> set[str]:
    """Every file under the output location, as posix paths relative to it (one listing, not one
    request per output: on object storage that is the difference between seconds and hours)."""
    if remote.is_uri(out):
        found = remote.list_files(str(out))
        return {rel for _, rel in found[1]} if found and found[0] == "dir" else set()
    root = Path(out)
    if not root.is_dir():
        return set()
    files = set()
    for folder, _, names in os.walk(root):
        rel = PurePosixPath(Path(folder).relative_to(root).as_posix())
        files.update((rel / n).as_posix() for n in names)
    return files


def finished_stems(items: Iterable[Item], out: str | Path, kinds: Sequence[str],
                   request: dict | None = None) -> set[str]:
    """Stems whose requested outputs all exist, read from one listing. In a local folder, with
    ``request``, they must also have been made by that request (the local engine's rule,
    :mod:`dslo.provenance`): outputs of another request are refused with what differs, never
    passed off as this run's. (On object storage only existence is checked: reading every
    output back would cost one request per file.)"""
    files = existing_files(out)
    done = {it.stem for it in items if all(it.stem + OUTPUT_KINDS[k] in files for k in kinds)}
    if request is None or not done or not isinstance(out, Path):
        return done
    from dslo.provenance import describe_difference, read_request, read_request_id, request_id

    rid = request_id(request)
    for stem in sorted(done):
        for k in kinds:
            path = out / (stem + OUTPUT_KINDS[k])
            if read_request_id(path) != rid:
                raise ValueError(
                    f"{path} was made by another request ({describe_difference(read_request(path), request)}); "
                    "use another --output folder, or --overwrite to redo every image")
    return done


def query_classes(classes: Sequence[Sequence[str]], background) -> list[list[str]]:
    """The synonym lists the logits model is asked for: :meth:`Segmenter.predict`'s rule (the
    stuff-word background class first when that policy is on)."""
    from dslo.classes import normalize_classes

    user = normalize_classes(classes)
    return ([background.stuff_class(user)] + user) if background.kind == "stuff" else user


def logits_model_spec(preset: str, kwargs: dict) -> tuple[str, dict]:
    """The logits model ``create_segmenter(preset, **kwargs)`` would load: (name, options)."""
    from dslo.models import weights_available
    from dslo.presets import resolve_preset
    from dslo.segmenter import _offline_logits_error

    spec, implied = resolve_preset(preset)
    name = kwargs.get("logits") or implied.get("logits") or spec.logits
    if name is None:  # the offline preset without --logits
        if not weights_available("clip-b16"):
            raise _offline_logits_error()
        name = "clip-b16"
    options = {**spec.logits_options, **dict(kwargs.get("logits_options") or {})}
    if kwargs.get("dtype") not in (None, "auto"):
        options["dtype"] = kwargs["dtype"]
    return os.fspath(name), options


def vocabulary_embeddings(preset: str, kwargs: dict, classes: Sequence[Sequence[str]]
                          ) -> dict[str, torch.Tensor] | None:
    """``name -> (D,)`` float32 CPU text embeddings of every name the workers' logits model will
    embed, computed here once (same model, dtype, templates and call as a worker's first image,
    so the numbers are the same); ``None`` when the logits model takes no precomputed embeddings."""
    from dslo.classes import normalize_classes
    from dslo.models import create_logits_model

    name, options = logits_model_spec(preset, kwargs)
    model = create_logits_model(name, device="auto", **options)
    if not hasattr(model, "add_text_embeddings"):
        return None
    groups = normalize_classes(query_classes(classes, kwargs["background"]))
    names = list(dict.fromkeys(n for g in groups for n in g))
    emb = model.text_embeddings(names).cpu()
    return dict(zip(names, emb, strict=False))
