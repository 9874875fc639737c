"""The evaluation loop (cache, resume, sharding, merge) with a small fake segmenter, and
`dslo score` on ground truth against itself and against a corrupted copy."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import DATA, needs_data  # noqa: E402

from dslo.cli import main as cli_main
from dslo.eval.datasets import get_dataset
from dslo.eval.protocol import eval_request
from dslo.eval.runner import (
    PRED_DIR,
    Shard,
    dataset_classes,
    evaluate,
    run_shard,
    wait_for_predictions,
)
from dslo.eval.scoring import prediction_path, read_prediction, score_predictions, write_prediction


@dataclass
class _Result:
    labels: np.ndarray
    class_names: list


class FakeSegmenter:
    """Deterministic stand-in with Segmenter.predict's signature: a pixel's class from its colour."""

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def predict(self, image, classes, background=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # a run killed halfway
        self.calls += 1
        k = len(classes)
        img = np.asarray(image).astype(np.int64)
        labels = (img[..., 0] * 7 + img[..., 1] * 3 + img[..., 2]) // 97 % k
        return _Result(labels=labels, class_names=[c[0] for c in classes])

    def settings(self):
        return {"preset": "fake", "mode": "mv", "head": {"theta": 0.5}}


def _camvid():
    return get_dataset("camvid", DATA / "camvid")


def _request(ds):
    return eval_request(ds, model="fake")


@needs_data
def test_evaluate_writes_report_and_resumes_without_new_work(tmp_path):
    ds = _camvid()
    seg = FakeSegmenter()
    made = []

    def make():
        made.append(1)
        return seg

    r1 = evaluate(ds, tmp_path, make, _request(ds), limit=5, shard=Shard(), progress=False)
    assert seg.calls == 5 and len(made) == 1
    saved = json.loads((tmp_path / "report.json").read_text())
    assert {"miou", "aacc", "per_class", "protocol"} <= set(saved)
    assert list(saved["per_class"]) == ds.class_names
    assert saved["protocol"]["resize"]["logits_short_side"] == 336
    assert saved["protocol"]["background"] == {"policy": "none"}
    assert saved["run"]["predicted"] == 5 and saved["images"] == 5
    assert (tmp_path / "report.md").read_text().startswith("# CamVid: mIoU")
    # The cached predictions score to the same numbers through the independent scoring path.
    again = score_predictions(ds, tmp_path / PRED_DIR, ds.samples[:5])
    assert again["miou"] == pytest.approx(r1["miou"]) and again["aacc"] == pytest.approx(r1["aacc"])

    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for f in (tmp_path / "report.json", prediction_path(tmp_path / PRED_DIR, ds.samples[0].stem)):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    assert read_prediction(prediction_path(tmp_path / PRED_DIR, ds.samples[0].stem)).shape == (360, 480)

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / PRED_DIR).iterdir()}
    r2 = evaluate(ds, tmp_path, make, _request(ds), limit=5, shard=Shard(), progress=False)
    assert len(made) == 1 and seg.calls == 5  # no model built, nothing predicted
    assert r2["run"]["predicted"] == 0 and r2["run"]["cached"] == 5
    assert {k: r2[k] for k in ("miou", "aacc", "per_class")} == {k: r1[k] for k in ("miou", "aacc", "per_class")}
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / PRED_DIR).iterdir()}


@needs_data
def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    ds = _camvid()
    with pytest.raises(KeyboardInterrupt):
        evaluate(ds, tmp_path, lambda: FakeSegmenter(fail_after=3), _request(ds), limit=6, progress=False)
    assert len(list((tmp_path / PRED_DIR).glob("*.png"))) == 3
    assert not list((tmp_path / PRED_DIR).glob(".*"))  # no half-written files left behind
    seg = FakeSegmenter()
    r = evaluate(ds, tmp_path, lambda: seg, _request(ds), limit=6, progress=False)
    assert seg.calls == 3 and r["run"]["predicted"] == 3 and r["images"] == 6


@needs_data
def test_different_settings_refuse_the_cache(tmp_path):
    ds = _camvid()
    evaluate(ds, tmp_path, FakeSegmenter, _request(ds), limit=2, progress=False)
    other = eval_request(ds, model="fake", overrides={"mode": "op"})
    with pytest.raises(ValueError, match="different settings.*model"):
        evaluate(ds, tmp_path, FakeSegmenter, other, limit=2, progress=False)


def test_prediction_files_round_trip_8_and_16_bit(tmp_path):
    small = np.array([[0, 1], [255, 7]])
    large = np.array([[0, 300], [65535, 7]])
    np.testing.assert_array_equal(read_prediction(write_prediction(tmp_path / "a.png", small)), small)
    np.testing.assert_array_equal(read_prediction(write_prediction(tmp_path / "b.png", large)), large)
    with pytest.raises(ValueError, match="0..65535"):
        write_prediction(tmp_path / "c.png", np.array([[-1]]))


def test_shards_partition_the_samples():
    items = list(range(10))
    parts = [Shard(r, 3).select(items) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[0] == [0, 3, 6, 9]
    assert Shard.from_env({"RANK": "2", "WORLD_SIZE": "4"}) == Shard(2, 4)
    assert Shard.from_env({}) == Shard(0, 1)
    with pytest.raises(ValueError):
        Shard(3, 3)


@needs_data
def test_simulated_data_parallel_run_equals_single_process(tmp_path):
    ds = _camvid()
    single = evaluate(ds, tmp_path / "one", FakeSegmenter, _request(ds), limit=7, progress=False)

    out = tmp_path / "ddp"
    world = 3
    segs = [FakeSegmenter() for _ in range(world)]
    # Rank 0 starts first and must wait for ranks 1 and 2 (run concurrently in threads).
    result = {}
    t0 = threading.Thread(target=lambda: result.update(r=evaluate(
        ds, out, lambda: segs[0], _request(ds), limit=7, shard=Shard(0, world), progress=False)))
    t0.start()
    for rank in (1, 2):
        assert evaluate(ds, out, lambda r=rank: segs[r], _request(ds), limit=7,
                        shard=Shard(rank, world), progress=False) is None
    t0.join(timeout=60)
    merged = result["r"]
    assert [s.calls for s in segs] == [3, 2, 2]  # strided shards: 0,3,6 | 1,4 | 2,5
    assert merged["miou"] == pytest.approx(single["miou"]) and merged["per_class"] == single["per_class"]
    assert merged["run"]["world_size"] == 3 and merged["run"]["predicted"] == 7
    for s in ds.samples[:7]:
        np.testing.assert_array_equal(read_prediction(prediction_path(out / PRED_DIR, s.stem)),
                                      read_prediction(prediction_path(tmp_path / "one" / PRED_DIR, s.stem)))


@needs_data
def test_rank0_times_out_when_a_rank_never_finishes(tmp_path):
    ds = _camvid()
    run_shard(ds, tmp_path, FakeSegmenter, _request(ds), limit=4, shard=Shard(0, 2), progress=False)
    with pytest.raises(TimeoutError, match="2 predictions still missing"):
        wait_for_predictions(tmp_path / PRED_DIR, ds.samples[:4], timeout=0.2, poll=0.05)


@needs_data
def test_threshold_background_prompts_the_object_classes_only():
    ds = get_dataset("coco_object", DATA / "coco_object")
    classes, bg = dataset_classes(ds, 0.5)
    assert bg == 0.5 and len(classes) == 80 and classes[0][0] == "person"
    classes, bg = dataset_classes(ds, None)
    assert bg == "none" and len(classes) == 81
    req = eval_request(ds, model="x", background_threshold=0.5)
    assert req["background"]["policy"] == "threshold"
    with pytest.raises(ValueError, match="no background class"):
        eval_request(_camvid(), model="x", background_threshold=0.5)


@needs_data
def test_score_cli_ground_truth_and_corrupted_copy(tmp_path, capsys):
    ds = _camvid()
    samples = ds.samples[:5]
    gt_dir, bad_dir = tmp_path / "gt", tmp_path / "bad"
    labels = [s.load_label() for s in samples]
    for s, lab in zip(samples, labels, strict=False):
        write_prediction(gt_dir / f"{s.stem}.png", lab)
    out = tmp_path / "gt.json"
    args = ["score", "--dataset", "camvid", "--data-root", str(DATA / "camvid"), "--limit", "5", "-q"]
    assert cli_main(args + ["--pred", str(gt_dir), "--output", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["miou"] == 100.0 and r["aacc"] == 100.0 and r["images"] == 5
    assert set(r["per_class"]) == set(ds.class_names)

    # Corrupt: every car pixel (8) of the first image predicted as road (3).
    car, road = 8, 3
    stacked = np.concatenate([lab.ravel() for lab in labels])
    n = int((labels[0] == car).sum())
    car_total, road_total = int((stacked == car).sum()), int((stacked == road).sum())
    labelled = int((stacked != 255).sum())
    assert n > 0
    for i, (s, lab) in enumerate(zip(samples, labels, strict=False)):
        write_prediction(bad_dir / f"{s.stem}.png", np.where(lab == car, road, lab) if i == 0 else lab)
    assert cli_main(args + ["--pred", str(bad_dir)]) == 0
    r = json.loads(capsys.readouterr().out)
    iou_car = (car_total - n) / car_total * 100
    iou_road = road_total / (road_total + n) * 100
    present = sorted(set(np.unique(stacked).tolist()) - {255})
    expected = (100.0 * (len(present) - 2) + iou_car + iou_road) / len(present)
    assert r["per_class"]["car"] == pytest.approx(iou_car)
    assert r["per_class"]["road"] == pytest.approx(iou_road)
    assert r["miou"] == pytest.approx(expected)
    assert r["aacc"] == pytest.approx((labelled - n) / labelled * 100)


@needs_data
def test_score_cli_reports_missing_predictions(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    code = cli_main(["score", "--dataset", "camvid", "--data-root", str(DATA / "camvid"),
                     "--pred", str(tmp_path / "p"), "-q"])
    assert code == 1
    assert "233 of 233 predictions missing" in capsys.readouterr().err


class BatchingFakeSegmenter(FakeSegmenter):
    def __init__(self):
        super().__init__()
        self.batches = []

    def predict_batch(self, images, classes, background=None):
        self.batches.append(len(images))
        return [self.predict(im, classes, background) for im in images]


@needs_data
def test_batch_size_gives_the_same_predictions_and_report(tmp_path):
    ds = _camvid()
    one = evaluate(ds, tmp_path / "one", FakeSegmenter, _request(ds), limit=7, progress=False)
    seg = BatchingFakeSegmenter()
    three = evaluate(ds, tmp_path / "three", lambda: seg, _request(ds), limit=7, progress=False, batch_size=3)
    assert seg.batches == [3, 3] and seg.calls == 7  # the last, single image goes through predict
    assert {k: three[k] for k in ("miou", "aacc", "per_class")} == {k: one[k] for k in ("miou", "aacc", "per_class")}
    for s in ds.samples[:7]:
        assert np.array_equal(read_prediction(prediction_path(tmp_path / "one" / PRED_DIR, s.stem)),
                              read_prediction(prediction_path(tmp_path / "three" / PRED_DIR, s.stem)))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(ds, tmp_path / "bad", FakeSegmenter, _request(ds), limit=1, progress=False, batch_size=0)
