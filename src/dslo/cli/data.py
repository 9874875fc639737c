"""``dslo data list|download|prepare``: the benchmarks from an empty disk to the layouts
``dslo eval`` reads (see docs/evaluation.md, "Getting the data")."""

from __future__ import annotations

import argparse
import json
import sys

_NAMES = "a `dslo eval --dataset` name (voc21, context59, coco_object, ...), a group (voc, context, " \
         "coco, cityscapes, ade20k, camvid) or `all` (the eight benchmarks)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data", help="download and prepare the benchmarks (no MMSegmentation needed)",
        description="Download the official archives (checked against their published checksums, "
                    "resumable) and convert the labels into the layouts `dslo eval` reads, equal to "
                    "MMSegmentation's, SCLIP's and cityscapesscripts' converters.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="the data sets, their archives and what is present under --root")
    ls.add_argument("--root", default="data", help="data root (default: data)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_list)

    dl = sub.add_parser("download", help="fetch, verify and unpack archives (then prepares them)")
    dl.add_argument("names", nargs="+", metavar="NAME", help=_NAMES)
    dl.add_argument("--root", default="data", help="data root (default: data)")
    dl.add_argument("--mirror", metavar="URL", help="fetch the same file names from this base URL")
    dl.add_argument("--no-prepare", action="store_true", help="only download and unpack")
    dl.add_argument("--retries", type=int, default=3, help="resumes of a cut connection (default 3)")
    dl.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    dl.set_defaults(func=run_download)

    pr = sub.add_parser("prepare", help="convert raw labels into the layouts dslo eval reads, then count")
    pr.add_argument("names", nargs="+", metavar="NAME", help=_NAMES)
    pr.add_argument("--root", default="data", help="data root (default: data)")
    pr.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    pr.add_argument("--force", action="store_true", help="convert again even where outputs exist")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(func=run_prepare)


def _size(n: int | None) -> str:
    return "size ?" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def run_list(args: argparse.Namespace) -> int:
    from dslo.data import status

    records = status(args.root)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    print(f"data root: {args.root}")
    for r in records:
        state = "prepared" if r["prepared"] else "not prepared"
        conv = f"convert: {r['converter']}" if r["converter"] else "no conversion"
        print(f"\n{r['title']} [{r['key']}] -> dslo eval --dataset {'|'.join(r['names'])}  ({conv}; {state})")
        for a in r["archives"]:
            check = f"{a['checksum'][0]} {a['checksum'][1][:12]}..." if a["checksum"] else "no published checksum"
            login = ", needs a login" if a["login"] else ""
            have = "unpacked" if a["downloaded"] else "missing"
            print(f"  {a['name']:<58} {_size(a['size']):>10}  {check}{login}  [{have}]")
        for name, n in r["counts"].items():
            print(f"  {name}: {n if n is not None else 0} of {r['expected'][name]} images")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from dslo.data import download

    rep = download(args.names, args.root, mirror=args.mirror, progress=not args.quiet, retries=args.retries)
    if rep.skipped:
        print(f"dslo data: already unpacked: {', '.join(rep.skipped)}")
    for name, why in rep.failed.items():
        print(f"dslo data: {name}: {why}", file=sys.stderr)
    code = 1 if rep.failed else 0
    if not args.no_prepare:
        code = max(code, _prepare(args.names, args.root, 2, False, not args.quiet))
    return code


def run_prepare(args: argparse.Namespace) -> int:
    return _prepare(args.names, args.root, args.workers, args.force, not args.quiet)


def _prepare(names, root, workers: int, force: bool, progress: bool) -> int:
    from dslo.data import DataError, prepare, resolve

    code = 0
    for source in resolve(names):
        try:
            reports = prepare([source.key], root, workers=workers, force=force, progress=progress)
        except DataError as exc:
            print(f"dslo data: {source.key}: {exc}", file=sys.stderr)
            code = 1
            continue
        for rep in reports:
            counts = ", ".join(f"{n} {c if c is not None else 0}/{source.counts[n]}" for n, c in rep.counts.items())
            print(f"dslo data: {source.key}: images {counts}")
            for problem in rep.problems:
                print(f"dslo data: {source.key}: missing: {problem}", file=sys.stderr)
            code = max(code, 0 if rep.ok else 1)
    return code
