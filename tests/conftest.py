"""Shared test set-up."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _no_text_cache_by_default():
    """Tests never read or fill the user's persistent text-embedding cache: it is off unless a
    test turns it on with its own DSLO_CACHE_DIR (tests/test_text_cache.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSLO_TEXT_CACHE", "0")
        yield
