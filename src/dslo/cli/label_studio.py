"""``dslo label-studio``: serve a Label Studio ML backend that pre-labels BrushLabels projects.

Flags become a :class:`dslo.servers.label_studio.BackendSettings` (the models as ``dslo segment``
reads them); the server does the rest. Environment: ``LABEL_STUDIO_URL`` and
``LABEL_STUDIO_API_KEY`` (where task images are fetched, and with what key), ``BASIC_AUTH_USER``
and ``BASIC_AUTH_PASS`` (the credentials Label Studio must send, as for its own backends).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from dslo.cli._args import add_model_args, positive_int


def _positive(text: str) -> float:
    x = float(text)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return x


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "label-studio",
        help="a Label Studio ML backend: dslo's masks as BrushLabels pre-labels (needs dslo[labelstudio])",
        description="Serve Label Studio's ML backend protocol (/health, /setup, /predict). Connect it in "
                    "a project's Settings > Model; its BrushLabels labels are the classes. Images are "
                    "fetched from LABEL_STUDIO_URL (with LABEL_STUDIO_API_KEY), from --allow-host hosts, "
                    "or read under --local-files. See docs/labelling.md.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; set BASIC_AUTH_USER "
                        "and BASIC_AUTH_PASS before listening on other interfaces)")
    p.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    add_model_args(p)
    p.add_argument("--background", default="none", metavar="POLICY",
                   help="none (default), stuff, or a probability threshold such as 0.5: pixels of the "
                        "background are left unlabelled")
    p.add_argument("--background-words", metavar="LIST", help="stuff words for --background stuff")
    p.add_argument("--control", metavar="NAME", help="the BrushLabels control to fill when a config has several")
    p.add_argument("--label-studio-url", default=os.environ.get("LABEL_STUDIO_URL"), metavar="URL",
                   help="Label Studio's address, for its /data/... image URLs (default $LABEL_STUDIO_URL); "
                        "the API key is $LABEL_STUDIO_API_KEY")
    p.add_argument("--allow-host", dest="allow_hosts", action="append", default=[], metavar="HOST",
                   help="also fetch http(s) image URLs from HOST (repeatable), e.g. 127.0.0.1 for a local "
                        "file server")
    p.add_argument("--local-files", type=Path, metavar="DIR",
                   help="read local paths and /data/local-files/?d=... under DIR (Label Studio's "
                        "LOCAL_FILES_DOCUMENT_ROOT); nothing outside it")
    p.add_argument("--max-concurrent", type=positive_int, default=1, metavar="N",
                   help="predictions running at once, one worker process each with its own models (default 1)")
    p.add_argument("--time-budget", type=_positive, default=80.0, metavar="S",
                   help="seconds one /predict call may take (default 80; Label Studio waits 100): tasks "
                        "that would end later are left for its next call")
    p.add_argument("--max-body-mb", type=_positive, default=32.0, metavar="MB", help="largest request body (default 32)")
    p.add_argument("--max-download-mb", type=_positive, default=64.0, metavar="MB",
                   help="largest image file fetched or read (default 64)")
    p.add_argument("--max-pixels", type=positive_int, default=64_000_000, metavar="N",
                   help="largest image, in pixels (default 64 000 000)")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from_args(args: argparse.Namespace):
    from dslo.classes import parse_background
    from dslo.cli._args import model_choice
    from dslo.servers.label_studio import BackendSettings, FetchLimits, ImagePolicy

    if args.background_words and str(args.background).strip().lower() != "stuff":
        raise ValueError("--background-words only applies with --background stuff; add it or drop the words")
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    if bool(user) != bool(password):
        raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
    policy = ImagePolicy(args.label_studio_url or None, os.environ.get("LABEL_STUDIO_API_KEY") or None,
                         tuple(args.allow_hosts), args.local_files)
    limits = FetchLimits(int(args.max_download_mb * (1 << 20)), args.max_pixels)
    models = model_choice(args)
    models.head_settings()  # a bad --set or model option fails now, before any worker starts
    return BackendSettings(models, parse_background(args.background, args.background_words),
                           args.control, policy, limits, args.max_concurrent, args.time_budget,
                           int(args.max_body_mb * (1 << 20)), (user, password) if user and password else None)


def run(args: argparse.Namespace) -> int:
    from dslo.cli.app import _check_port
    from dslo.servers.label_studio import serve

    settings = settings_from_args(args)  # every setting checked: no model loaded yet
    _check_port(args.host, args.port)
    if not _is_loopback(args.host) and settings.basic_auth is None:
        print(f"dslo label-studio: warning: listening on {args.host} without BASIC_AUTH_USER/BASIC_AUTH_PASS: "
              "anyone who reaches this port can use the models", file=sys.stderr)
    print(f"dslo label-studio: loading the models in {args.max_concurrent} worker process(es) ...",
          file=sys.stderr, flush=True)
    serve(settings, args.host, args.port)
    return 0
