"""``accel`` against float32 for one preset, in one process (``python -m benchmarks.speed --accel
int8`` runs it per preset): the same models built twice, one set accelerated through
``Segmenter(..., accel=...)``.

Speed: end to end as :mod:`benchmarks.speed` times it (CLIP logits + ``Segmenter.refine`` on the
frame's GT-derived evidence), float32 and accelerated **alternated** round by round (which goes
first alternates too), on the same image per round; medians. On a shared machine the load moves
between rounds, so the ratio of medians over alternated rounds is what to read, not the
absolute times. Memory: the model weights (int8 layers counted at their packed size) and the
resident-set peak one prediction adds. Agreement on the timing frame: labels, the cosine of the
affinity rows and of CLIP's dense features per patch (random-init CLIPs: their class-centred
logits are near-ties of near-identical random text embeddings, so a logits cosine would measure
nothing; check-accel reports it for real weights). ``agreement_images`` > 0: label agreement
and affinity cosine over that many CamVid test images (evenly spaced; the head gets each image's GT-derived evidence, so only the
attention model's difference reaches the labels) — meaningful for real weights (focus-s14).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import DEFAULT_DATA_ROOT, peak_memory, spaced_subset


def weights_mb(*modules: torch.nn.Module) -> float:
    """Megabytes of the weights of ``modules`` (each counted once): parameters and buffers, and
    the dynamic int8 linear layers at their packed size (int8 weights, float bias, scales)."""
    seen: dict[int, torch.nn.Module] = {}
    for root in modules:
        for m in root.modules():
            seen.setdefault(id(m), m)
    total = 0
    for m in seen.values():
        total += sum(t.numel() * t.element_size() for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            w, b = m._packed_params._weight_bias()
            total += w.numel() * w.element_size() + w.shape[0] * 16 + (0 if b is None else b.numel() * b.element_size())
    return total / 2**20


def _towers(model: Any) -> list[torch.nn.Module]:
    from benchmarks.models_speed import modules_of

    return modules_of(model)


def measure_accel(preset: str, device: torch.device, accel: str, rounds: int, image_path: Path | None,
                  agreement_images: int = 0) -> dict:
    """One preset: float32 and ``accel`` in this process (see the module docstring)."""
    from benchmarks.evidence import PRESETS, make_evidence, stable_seed
    from benchmarks.models_speed import build
    from benchmarks.speed import frame_and_label

    from dslo.eval.classes import read_class_file
    from dslo.imageio import resize_max_side
    from dslo.models.accel import affinity_cosine
    from dslo.segmenter import Segmenter, list_presets

    p = list_presets()[preset]
    logits_name = p["logits"] or "clip-b16"
    segs, weights = {}, {}
    for variant in ("float32", accel):
        lm, lw = build(logits_name, device)
        am, aw = build(p["attention"], device)
        weights[variant] = f"{logits_name}: {lw}; {p['attention']}: {aw}"
        segs[variant] = Segmenter(lm, am, mode=p["mode"], accel="none" if variant == "float32" else accel)
    image, label, source = frame_and_label(image_path)
    small = resize_max_side(image, segs["float32"].max_side).copy()
    classes = read_class_file("camvid")
    grid_l = segs["float32"].logits_model.grid_for(small.shape[:2])  # type: ignore[union-attr]
    E = make_evidence(label, len(classes), tuple(grid_l), PRESETS["medium"], stable_seed(0, "speed", source)).to(device)

    def pipeline(variant: str, img: np.ndarray):
        seg = segs[variant]
        seg.logits_model.logits(img, classes)  # type: ignore[union-attr]
        return seg.refine(E, img, classes)

    for v in segs:  # warm-up: allocators, kernels, text embeddings
        pipeline(v, small)
    times: dict[str, list[float]] = {v: [] for v in segs}
    agree: list[float] = []
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        img = small.copy()
        img[0, 0, 0] = (r + 1) % 256  # a new image per round: the models memoise the last one by content
        order = list(segs) if r % 2 == 0 else list(segs)[::-1]
        out = {}
        for v in order:
            t0 = time.perf_counter()
            out[v] = pipeline(v, img)
            times[v].append((time.perf_counter() - t0) * 1000)
        agree.append(float((out["float32"].labels == out[accel].labels).mean()))
    load.append(os.getloadavg()[0])
    Ff, Fa = (segs[v].logits_model.dense_features(small) for v in ("float32", accel))  # type: ignore[union-attr]
    feat_cos = float(torch.nn.functional.cosine_similarity(Ff, Fa, dim=-1).mean())
    Af, _ = segs["float32"].attention_model.affinity(small)  # type: ignore[union-attr]
    Aa, _ = segs[accel].attention_model.affinity(small)  # type: ignore[union-attr]
    peaks = {}
    for v in segs:
        with peak_memory(device) as peak:
            pipeline(v, small)
        peaks[v] = peak["peak_mb"]
    med = {v: statistics.median(t) for v, t in times.items()}
    row = {
        "preset": preset, "accel": accel, "logits": logits_name, "attention": p["attention"], "mode": p["mode"],
        "weights": weights["float32"], "image_source": source, "rounds": rounds,
        "ms": {v: [round(x, 1) for x in t] for v, t in times.items()},
        "median_ms": {v: round(m, 1) for v, m in med.items()},
        "images_per_s": {v: round(1000.0 / m, 3) for v, m in med.items()},
        "speedup": round(med["float32"] / med[accel], 3),
        "weights_MB": {v: round(weights_mb(*_towers(s.logits_model), *_towers(s.attention_model)), 1)
                       for v, s in segs.items()},
        "predict_peak_MB": {v: round(x, 1) for v, x in peaks.items()},
        "label_agreement": round(statistics.fmean(agree), 5),
        "affinity_cosine": round(affinity_cosine(Af, Aa), 5),
        "features_cosine": round(feat_cos, 5),
        "load_average": [round(x, 2) for x in load],
        "threads": torch.get_num_threads(),
    }
    if agreement_images:
        row["agreement"] = agreement_over_images(segs, accel, agreement_images, classes, grid_of=segs["float32"])
    return row


def agreement_over_images(segs: dict, accel: str, n: int, classes: list, grid_of: Any) -> dict:
    """Label agreement and affinity-row cosine, float32 vs ``accel``, over ``n`` CamVid test
    images (evenly spaced), the head fed each image's GT-derived medium evidence."""
    from benchmarks.evidence import PRESETS, make_evidence, stable_seed
    from benchmarks.speed import frame_and_label
    from tqdm.auto import tqdm

    from dslo.imageio import resize_max_side
    from dslo.models.accel import affinity_cosine

    folder = DEFAULT_DATA_ROOT / "camvid" / "test"
    paths = sorted(folder.glob("*.png"))
    if not paths:
        return {"images": 0, "note": f"no CamVid test images under {folder}"}
    paths = [paths[i] for i in spaced_subset(len(paths), n)]
    from dslo.classes import normalize_classes

    user = normalize_classes(classes)
    agree, cos = [], []
    for path in tqdm(paths, unit="img", desc="agreement"):
        image, label, source = frame_and_label(path)
        small = resize_max_side(image, grid_of.max_side).copy()
        grid_l = grid_of.logits_model.grid_for(small.shape[:2])
        E = make_evidence(label, len(classes), tuple(grid_l), PRESETS["medium"], stable_seed(0, "speed", source))
        res, aff = {}, {}
        for v in (accel, "float32"):
            aff[v] = segs[v].attention_model.affinity(small)
            res[v] = segs[v]._refine(E, small, small, None, user, user, segs[v].background, affinity=aff[v])
        agree.append(float((res["float32"].labels == res[accel].labels).mean()))
        cos.append(affinity_cosine(aff["float32"][0], aff[accel][0]))
    return {"images": len(paths), "label_agreement_mean": round(statistics.fmean(agree), 5),
            "label_agreement_min": round(min(agree), 5), "affinity_cosine_mean": round(statistics.fmean(cos), 5),
            "affinity_cosine_min": round(min(cos), 5)}
