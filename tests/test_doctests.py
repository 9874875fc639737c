"""Every docstring example in the package runs (``>>>`` lines), so none can rot: an example that
needs weights we do not have is marked ``# doctest: +SKIP`` in place."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest

import dslo


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(dslo.__path__, "dslo."):
        spec = importlib.util.find_spec(info.name)
        origin = Path(spec.origin) if spec and spec.origin else None
        if origin and origin.suffix == ".py" and ">>>" in origin.read_text(encoding="utf-8"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_the_examples_are_found():
    assert {"dslo.errors", "dslo.head.config", "dslo.segmenter", "dslo.testing"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {"tmp_path": tmp_path, "np": np, "dslo": dslo}
    tests = finder.find(module, name, extraglobs=globs)
    assert tests, f"{name}: no examples found"
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (output above)"
