"""``dslo models``: the presets and the registry, and whether each model's weights are on this
machine (checked without the network)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list presets and models, and whether their weights are available locally",
        description="List the segmenter presets and the logits / attention models of the registry, "
                    "with whether their weights are available locally (no network is used).",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def collect() -> dict:
    """``{"presets": {name: {..., "ready": bool}}, "models": {kind: {name: available}},
    "cards": {name: {"note", "source", "format", "input_size", "mean", "std", "prompts"}}, "modes"}``."""
    from dslo.models import list_models, weights_available
    from dslo.presets import OFFLINE_FALLBACK_LOGITS, list_presets

    available: dict[str, bool] = {}

    def have(name: str) -> bool:
        if name not in available:
            try:
                available[name] = bool(weights_available(name))
            except Exception:  # a registry entry that cannot even be checked is not available
                available[name] = False
        return available[name]

    models = {kind: {name: have(name) for name in names} for kind, names in list_models().items()}
    from dslo.models import get_entry

    cards = {}
    for names in list_models().values():
        for name in names:
            e = get_entry(name)
            cards[name] = {"note": e.note, "source": e.resolved_source(), **dict(e.card)}
    presets = {}
    for name, p in list_presets().items():
        logits = p["logits"]
        if logits is None:  # offline: ready with any CLIP passed by --logits
            ready = have(p["attention"])
            note = "needs --logits DIR" if not have(OFFLINE_FALLBACK_LOGITS) else ""
        else:
            ready = have(logits) and have(p["attention"])
            note = ""
        presets[name] = dict(p, ready=ready, note=note)
    from dslo.head import MODE_TABLE

    modes = {name: m.description for name, m in MODE_TABLE.items()}
    return {"presets": presets, "models": models, "cards": cards, "modes": modes}


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    rows = [[n, p["logits"] or "(--logits)", p["attention"], p["mode"],
             yes(p["ready"]) + (f" ({p['note']})" if p["note"] else ""), p["description"]]
            for n, p in info["presets"].items()]
    print("Presets (dslo segment --model NAME):")
    print(_table(rows, ["preset", "logits", "attention", "mode", "weights local", "description"]))
    for kind, entries in info["models"].items():
        print(f"\n{kind.capitalize()} models (--{kind} NAME, or a local folder / Hub id of these formats):")
        cards = info["cards"]
        rows = [[n, yes(a), cards[n].get("format", ""), cards[n]["source"] or "-", cards[n]["note"]]
                for n, a in entries.items()]
        print(_table(rows, ["name", "weights local", "format", "source", "note"]))
    print("\nHead modes (--mode NAME):")
    print(_table([[n, d] for n, d in info["modes"].items()], ["mode", "what it runs"]))
    missing = [n for entries in info["models"].values() for n, a in entries.items() if not a]
    if missing:
        print("\nModels without local weights are downloaded from the Hugging Face Hub on first "
              "use (needs a connection once), or pass a local folder instead of the name.",
              file=sys.stdout)
    return 0
