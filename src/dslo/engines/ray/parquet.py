"""``--format parquet``: one row per image for data-lake users.

Columns: ``image`` (the path or URI, as the JSON's ``image``), ``stem`` (relative output name),
``width``, ``height``, ``classes`` (list of class names, index = class id), ``segments`` (one per
class present: ``class_id``, ``class_name``, ``area`` in pixels, ``counts`` = the COCO RLE string of
an ``(height, width)`` mask, decodable with ``pycocotools.mask.decode({"size": [height, width],
"counts": counts})``), ``model`` (the settings record as JSON text). The same segments as the
JSON output. Files ``part-<run>-<n>.parquet`` under the output location, each written atomically by
the driver as rows arrive, so a row is never written twice.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from dslo import remote
from dslo.outputs import atomic_write

PART = re.compile(r"^part-[0-9a-z-]+-\d{5}\.parquet$")


def schema():
    import pyarrow as pa

    segment = pa.struct([("class_id", pa.int32()), ("class_name", pa.string()),
                         ("area", pa.int64()), ("counts", pa.string())])
    return pa.schema([("image", pa.string()), ("stem", pa.string()), ("width", pa.int32()),
                      ("height", pa.int32()), ("classes", pa.list_(pa.string())),
                      ("segments", pa.list_(segment)), ("model", pa.string())])


def record(result, image_name: str, stem: str) -> dict:
    """The parquet row of one ``SegmentationResult`` (from its JSON document, so the RLE is the
    same as in ``STEM.json``)."""
    doc = result.to_dict(image_name)
    return {
        "image": image_name, "stem": stem, "width": doc["width"], "height": doc["height"],
        "classes": doc["classes"],
        "segments": [{"class_id": s["class_id"], "class_name": s["class_name"], "area": s["area"],
                      "counts": s["rle"]["counts"]} for s in doc["segments"]],
        "model": json.dumps(doc["model"], ensure_ascii=False),
    }


def _loc(out, name: str):
    return remote.join(str(out), name) if remote.is_uri(out) else Path(out) / name


def part_files(out, files: set[str]) -> list:
    """The part files among ``files`` (names relative to ``out``, top level only)."""
    return [_loc(out, f) for f in sorted(files) if "/" not in f and PART.match(f)]


def read_stems(parts: list) -> set[str]:
    """Stems already in these part files (what a resumed run skips)."""
    import pyarrow.parquet as pq

    stems: set[str] = set()
    for p in parts:
        if isinstance(p, str):
            fs, path = remote.fs_path(p)
            table = pq.read_table(path, filesystem=fs, columns=["stem"])
        else:
            table = pq.read_table(p, columns=["stem"])
        stems.update(table.column("stem").to_pylist())
    return stems


def delete(parts: list) -> None:
    for p in parts:
        if isinstance(p, str):
            fs, path = remote.fs_path(p)
            fs.delete_file(path)
        else:
            Path(p).unlink(missing_ok=True)


class PartWriter:
    """Buffers rows and writes them as numbered part files of at most ``rows_per_file`` rows."""

    def __init__(self, out, rows_per_file: int = 5000) -> None:
        self.out, self.rows_per_file = out, rows_per_file
        self.run = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
        self.rows: list[dict] = []
        self.n = 0
        self.written: list = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.rows, schema=schema())
        loc = _loc(self.out, f"part-{self.run}-{self.n:05d}.parquet")
        atomic_write(loc, lambda f: pq.write_table(table, f))
        self.written.append(loc)
        self.n += 1
        self.rows = []
