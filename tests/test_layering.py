"""The layering rules of docs/architecture.md, read from the source: the head imports only torch
and the leaf dslo.errors; the models never import the head, the segmenter, the CLI or eval."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dslo"


def _dslo_imports(path: Path, with_names: bool = False, runtime_only: bool = False) -> set[str]:
    """Absolute dslo modules a file imports (relative imports resolved against its package);
    ``with_names``: also ``module.name`` for each ``from module import name`` (a submodule);
    ``runtime_only``: leave out ``if TYPE_CHECKING:`` imports (annotations, not dependencies)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    out = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for block in ast.walk(tree) if runtime_only and _is_type_checking_block(block)
                 for stmt in block.body for n in ast.walk(stmt)}  # type: ignore[attr-defined]
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "dslo"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "dslo":
                module = node.module
            else:
                continue
            out.add(module)
            if with_names:
                out |= {f"{module}.{a.name}" for a in node.names}
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


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(runtime_only: bool = False) -> dict[str, set[str]]:
    """Module → the dslo modules it imports anywhere (function-level imports too: a lazy import
    is still a dependency), each name resolved to the module that defines it."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in _dslo_imports(path, with_names=True, runtime_only=runtime_only):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def test_nothing_outside_the_cli_imports_the_cli():
    graph = _import_graph()
    # __main__ is `python -m dslo`: the command line's own entry point
    bad = {m: sorted(d for d in deps if d.startswith("dslo.cli"))
           for m, deps in graph.items() if not m.startswith("dslo.cli") and m != "dslo.__main__"}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_no_import_cycle_among_dslo_modules():
    graph = _import_graph(runtime_only=True)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_the_engines_and_front_ends_share_one_request_and_one_step():
    """The app and every engine build on the library layer: one request type, one input rule,
    one per-image step; none of them carries a copy (docs/architecture.md)."""
    graph = _import_graph()
    for m in ("dslo.engines.local", "dslo.engines.ray.worker"):
        assert "dslo.engines.step" in graph[m], m
    for m in ("dslo.engines.local", "dslo.engines.ray.driver", "dslo.app.service", "dslo.cli.segment"):
        assert "dslo.request" in graph[m], m
    assert "dslo.inputs" in graph["dslo.cli.segment"] and "dslo.inputs" in graph["dslo.engines.plan"]


MODEL_FLAGS = ("--model", "--logits", "--attention", "--dtype", "--logits-option", "--mode", "--set",
               "--attention-option", "--device", "--max-side", "--accel")


@pytest.mark.parametrize("command", ["segment", "eval", "app", "check-accel", "label-studio"])
def test_every_command_that_runs_the_models_reads_the_same_model_flags(command):
    """One definition of the model flags (``dslo.cli._args.add_model_args``), read back by one
    ``model_choice``: a command that runs the models accepts all of them, with the same meaning."""
    import argparse

    from dslo.cli import build_parser
    from dslo.cli._args import model_choice

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices[command]
    flags = {s for a in p._actions for s in a.option_strings}
    assert set(MODEL_FLAGS) <= flags, sorted(set(MODEL_FLAGS) - flags)
    known = {"segment": ["x.png", "--classes", "a, b", "-o", "out"], "check-accel": ["x.png", "--classes", "a, b"],
             "eval": ["--dataset", "camvid", "--data-root", "d"]}.get(command, [])
    args = p.parse_args(known + ["--model", "offline", "--logits", "L", "--set", "nms_threshold=0.6",
                                 "--logits-option", "short_side=224", "--attention-option", "short_side=336",
                                 "--device", "cpu", "--max-side", "0", "--accel", "int8", "--mode", "op"])
    m = model_choice(args)
    assert (m.preset, m.logits, m.mode, m.device, m.max_side, m.accel) == ("offline", "L", "op", "cpu", None, "int8")
    assert m.settings == {"nms_threshold": 0.6} and m.logits_options == {"short_side": 224}
    assert m.attention_options == {"short_side": 336}
