"""Shared test set-up: where the real data is (and the marker that skips without it), one tiny
random CLIP written once per session, and the device tests run on.

``DATA``, ``needs_data`` and ``needs_data_dirs`` are importable (``from conftest import DATA,
needs_data``); the fixtures (``clip_dir``, ``device``) are found by pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The real annotated data lives next to the repository (../shared/data), never inside it.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def needs_data_dirs(*parts: str) -> pytest.MarkDecorator:
    """Skip unless every ``DATA/<part>`` folder exists (no parts: DATA itself)."""
    missing = [p for p in (parts or ("",)) if not (DATA / p).is_dir()]
    where = ", ".join(str(DATA / p) for p in missing)
    return pytest.mark.skipif(bool(missing), reason=f"real data not found at {where}")


needs_data = needs_data_dirs()  # the marker for tests that read anything under DATA


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP in transformers format (``dslo.testing.make_tiny_clip``), written once
    per session; tests only read it."""
    from dslo.testing import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device tests run on: ``$DSLO_TEST_DEVICE`` (e.g. cuda), default cpu."""
    from dslo.models.weights import resolve_device

    return resolve_device(os.environ.get("DSLO_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True, scope="session")
def _no_text_cache_by_default():
    """Tests never read or fill the user's persistent text-embedding cache: it is off unless a
    test turns it on with its own DSLO_CACHE_DIR (tests/test_text_cache.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSLO_TEXT_CACHE", "0")
        yield


@pytest.fixture
def fake_models(monkeypatch):
    """dslo segment builds its segmenter through create_segmenter: swap in the colour stand-ins
    (tests/standins.py). Returns the list of (name, device, overrides) it was called with."""
    from standins import ColourAffinity, ColourLogits

    from dslo.segmenter import Segmenter

    calls = []

    def create(name="default", device="auto", **overrides):
        calls.append((name, device, overrides))
        return Segmenter(ColourLogits(), ColourAffinity(), mode=overrides.get("mode", "mv"),
                         max_side=overrides.get("max_side"), background=overrides.get("background"),
                         info={"preset": name, "logits": "colour", "attention": "colour"})

    monkeypatch.setattr("dslo.segmenter.create_segmenter", create)
    return calls
