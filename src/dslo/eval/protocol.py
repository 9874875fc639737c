"""The protocol record saved next to every number: everything that changes a benchmark result
(resize, class file, background policy, thresholds, attention resolution, head settings, model
ids), so two numbers can be compared by diffing two JSON files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dslo.eval.classes import file_sha256, resolve_class_file
from dslo.eval.datasets import DATASETS, SegDataset
from dslo.imageio import DEFAULT_MAX_SIDE

# SPEC §2: whole-image inference, CLIP input short side 336 (Cityscapes 560), aspect kept, no
# sliding window. max_side caps the image the models see; for Cityscapes (2048×1024) it is set to
# 2 × 560 so CLIP gets 1120×560 straight from the downscaled frame rather than an upscale of 1024×512.
DEFAULT_SHORT_SIDE = 336


@dataclass(frozen=True)
class BenchmarkDefaults:
    short_side: int = DEFAULT_SHORT_SIDE
    max_side: int | None = DEFAULT_MAX_SIDE


BENCHMARK_DEFAULTS: dict[str, BenchmarkDefaults] = {name: BenchmarkDefaults() for name in DATASETS}
BENCHMARK_DEFAULTS["cityscapes"] = BenchmarkDefaults(short_side=560, max_side=1120)

METRIC = (
    "MMSegmentation IoUMetric: intersections and unions summed over all evaluated images; "
    "IoU_c = ΣI_c/ΣU_c; mIoU = mean over classes with ΣU_c > 0; aAcc = Σ correct / Σ labelled; "
    "percent; label 255 ignored; predictions at the original image size"
)


def background_record(dataset: SegDataset, threshold: float | None = None) -> dict[str, Any]:
    """How the benchmark's background was handled (SPEC §5): reported with every result."""
    if dataset.background == "class":
        if threshold is not None:
            return {"policy": "threshold", "index": dataset.background_index, "threshold": threshold,
                    "note": "the background line is not prompted; pixels whose max CLIP class "
                            "probability is below the threshold become background"}
        index = dataset.background_index
        assert index is not None  # a "class" background has its index
        return {"policy": "class", "index": index, "names": list(dataset.classes[index])}
    if threshold is not None:
        raise ValueError(
            f"{dataset.name} has no background class (background: {dataset.background}); "
            "--background-threshold applies to voc21, context60 and coco_object only"
        )
    if dataset.background == "ignored":
        return {"policy": "ignored", "note": "reduce_zero_label: background pixels are ignore (255)"}
    return {"policy": "none"}


def eval_request(
    dataset: SegDataset,
    *,
    model: str,
    logits: str | None = None,
    attention: str | None = None,
    overrides: dict[str, Any] | None = None,
    background_threshold: float | None = None,
    short_side: int | None = None,
    max_side: int | None | str = "default",
    method: str | None = None,
) -> dict[str, Any]:
    """What the user asked for, fixed before any model is built. Two runs with the same request
    make the same predictions, so a cache made under one request is valid for the other.

    ``method``: the CLIP method of the logits model (``dslo.models.logits_method``); another
    method than dslo records its published protocol, and its published input size is the
    default short side."""
    d = BENCHMARK_DEFAULTS.get(dataset.name, BenchmarkDefaults())
    class_path = resolve_class_file(dataset.class_file)
    peer = method_record(method, dataset.name)
    if short_side is None and peer is not None and isinstance(peer["short_side"], int):
        short_side = peer["short_side"]
    request = {
        "dataset": dataset.name,
        "title": DATASETS[dataset.name].title,
        "split": dataset.split,
        "num_classes": dataset.num_classes,
        "class_file": dataset.class_file,
        "class_file_sha256": file_sha256(class_path),
        "reduce_zero_label": dataset.reduce_zero_label,
        "ignore_index": dataset.ignore_index,
        "background": background_record(dataset, background_threshold),
        "resize": {
            "logits_short_side": int(short_side or d.short_side),
            "keep_ratio": True,
            "sliding_window": False,
            "max_side": d.max_side if max_side == "default" else max_side,
        },
        "model": {
            "preset": model,
            "logits": logits,
            "attention": attention,
            "overrides": {k: _jsonable(v) for k, v in sorted((overrides or {}).items())},
        },
        "metric": METRIC,
    }
    if peer is not None:
        peer["this_run"]["pamr"] = (overrides or {}).get("post") == "pamr"
        request["method"] = peer
    return request


def method_record(method: str | None, dataset_name: str) -> dict[str, Any] | None:
    """The published protocol of a peer method on this benchmark (None for dslo's own), with
    what this run does instead: dslo evaluates every method on the whole image without PAMR,
    so numbers differ from the published ones by what the sliding window and PAMR are worth."""
    if method in (None, "dslo"):
        return None
    from dslo.models.clip_methods import PROTOCOLS, method_protocol

    if method in PROTOCOLS and dataset_name in PROTOCOLS[method]["short_side"]:
        rec = method_protocol(method, dataset_name)
    else:  # a dataset the method never published on: no protocol to follow
        rec = {**method_protocol(method), "short_side": None, "sliding_window": None,
               "note": f"no published protocol for {dataset_name}; per benchmark: docs/methods.md"}
    rec["this_run"] = {"sliding_window": False, "pamr": False}
    return rec


def request_key(request: dict[str, Any]) -> str:
    """A stable hash of a request (the cache is valid only for an identical request)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]


def describe_segmenter(segmenter: Any) -> dict[str, Any]:
    """The settings a built segmenter actually used: its own record (preset, model ids, mode,
    every head setting) plus each model's settings (CLIP input size, attention resolution...)."""
    rec: dict[str, Any] = {}
    settings = getattr(segmenter, "settings", None)
    if callable(settings):
        rec.update(_jsonable(settings()))
    readout = readout_record(getattr(segmenter, "mode", None), getattr(segmenter, "head", None))
    if readout is not None:
        rec["readout"] = readout
    for attr in ("logits_model", "attention_model"):
        m = getattr(segmenter, attr, None)
        if m is not None:
            rec[attr] = _describe_model(m)
    import torch

    from dslo import __version__

    rec["versions"] = {"dslo": __version__, "torch": torch.__version__, "python": platform.python_version()}
    return rec


def readout_record(mode: str | None, head: Any) -> dict[str, Any] | None:
    """Which label readout produced the numbers: ``{"paper": bool, "description": str}``, so a
    result says whether it is the paper's method (SPEC §4, what the ``paper-*`` presets run) or the
    product's fused readout (SPEC §8). None without a head record."""
    from dslo.head import HeadConfig, get_mode

    if not isinstance(head, HeadConfig) or mode is None:
        return None
    if not get_mode(mode).runs_head:
        return {"paper": False, "description": "no head: the logits upsampled bilinearly, arg-max"}
    return {"paper": head.paper_readout, "description": head.describe_readout()}


def _describe_model(m: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"repr": repr(m)}
    s = getattr(m, "settings", None)
    if dataclasses.is_dataclass(s) and not isinstance(s, type):
        out["settings"] = _jsonable(dataclasses.asdict(s))
    for attr in ("name", "patch_size"):
        if hasattr(m, attr):
            out[attr] = _jsonable(getattr(m, attr))
    return out


def _jsonable(v: Any) -> Any:
    """JSON-safe copy; long lists (the 80 prompt templates) become a count and a hash."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        if len(v) > 32:
            text = json.dumps([str(x) for x in v])
            return {"count": len(v), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    return str(v)
