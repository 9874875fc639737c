"""The layering rules of docs/architecture.md, read from the source: the head imports only torch
and the leaf dslo.errors; the models never import the head, the segmenter, the CLI or eval."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dslo"


def _dslo_imports(path: Path) -> set[str]:
    """Absolute dslo modules a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "dslo"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.split(".")[0] == "dslo":
                out.add(node.module)
    return out


def test_the_head_imports_only_itself_and_the_errors():
    for f in sorted((SRC / "head").glob("*.py")):
        bad = {m for m in _dslo_imports(f) if not (m.startswith("dslo.head") or m == "dslo.errors")}
        assert not bad, f"{f.name} imports {bad}"


def test_the_models_know_nothing_of_head_segmenter_cli_or_eval():
    for f in sorted((SRC / "models").glob("*.py")):
        bad = {m for m in _dslo_imports(f)
               if m.split(".")[1:2] and m.split(".")[1] in ("head", "segmenter", "cli", "eval", "presets")}
        assert not bad, f"{f.name} imports {bad}"


def test_the_leaves_import_no_dslo_module():
    for name in ("errors.py", "classes.py"):
        assert _dslo_imports(SRC / name) == set(), name
