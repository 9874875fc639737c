"""Writing results: ``report.json`` (numbers + protocol) and a markdown table with the protocol
printed next to the numbers; Table-1-style rows for several benchmarks."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dslo.eval.datasets import BENCHMARKS, DATASETS
from dslo.outputs import atomic_write_text


def fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def protocol_line(protocol: dict[str, Any]) -> str:
    """One line that says how a number was obtained."""
    m = protocol.get("model", {})
    ms = protocol.get("model_settings") or {}
    bg = protocol.get("background", {})
    bg_text = bg.get("policy", "none")
    if bg_text == "threshold":
        bg_text += f" {bg.get('threshold')}"
    elif bg_text == "class":
        names = bg.get("names", [])
        bg_text += f" ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})"
    r = protocol.get("resize", {})
    att = (ms.get("attention_model") or {}).get("settings") or {}
    att_keys = ("resolution", "short_side", "timestep", "layers", "layer_weights", "dtype")
    att_text = ", ".join(f"{k}={att[k]}" for k in att_keys if k in att)
    head = ms.get("head", {})
    head_text = ", ".join(f"{k}={head[k]}" for k in sorted(head)) if head else "defaults"
    return (
        f"preset {m.get('preset')} · logits {ms.get('logits', m.get('logits'))} · attention "
        f"{ms.get('attention', m.get('attention'))}{f' ({att_text})' if att_text else ''} · mode {ms.get('mode', '?')} · CLIP short side "
        f"{r.get('logits_short_side')} (aspect kept, whole image) · max side {r.get('max_side')} · "
        f"background {bg_text} · classes {protocol.get('class_file')} "
        f"(sha256 {str(protocol.get('class_file_sha256'))[:12]}) · reduce_zero_label "
        f"{protocol.get('reduce_zero_label')} · split {protocol.get('split')}, "
        f"{protocol.get('images')} images · head: {head_text}"
        + _method_text(protocol.get("method"))
    )


def _method_text(rec: dict[str, Any] | None) -> str:
    """What a peer method's published numbers used that this whole-image run does not."""
    if not rec:
        return ""
    slide = rec.get("sliding_window")
    used = []
    if isinstance(slide, dict):
        used.append(f"sliding window {slide['crop']}/{slide['stride']}")
    if rec.get("pamr"):
        used.append("PAMR")
    if rec.get("short_side") is None:
        pub = "no published protocol for this benchmark"
    elif used:
        pub = f"its published numbers used {' and '.join(used)}"
    else:
        pub = "its published protocol is whole-image"
    here = "PAMR" if (rec.get("this_run") or {}).get("pamr") else "no PAMR"
    return f" · method {rec.get('method')} ({pub}; this run: whole image, {here})"


def report_markdown(report: dict[str, Any]) -> str:
    title = DATASETS[report["dataset"]].title if report["dataset"] in DATASETS else report["dataset"]
    lines = [
        f"# {title}: mIoU {fmt(report['miou'])}",
        "",
        f"mIoU **{fmt(report['miou'])}** · aAcc {fmt(report['aacc'])} · mAcc {fmt(report.get('macc'))} "
        f"· {report['images']} images ({report['split']})",
        "",
        f"Protocol: {protocol_line(report['protocol'])}",
        "",
        "| class | IoU |",
        "|---|---|",
    ]
    lines += [f"| {name} | {fmt(v)} |" for name, v in report["per_class"].items()]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out / "report.md", report_markdown(report))


def table_rows(reports: dict[str, dict | None], model_label: str, names: Sequence[str] = BENCHMARKS) -> str:
    """Markdown table in the paper's Table 1 layout; missing benchmarks show ``–`` and the average
    is over the benchmarks present (marked when some are missing)."""
    head = "| Model | " + " | ".join(DATASETS[n].title for n in names) + " | Avg. |"
    sep = "|" + "---|" * (len(names) + 2)
    vals = [r["miou"] if (r := reports.get(n)) else None for n in names]
    got = [v for v in vals if v is not None]
    avg = fmt(sum(got) / len(got)) if got else "–"
    if got and len(got) < len(names):
        avg += f" ({len(got)}/{len(names)})"
    row = f"| {model_label} | " + " | ".join(fmt(v) for v in vals) + f" | {avg} |"
    return "\n".join([head, sep, row]) + "\n"
