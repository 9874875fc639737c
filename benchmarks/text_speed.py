"""What a vocabulary costs before the first image: CLIP text embeddings before and after the
persistent cache and the length-sorted encoding, measured in one process, same conditions.

    python -m benchmarks.text_speed [--models clip-b16 clip-l14] [--repeat 3]

Per model (random init from the real config, as in ``speed.py``; the tokenizer is the tiny
byte-level one of ``dslo.testing``, so prompts are longer in tokens than with CLIP's BPE — the
same for every column), the 80 ImageNet templates and two vocabularies: CamVid's 35 names
(its 11 classes' synonyms) and a new 10-class vocabulary:

- ``before``: the encoding of commit e3b485f, verbatim (:func:`encode_before`: batches of 256
  prompts in template order, padded to each batch's longest prompt), once per process;
- ``new vocabulary``: today's :meth:`ClipLogitsModel.text_embeddings` on an empty cache
  (prompts deduplicated, sorted by token length, batched; the result written to the cache);
- ``cached``: a new model object (what a new process holds) reading the on-disk cache.

Each timing is the best of ``--repeat`` runs (the machine is shared: other load only adds time);
the columns are interleaved within each repeat so both see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, atomic_write_text, markdown_table, write_json

NEW_VOCAB = ["giraffe", "umbrella", "kitchen sink", "skateboard", "hot air balloon", "lighthouse",
             "fire hydrant", "sailboat", "cactus", "violin"]


def encode_before(model, texts: list[str]) -> torch.Tensor:
    """``ClipLogitsModel._encode_texts`` + the per-name mean as of commit e3b485f (the baseline)."""
    out = []
    bs = max(1, int(model.settings.text_batch_size))
    with torch.inference_mode():
        for i in range(0, len(texts), bs):
            tok = model.tokenizer(texts[i:i + bs], padding=True, truncation=True,
                                  max_length=model._max_len, return_tensors="pt")
            ids, mask = tok["input_ids"].to(model.device), tok["attention_mask"].to(model.device)
            pooled = model.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
            out.append(torch.nn.functional.normalize(model.model.text_projection(pooled).float(), dim=-1))
    return torch.cat(out)


def before(model, names: list[str]) -> torch.Tensor:
    t = model.settings.templates
    emb = encode_before(model, [tpl.format(n) for n in names for tpl in t]).view(len(names), len(t), -1)
    return torch.nn.functional.normalize(emb.mean(1), dim=-1)


def measure(name: str, repeat: int, n_templates: int = 80) -> list[dict]:
    from benchmarks.models_speed import build

    from dslo.eval.classes import read_class_file

    torch.manual_seed(0)
    model, _ = build(name, torch.device("cpu"))
    if n_templates < len(model.settings.templates):
        model = model.with_settings(templates=model.settings.templates[:n_templates])
    camvid = list(dict.fromkeys(n for g in read_class_file("camvid") for n in g))
    rows = []
    for label, names in (("CamVid (35 names)", camvid), ("new 10 classes", NEW_VOCAB)):
        best = {"before": float("inf"), "new": float("inf"), "cached": float("inf")}
        for _ in range(repeat):
            t0 = time.perf_counter()
            ref = before(model, names)
            best["before"] = min(best["before"], time.perf_counter() - t0)
            os.environ["DSLO_CACHE_DIR"] = tempfile.mkdtemp(prefix="dslo-text-")  # an empty cache
            fresh = model.with_settings()
            t0 = time.perf_counter()
            got = fresh.text_embeddings(names)
            best["new"] = min(best["new"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            cached = model.with_settings().text_embeddings(names)
            best["cached"] = min(best["cached"], time.perf_counter() - t0)
        err = float((got - ref).abs().max())
        if err > 1e-4 or not torch.equal(got, cached):
            raise RuntimeError(f"{name} {label}: embeddings differ from the baseline (max |diff| {err:.2e})")
        rows.append({"model": name, "vocabulary": label, "names": len(names),
                     "prompts": len(names) * len(model.settings.templates),
                     "before_s": round(best["before"], 2), "new_vocabulary_s": round(best["new"], 2),
                     "speedup": round(best["before"] / best["new"], 2), "cached_ms": round(best["cached"] * 1000, 1),
                     "max_abs_diff_vs_before": err})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def render(rows: list[dict], meta: dict) -> str:
    table = markdown_table(
        ["model", "vocabulary", "prompts", "before (s)", "new vocabulary (s)", "speed-up", "cached (ms)"],
        [[r["model"], r["vocabulary"], r["prompts"], f"{r['before_s']:.1f}", f"{r['new_vocabulary_s']:.1f}",
          f"{r['speedup']:.2f}x", f"{r['cached_ms']:.1f}"] for r in rows])
    return (f"<!-- generated by: {meta['command']} -->\n\n"
            f"Text embeddings before the first image, {meta['machine']}; {meta['templates']} templates; random-init text "
            f"towers from the real configs, tiny byte-level tokenizer; best of {meta['repeat']} "
            f"(columns interleaved; load average {meta.get('load_average', 'not recorded')} during the run, the "
            f"benchmark's own two threads included). *before*: the encoding of e3b485f; "
            f"*new vocabulary*: deduplicated, length-sorted batches, empty cache; *cached*: a new model "
            f"object reading the on-disk cache. Embeddings agree with *before* to "
            f"{max(r['max_abs_diff_vs_before'] for r in rows):.1e}.\n\n{table}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["clip-b16"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--templates", type=int, default=80,
                    help="use the first N of the 80 templates (the cost per prompt is what is compared)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "text_speed_cpu.json")
    args = ap.parse_args()
    rows = [r for m in args.models for r in measure(m, args.repeat, args.templates)]
    meta = {"templates": args.templates, "command": "python -m benchmarks.text_speed " + " ".join(sys.argv[1:]),
            "machine": f"cpu ({platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__})",
            "repeat": args.repeat, "load_average": round(os.getloadavg()[0], 1)}
    write_json(args.out, {"meta": meta, "rows": rows})
    md = render(rows, meta)
    atomic_write_text(args.out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
