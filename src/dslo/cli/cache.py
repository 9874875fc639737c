"""``dslo cache info|clear``: what dslo keeps under ``$DSLO_CACHE_DIR`` (default ``~/.cache/dslo``)
— CLIP text embeddings per model and template set, and focus-s14's converted weights — and
removing it."""

from __future__ import annotations

import argparse
import json
import shutil
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache",
        help="show or clear dslo's cache (text embeddings, converted weights)",
        description="dslo caches CLIP text embeddings (one small safetensors file per model, template "
                    "set and class name) and the converted focus-s14 weights under $DSLO_CACHE_DIR "
                    "(default ~/.cache/dslo). DSLO_TEXT_CACHE=0 or --no-text-cache turns the text "
                    "cache off; DSLO_TEXT_CACHE_MB bounds its size (default 512).",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="where the cache is, what it holds and its size")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=run_info)
    clear = sub.add_parser("clear", help="delete the cached text embeddings (with --all: everything)")
    clear.add_argument("--all", action="store_true",
                       help="also delete converted weights (focus-s14) and file digests")
    clear.set_defaults(func=run_clear)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _dir_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def collect() -> dict:
    from dslo.models.text_cache import cache_summary
    from dslo.models.weights import cache_dir

    root = cache_dir()
    return {"path": str(root), "text": cache_summary(),
            "converted_weights": {"path": str(root / "focus-s14"), "bytes": _dir_bytes(root / "focus-s14")}}


def run_info(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    t = info["text"]
    state = "on" if t["enabled"] else "off (DSLO_TEXT_CACHE=0)"
    newest = time.strftime("%Y-%m-%d %H:%M", time.localtime(t["newest"])) if t["newest"] else "-"
    print(f"dslo cache: {info['path']}")
    print(f"text embeddings: {t['entries']} embeddings, {_mb(t['bytes'])} of {_mb(t['max_bytes'])} "
          f"(cache {state}; last used {newest}) in {t['path']}")
    for model, n in sorted(t["models"].items()):
        print(f"  {n:6d}  {model}")
    print(f"converted weights: {_mb(info['converted_weights']['bytes'])} in {info['converted_weights']['path']}")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from dslo.models.text_cache import clear_text_cache
    from dslo.models.weights import cache_dir

    n = clear_text_cache()
    msg = f"dslo cache: removed {n} text embedding file(s)"
    if args.all:
        root = cache_dir()
        freed = 0
        for sub in ("focus-s14", "digests"):
            freed += _dir_bytes(root / sub)
            shutil.rmtree(root / sub, ignore_errors=True)
        msg += f" and {_mb(freed)} of converted weights and digests"
    print(msg + f" from {cache_dir()}")
    return 0
