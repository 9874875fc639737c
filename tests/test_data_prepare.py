"""`dslo data prepare` against the reference converters' own output (tests/data_fixtures/prepare,
made by running MMSegmentation's, SCLIP's and cityscapesscripts' code unmodified; see its README),
byte for byte, and `dslo eval` on what it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import DATA, needs_data_dirs
from PIL import Image

from dslo.cli import main as cli_main
from dslo.data import SOURCES, prepare
from dslo.data.convert import (
    COCO_OBJECT_LUT,
    COCO_STUFF_LUT,
    context_mask,
    cityscapes_task,
)

FIXTURES = Path(__file__).resolve().parent / "data_fixtures" / "prepare"
EXPECTED = sorted(p.relative_to(FIXTURES / "expected") for p in (FIXTURES / "expected").rglob("*") if p.is_file())


@pytest.fixture
def raw_root(tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(FIXTURES / "raw", root)
    return root


def test_the_fixtures_are_intact():
    lines = (FIXTURES / "SHA256SUMS").read_text().split("\n")
    from dslo.hashing import file_digest

    for line in filter(None, lines):
        digest, rel = line.split(maxsplit=1)
        assert file_digest(FIXTURES / rel) == digest, rel
    assert len(EXPECTED) == 15


def test_prepare_equals_the_reference_converters_byte_for_byte(raw_root):
    reports = prepare(["coco", "context", "cityscapes"], raw_root, workers=1, progress=False, log=lambda m: None)
    assert [r.source for r in reports] == ["context", "coco", "cityscapes"]
    assert [r.converted for r in reports] == [5, 3, 2]
    for rel in EXPECTED:
        ours = (raw_root / rel).read_bytes()
        assert ours == (FIXTURES / "expected" / rel).read_bytes(), f"{rel} differs from the reference's"
    # Nothing else was written beside the reference's outputs (the test image is not converted).
    made = {p.relative_to(raw_root) for p in raw_root.rglob("*") if p.is_file()}
    raw = {p.relative_to(FIXTURES / "raw") for p in (FIXTURES / "raw").rglob("*") if p.is_file()}
    assert made - raw == set(EXPECTED)


def test_the_fixtures_exercise_every_id():
    """What the byte comparison covers: all 256 raw COCO values, all 60 Context labels, all 34
    Cityscapes ids (so every entry of each table is compared against the reference)."""
    coco = np.array(Image.open(FIXTURES / "raw/coco_stuff164k/annotations/val2017/000000000139.png"))
    assert sorted(np.unique(coco)) == list(range(256))
    ctx = set()
    for p in (FIXTURES / "expected/VOCdevkit/VOC2010/SegmentationClassContext").glob("*.png"):
        ctx |= set(np.unique(np.array(Image.open(p))).tolist())
    assert ctx == set(range(60))
    ids = set()
    for p in (FIXTURES / "raw/cityscapes/gtFine").rglob("*_labelIds.png"):
        ids |= set(np.unique(np.array(Image.open(p))).tolist())
    assert ids == set(range(34))


def test_the_coco_tables_keep_the_references_quirks():
    # 171 classes packed in order, 255 kept; an unused id (11) keeps its value in both tables.
    assert COCO_STUFF_LUT[12] == 11 and COCO_STUFF_LUT[181] == 170 and COCO_STUFF_LUT[255] == 255
    assert COCO_STUFF_LUT[11] == 11 and COCO_OBJECT_LUT[11] == 11
    # COCO-Object: things shifted by one, stuff and unlabeled (255) become background 0.
    assert COCO_OBJECT_LUT[0] == 1 and COCO_OBJECT_LUT[89] == 80 and COCO_OBJECT_LUT[91] == 0
    assert COCO_OBJECT_LUT[255] == 0 and COCO_OBJECT_LUT[200] == 200


def test_prepare_is_idempotent_and_resumes(raw_root):
    quiet = {"workers": 1, "progress": False, "log": lambda m: None}
    prepare(["coco", "context", "cityscapes"], raw_root, **quiet)
    outputs = [raw_root / rel for rel in EXPECTED]
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    again = prepare(["coco", "context", "cityscapes"], raw_root, **quiet)
    assert [r.converted for r in again] == [0, 0, 0] and [r.skipped for r in again] == [5, 3, 2]
    assert stamps == {p: p.stat().st_mtime_ns for p in outputs}
    # An interrupted run (one output missing) converts only that one, to the same bytes.
    lost = raw_root / "coco_stuff164k/annotations/val2017/000000000285_instanceTrainIds.png"
    lost.unlink()
    rep = prepare(["coco_object"], raw_root, **quiet)[0]
    assert rep.converted == 1 and rep.skipped == 2
    assert lost.read_bytes() == (FIXTURES / "expected" / lost.relative_to(raw_root)).read_bytes()
    assert prepare(["coco"], raw_root, force=True, **quiet)[0].converted == 3


def test_prepare_in_two_processes_writes_the_same_files(raw_root):
    # Enough maps for the process pool (small jobs run inline): copies of the raw COCO maps.
    ann = raw_root / "coco_stuff164k/annotations/val2017"
    for i in range(12):
        shutil.copy(ann / "000000000139.png", ann / f"{900000000000 + i}.png")
    rep = prepare(["coco"], raw_root, workers=2, progress=False, log=lambda m: None)[0]
    assert rep.converted == 15
    ref = (FIXTURES / "expected/coco_stuff164k/annotations/val2017/000000000139_labelTrainIds.png").read_bytes()
    for i in range(12):
        assert (ann / f"{900000000000 + i}_labelTrainIds.png").read_bytes() == ref


def test_the_count_check_names_what_is_missing(raw_root):
    rep = prepare(["coco"], raw_root, workers=1, progress=False, log=lambda m: None)[0]
    assert rep.counts == {"coco_object": 3, "coco_stuff": 3} and not rep.ok
    assert any("coco_stuff (val): 3 image/label pairs of the benchmark's 5000, 4997 missing" in p
               for p in rep.problems)
    (raw_root / "coco_stuff164k/annotations/val2017/000000000139_labelTrainIds.png").unlink()
    rep = SimpleNamespace(counts={}, problems=[])
    from dslo.data import check_counts

    check_counts(SOURCES["coco"], raw_root, rep)
    assert rep.counts["coco_stuff"] is None
    assert any("000000000139_labelTrainIds.png" in p for p in rep.problems), rep.problems


def test_bad_inputs_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"category ids \[7\] are not among the 59"):
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.asfortranarray(np.ones((2, 3), np.uint8)))
        context_mask(2, 3, [(7, rle)], where="x.png")
    Image.fromarray(np.full((4, 4), 40, np.uint8)).save(tmp_path / "a_gtFine_labelIds.png")
    with pytest.raises(ValueError, match=r"values \[40\] are not Cityscapes label ids"):
        cityscapes_task(str(tmp_path / "a_gtFine_labelIds.png"), str(tmp_path / "out.png"))
    with pytest.raises(RuntimeError, match="run `dslo data download coco"):
        prepare(["coco"], tmp_path / "empty", workers=1, progress=False, log=lambda m: None)


class _Painter:
    """Stands in for create_segmenter: predicts a fixed rule (the real model path is tested in
    test_eval_cli.py); here only the data path matters."""

    def __call__(self, preset, device="auto", **kw):
        return self

    def predict(self, image, classes, background=None):
        labels = (np.asarray(image)[..., 0].astype(np.int64) // 16) % len(classes)
        return SimpleNamespace(labels=labels, class_names=[c[0] for c in classes])

    def settings(self):
        return {"preset": "painter", "mode": "mv", "head": {}}


def test_dslo_eval_runs_on_what_prepare_writes(raw_root, tmp_path, monkeypatch, capsys):
    import dslo.segmenter

    # The fixtures' COCO maps hold every byte value (ids real maps never have, which dslo eval
    # rightly refuses): here two maps with what real ones hold, the 171 used ids and 255.
    ann, img = raw_root / "coco_stuff164k/annotations/val2017", raw_root / "coco_stuff164k/images/val2017"
    for p in [*ann.glob("*.png"), *img.glob("*.jpg")]:
        p.unlink()
    from dslo.data.convert import _COCO_USED

    rng = np.random.default_rng(0)
    for stem in ("000000000139", "000000000285"):
        Image.fromarray(rng.choice([*_COCO_USED, 255], size=(20, 24)).astype(np.uint8)).save(ann / f"{stem}.png")
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(img / f"{stem}.jpg")
    assert cli_main(["data", "prepare", "coco", "context", "cityscapes", "--root", str(raw_root),
                     "--workers", "1", "-q"]) == 1  # the count check: these are not the full splits
    err = capsys.readouterr().err
    assert "context60 (val): 3 image/label pairs of the benchmark's 5104, 5101 missing" in err
    monkeypatch.setattr(dslo.segmenter, "create_segmenter", _Painter())
    for name, images in (("coco_stuff", 2), ("coco_object", 2), ("context60", 3), ("context59", 3),
                         ("cityscapes", 1)):
        out = tmp_path / "runs" / name
        assert cli_main(["eval", "--dataset", name, "--data-root", str(raw_root), "--output", str(out),
                         "--model", "offline", "--logits", "x", "--attention", "focus-s14",
                         "--device", "cpu", "-q"]) == 0, name
        report = json.loads((out / "report.json").read_text())
        assert report["images"] == images and 0.0 <= report["miou"] <= 100.0


@needs_data_dirs("fixtures")
def test_prepare_checks_the_data_sets_that_need_no_conversion(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(DATA / "fixtures", root)
    reports = prepare(["voc", "ade20k"], root, workers=1, progress=False, log=lambda m: None)
    voc, ade = reports
    assert "nothing to convert" in voc.note and voc.counts == {"voc21": 4, "voc20": 4}
    assert ade.counts == {"ade20k": 3}
    assert any("1445 missing" in p for p in voc.problems) and any("1997 missing" in p for p in ade.problems)
