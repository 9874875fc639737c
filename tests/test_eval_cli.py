"""`dslo eval` end to end on real images with a tiny random CLIP and the offline focus-s14
attention: the numbers are meaningless, the code path is the real one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DATA, needs_data  # noqa: E402

from dslo.cli import main as cli_main


@pytest.fixture(scope="module")
def tiny_clip(clip_dir):
    return clip_dir


def _eval_args(dataset, root, out, clip, *extra):
    return ["eval", "--dataset", dataset, "--data-root", str(root), "--output", str(out),
            "--model", "offline", "--logits", str(clip), "--attention", "focus-s14",
            "--device", "cpu", "-q", *extra]


@needs_data
def test_eval_camvid_end_to_end_and_resume(tmp_path, tiny_clip, capsys):
    out = tmp_path / "camvid"
    assert cli_main(_eval_args("camvid", DATA / "camvid", out, tiny_clip, "--limit", "2")) == 0
    first = json.loads((out / "report.json").read_text())
    assert first["images"] == 2 and first["run"]["predicted"] == 2
    assert 0.0 <= first["miou"] <= 100.0 and len(first["per_class"]) == 11
    settings = first["protocol"]["model_settings"]
    assert settings["attention"] == "focus-s14" and settings["mode"] == "mv"
    assert settings["logits_model"]["settings"]["short_side"] == 336
    assert "nms_threshold" in settings["head"]
    preds = sorted((out / "pred").glob("*.png"))
    assert [p.stem for p in preds] == ["0001TP_008550", "0001TP_008580"]
    stamp = {p: p.stat().st_mtime_ns for p in preds}
    assert "CamVid: mIoU" in capsys.readouterr().out

    # Second run: nothing predicted, no model loaded, identical numbers.
    assert cli_main(_eval_args("camvid", DATA / "camvid", out, tiny_clip, "--limit", "2")) == 0
    assert "2 cached" in capsys.readouterr().out
    second = json.loads((out / "report.json").read_text())
    assert second["run"]["predicted"] == 0 and second["run"]["cached"] == 2
    for key in ("miou", "aacc", "per_class", "iou"):
        assert second[key] == first[key]
    assert stamp == {p: p.stat().st_mtime_ns for p in preds}

    # The cached masks are what `dslo score` reads: the same numbers again.
    assert cli_main(["score", "--dataset", "camvid", "--data-root", str(DATA / "camvid"),
                     "--pred", str(out / "pred"), "--limit", "2", "-q"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["miou"] == pytest.approx(first["miou"]) and scored["aacc"] == pytest.approx(first["aacc"])


class _Recorder:
    """Stands in for create_segmenter in the `all` test: records how each segmenter was asked
    for and predicts a colour rule (the real model path is covered by the CamVid test above)."""

    def __init__(self):
        self.created = []

    def __call__(self, preset, device="auto", **kw):
        self.created.append(kw)
        return self

    def predict(self, image, classes, background=None):
        from types import SimpleNamespace

        labels = (np.asarray(image)[..., 0].astype(np.int64) // 16) % len(classes)
        return SimpleNamespace(labels=labels, class_names=[c[0] for c in classes])

    def settings(self):
        return {"preset": "recorder", "mode": "mv", "head": {}}


@needs_data
def test_eval_all_runs_what_is_on_disk_and_writes_the_table(tmp_path, monkeypatch, capsys):
    import dslo.segmenter

    rec = _Recorder()
    monkeypatch.setattr(dslo.segmenter, "create_segmenter", rec)
    # The fixtures hold VOC, ADE20K and Cityscapes; Context and COCO are absent and reported.
    code = cli_main(_eval_args("all", DATA / "fixtures", tmp_path, "clip-dir",
                               "--attention-option", "short_side=224", "--set", "nms_threshold=0.6"))
    assert code == 1  # some benchmarks were missing
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["skipped"]) == {"context60", "context59", "coco_object", "coco_stuff"}
    assert {n for n, r in summary["results"].items() if r} == {"voc21", "voc20", "cityscapes", "ade20k"}
    assert summary["results"]["voc21"]["images"] == 4 and summary["results"]["ade20k"]["images"] == 3
    # One segmenter per resize setting: 336/1024 for VOC and ADE20K, 560/1120 for Cityscapes.
    assert sorted((kw["logits_options"]["short_side"], kw["max_side"]) for kw in rec.created) == [
        (336, 1024), (560, 1120)]
    assert all(kw["logits"] == "clip-dir" and kw["attention"] == "focus-s14" for kw in rec.created)
    assert all(kw["attention_options"] == {"short_side": 224} and kw["nms_threshold"] == 0.6 for kw in rec.created)
    city = json.loads((tmp_path / "cityscapes" / "report.json").read_text())
    assert city["protocol"]["resize"] == {"logits_short_side": 560, "keep_ratio": True,
                                          "sliding_window": False, "max_side": 1120}
    voc = json.loads((tmp_path / "voc21" / "report.json").read_text())
    assert voc["protocol"]["model"]["overrides"] == {"attention_options": {"short_side": 224}, "nms_threshold": 0.6}
    assert voc["protocol"]["background"]["policy"] == "class"
    assert voc["protocol"]["background"]["names"][:3] == ["sky", "wall", "tree"]
    assert json.loads((tmp_path / "voc20" / "report.json").read_text())["protocol"]["background"]["policy"] == "ignored"
    table = (tmp_path / "table.md").read_text()
    assert table.splitlines()[0].startswith("| Model | VOC21 | Context60 | COCO-Object |")
    ran = [json.loads((tmp_path / n / "report.json").read_text())["miou"] for n in ("voc21", "voc20", "cityscapes", "ade20k")]
    assert f"| {sum(ran) / 4:.2f} (4/8) |" in table and f"{voc['miou']:.2f}" in table
    assert table in capsys.readouterr().out
