"""The parts of `dslo segment --engine ray` that need no Ray: URI inputs and outputs, list files,
resume by listing, parquet rows, the driver-side text embeddings and the missing-Ray message.
The Ray runs themselves are in test_scale_ray.py."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from standins import ColourAffinity, ColourLogits, colour_picture
from standins import file_tree as _tree

from dslo.cli import main
from dslo.outputs import atomic_write_bytes, decode_rle, write_result
from dslo.engines import plan
from dslo.engines.ray import parquet
from dslo.engines.ray.vocabulary import query_names, vocabulary_embeddings
from dslo.inputs import discover
from dslo.request import ModelChoice, SegmentRequest
from dslo.segmenter import Segmenter


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


def _inputs(root: Path) -> Path:
    img, _ = colour_picture()
    for rel in ("a.png", "sub/b.png", "sub/c.jpg", "sub/c.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel)
    (root / "notes.txt").write_text("not an image")
    return root


def test_uri_inputs_keep_relative_paths_and_list_files_expand(tmp_path):
    root = _inputs(tmp_path / "in")
    items, errors = discover([_uri(root)])
    assert not errors
    assert {it.stem: it.name for it in items} == {
        "a": _uri(root / "a.png"), "sub/b": _uri(root / "sub/b.png"),
        # same stem, two suffixes: the local engine's rule keeps the suffix
        "sub/c.jpg": _uri(root / "sub/c.jpg"), "sub/c.png": _uri(root / "sub/c.png"),
    }
    # a list file: relative lines are relative to it, URIs and folders as on the command line
    lst = tmp_path / "inputs.txt"
    lst.write_text(f"# photos\nin/a.png\n\n{_uri(root / 'sub')}\n")
    items, errors = discover([str(lst)])
    assert not errors
    assert sorted(it.stem for it in items) == ["a", "b", "c.jpg", "c.png"]
    assert [it.source for it in items if it.stem == "a"] == [str((tmp_path / "in" / "a.png").resolve())]

    _, errors = discover([_uri(tmp_path / "missing")])
    assert errors and "no such file or folder" in errors[0]


def test_uri_output_is_byte_identical_to_a_folder(tmp_path, fake_models):  # noqa: F811
    """Any output location pyarrow writes gets the same bytes, through the same writer."""
    root = _inputs(tmp_path / "in")
    common = [str(root), "--classes", "red, green, blue", "-q", "--save", "mask,overlay,json"]
    assert main(["segment", *common, "-o", str(tmp_path / "a")]) == 0
    assert main(["segment", *common, "-o", _uri(tmp_path / "b")]) == 0
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b") and len(_tree(tmp_path / "a")) == 12
    for rel in _tree(tmp_path / "a"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    # resume reads the URI too
    assert main(["segment", *common, "-o", _uri(tmp_path / "b")]) == 0
    assert len(fake_models) == 2  # the third run loaded no model


def test_atomic_uri_write_leaves_no_temporary_file(tmp_path):
    atomic_write_bytes(_uri(tmp_path / "x" / "y.bin"), b"abc")
    assert (tmp_path / "x" / "y.bin").read_bytes() == b"abc"
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["y.bin"]


def test_resume_comes_from_one_listing_and_reads_only_what_exists(tmp_path, monkeypatch):
    root = _inputs(tmp_path / "in")
    items, _ = discover([str(root)])
    out = tmp_path / "out"
    record = {"command": "segment", "classes": [["red"]]}
    res = _result()
    write_result(res, out, "a", ("mask", "json"), image_name="a.png", request=record)
    write_result(res, out, "sub/b", ("mask",), image_name="b.png", request=record)  # b lacks its JSON
    read = []
    real = plan.read_request_id
    monkeypatch.setattr(plan, "read_request_id", lambda p: read.append(str(p)) or real(p))

    def done(location, kinds, rec=record):
        return {it.stem for it in plan.plan_resume(items, location, kinds, rec, overwrite=False).done}

    assert done(out, ("mask", "json")) == {"a"}
    assert sorted(Path(p).name for p in read) == ["a.json", "a.png", "b.png"]  # only existing outputs
    assert done(_uri(out), ("mask",)) == {"a", "sub/b"}  # a's JSON: the same request's, not stale
    assert done(_uri(out), ("mask", "json")) == {"a"}
    assert done(tmp_path / "nothing", ("mask",)) == set()
    stale = plan.plan_resume(items, out, ("mask", "json"), {"command": "other"}, overwrite=False)
    assert {it.stem for it in stale.stale} == {"a", "sub/b"} and "command" in stale.stale_reason


def _result():
    img, _ = colour_picture()
    seg = Segmenter(ColourLogits(), ColourAffinity(), mode="mv", max_side=None,
                    info={"preset": "test"})
    return seg.predict(img, "red, green, blue")


def test_parquet_rows_hold_the_json_segments(tmp_path):
    res = _result()
    writer = parquet.PartWriter(tmp_path, rows_per_file=2)
    for i in range(3):
        writer.add(parquet.record(res, f"img{i}.png", f"d/img{i}"))
    writer.flush()
    parts = parquet.part_files(tmp_path, plan.existing_files(tmp_path))
    assert len(parts) == 2 == len(writer.written)
    assert parquet.read_stems(parts) == {"d/img0", "d/img1", "d/img2"}

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path, schema=parquet.schema())
    assert table.num_rows == 3
    row = table.to_pylist()[0]
    write_result(res, tmp_path / "files", "x", ["json"], image_name=row["image"])
    doc = json.loads((tmp_path / "files" / "x.json").read_text())
    assert row["classes"] == doc["classes"] and json.loads(row["model"]) == doc["model"]
    assert (row["height"], row["width"]) == res.labels.shape
    labels = np.full(res.labels.shape, -1)
    for s in row["segments"]:
        m = decode_rle({"size": [row["height"], row["width"]], "counts": s["counts"]})
        assert m.sum() == s["area"]
        labels[m] = s["class_id"]
    assert np.array_equal(labels, res.labels)


def test_missing_ray_fails_at_once_with_the_install_command(tmp_path, fake_models, monkeypatch,  # noqa: F811
                                                           capsys):
    root = _inputs(tmp_path / "in")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["segment", str(root), "--classes", "red", "-o", str(tmp_path / "o"), "--engine", "ray"])
    assert code == 1
    assert 'pip install "dslo[ray]"' in capsys.readouterr().err
    assert not fake_models and not (tmp_path / "o").exists()


def test_parquet_needs_the_ray_engine(tmp_path, capsys):
    root = _inputs(tmp_path / "in")
    assert main(["segment", str(root), "--classes", "red", "-o", str(tmp_path / "o"),
                 "--format", "parquet"]) == 1
    assert "--format parquet needs --engine ray" in capsys.readouterr().err


def test_driver_embeddings_spare_the_workers_text_tower(clip_dir):
    """The vocabulary embedded once (the driver) and injected (a worker) gives the same logits
    as a model that embeds it itself, and the injected model's text tower never runs."""
    from dslo.models import create_logits_model
    clip = clip_dir
    classes = [["road", "street"], ["sky"]]
    request = SegmentRequest.create(classes, "stuff", ModelChoice("offline", logits=str(clip), device="cpu"))
    emb = vocabulary_embeddings(request)
    stuff = request.background.stuff_class(classes)
    assert list(emb) == query_names(request) == list(dict.fromkeys(stuff + ["road", "street", "sky"]))

    img, _ = colour_picture(64, 80)
    head = [stuff] + classes
    own = create_logits_model(clip, device="cpu")
    worker = create_logits_model(clip, device="cpu")
    worker.add_text_embeddings(emb)
    assert torch.equal(worker.logits(img, head), own.logits(img, head))
    assert worker.texts_encoded == 0 and own.texts_encoded == len(emb)
    with pytest.raises(ValueError, match="shape"):
        worker.add_text_embeddings({"x": torch.zeros(3)})
