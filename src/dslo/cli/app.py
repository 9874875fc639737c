"""``dslo app``: serve the segmentation page (Gradio) on this machine or a server.

The models load once at start and are shared by all requests, which run one at a time. Missing
weights do not stop the app: the page shows the error and its fixes.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from dslo.cli._args import add_model_args, model_choice


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app",
        help="a web page to segment an image into your own classes (needs dslo[app])",
        description="Serve a Gradio page: upload an image, name classes, get the overlay, the class "
                    "table, the mask and JSON of `dslo segment`, and the head's steps. Local only by "
                    "default; on a server use --host 0.0.0.0 behind a proxy (no share links).",
    )
    add_model_args(p, help={"mode": "head mode at start (default: the preset's; the page can change it)"})
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: "
                                                       "this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--examples", type=Path, metavar="DIR", help="offer the images of DIR as examples")
    p.add_argument("--max-file-size", default="50mb", metavar="SIZE",
                   help="largest upload accepted (default 50mb)")
    p.set_defaults(func=run)


def _check_port(host: str, port: int) -> None:
    """Fail before the models load (which takes a while) when the address cannot be served."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                           "pick another --port, or stop what uses it") from None


def run(args: argparse.Namespace) -> int:
    from dslo.app import require_gradio

    require_gradio()
    _check_port(args.host, args.port)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a server
    from dslo.imageio import list_images

    examples = []
    if args.examples is not None:
        if not args.examples.is_dir():
            raise FileNotFoundError(f"--examples {args.examples}: no such folder")
        examples = list_images(args.examples)
        if not examples:
            raise ValueError(f"--examples {args.examples}: no images in this folder")

    from dslo.app.page import build_page
    from dslo.app.service import MODES, AppService

    if args.mode is not None and args.mode not in MODES:
        raise ValueError(f"--mode {args.mode}: the page offers {', '.join(MODES)}")
    models = model_choice(args, mode=None)  # the page chooses the mode of each request
    models.head_settings()  # a bad --set or model option fails now, not after the models load
    service = AppService(models)
    page = build_page(service, examples, nms_threshold=dict(args.settings).get("nms_threshold", 0.5),
                      start_mode=args.mode or "mv")
    page.queue(default_concurrency_limit=1)
    print(f"dslo app: serving on http://{args.host}:{args.port}/ (Ctrl+C stops)", file=sys.stderr,
          flush=True)
    try:
        page.launch(server_name=args.host, server_port=args.port, share=False, show_error=False,
                    quiet=True, max_file_size=args.max_file_size,
                    allowed_paths=[str(args.examples.resolve())] if examples else None)
    except OSError as exc:  # the port was taken while the models loaded
        raise RuntimeError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    return 0
