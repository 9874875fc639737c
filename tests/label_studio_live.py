"""A real Label Studio (SQLite, loopback, no network) and a real `dslo label-studio` backend in
subprocesses, for test_label_studio_live.py; run as a script it takes docs/labelling.md's
screenshot of a Label Studio task showing dslo's pre-labels:

    python tests/label_studio_live.py docs/labelling-screenshot.jpg [--logits CLIP_DIR]

Without ``--logits`` a tiny random CLIP is written (``dslo.testing.make_tiny_clip``): the regions
then mean nothing, but they are dslo's, drawn by Label Studio's own editor.

Label Studio is started with what a local set-up needs: legacy API tokens on (so ``--user-token``
works with the SDK), loopback ML backends and webhooks allowed (``ML_BLOCK_LOCAL_IP=false``,
``SSRF_PROTECTION_ENABLED=false``), local files served from one folder, and Sentry and analytics
off (no calls home).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from conftest import DATA  # tests/ is on the path both under pytest and when run as a script
from served import SRC, checkout_env, free_port, serving
from standins import FAST

TOKEN = "0123456789abcdef0123456789abcdef01234567"
USER, PASSWORD = "labeller@example.com", "dslo-test-pass"
CAMVID = DATA / "camvid" / "test"
CAMVID_CLASSES = ["sky", "building", "road", "tree", "car", "pedestrian"]
START_TIMEOUT_S = 300  # Label Studio's first start migrates its database (about a minute alone)


def label_studio_command() -> list[str]:
    exe = Path(sys.executable).parent / "label-studio"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "label_studio.server"]


@contextlib.contextmanager
def label_studio(work: Path, files_root: Path) -> Iterator[str]:
    """A Label Studio on a free loopback port, its data under ``work``, serving local files under
    ``files_root``; yields its URL (the API token is :data:`TOKEN`)."""
    port = free_port()
    env = dict(os.environ, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", ML_BLOCK_LOCAL_IP="false",
               SSRF_PROTECTION_ENABLED="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="", COLLECT_ANALYTICS="false",
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true", LOCAL_FILES_DOCUMENT_ROOT=str(files_root),
               DJANGO_DB="sqlite", LABEL_STUDIO_BASE_DATA_DIR=str(work), HF_HUB_OFFLINE="1")
    cmd = label_studio_command() + ["start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1",
                                    "--data-dir", str(work / "data"), "--username", USER, "--password", PASSWORD,
                                    "--user-token", TOKEN]
    url = f"http://127.0.0.1:{port}"
    with serving(cmd, env, work / "label-studio.log", url + "/health", "label-studio", START_TIMEOUT_S):
        yield url


@contextlib.contextmanager
def dslo_backend(model_args: list[str], ls_url: str, log: Path, extra: list[str] = ()) -> Iterator[str]:
    """``dslo label-studio`` (this checkout) on a free loopback port, fetching from ``ls_url``."""
    port = free_port()
    env = checkout_env(LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY=TOKEN, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "dslo", "label-studio", "--port", str(port), *model_args, *extra]
    with serving(cmd, env, log, f"http://127.0.0.1:{port}/health", "dslo label-studio", START_TIMEOUT_S):
        yield f"http://127.0.0.1:{port}"


def model_args(clip: Path) -> list[str]:
    """The offline preset (focus-s14 attention ships with dslo) with ``clip``, small inputs."""
    return ["--model", "offline", "--logits", str(clip), *FAST]


def images(folder: Path, n: int = 3) -> list[Path]:
    """``n`` CamVid test images copied into ``folder`` (synthetic street pictures without the data)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if CAMVID.is_dir():
        return [Path(shutil.copy(p, folder / p.name)) for p in sorted(CAMVID.glob("*.png"))[:n]]
    out = []
    for i in range(n):
        img = np.zeros((360, 480, 3), np.uint8)
        img[: 150 + 20 * i] = (128, 128, 128)
        img[150 + 20 * i: 260] = (128, 0, 0)
        img[260:] = (128, 64, 128)
        out.append(folder / f"street{i}.png")
        Image.fromarray(img).save(out[-1])
    return out


def brush_config(labels: list[str]) -> str:
    from dslo.labelling.label_config import default_label_config

    return default_label_config(labels, from_name="label", to_name="image", value="image")


def upload(ls_url: str, project: int, paths: list[Path]) -> None:
    """Import image files into a project as Label Studio's import page does (multipart)."""
    import requests

    files = [(f"file{i}", (p.name, p.read_bytes(), "image/png")) for i, p in enumerate(paths)]
    r = requests.post(f"{ls_url}/api/projects/{project}/import", files=files,
                      headers={"Authorization": f"Token {TOKEN}"}, timeout=120)
    r.raise_for_status()


def screenshot(ls_url: str, project: int, task: int, dest: Path) -> str:
    """Log in with Label Studio's login page and photograph a task's labelling page; returns the
    page's text (what the editor lists: regions, the prediction's model version)."""
    from app_browser import chromium

    with chromium() as ctx:
        page = ctx.new_page()
        page.goto(f"{ls_url}/user/login/")
        page.fill("input[name=email]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda u: "/user/login" not in u)
        page.goto(f"{ls_url}/projects/{project}/data?task={task}")
        page.locator("canvas").first.wait_for(state="visible", timeout=120_000)
        page.wait_for_timeout(4000)  # the brush layers are drawn after the image
        shot = dest.with_suffix(".png")
        page.screenshot(path=str(shot))
        text = page.locator("body").inner_text()
    if dest.suffix.lower() in (".jpg", ".jpeg"):
        from PIL import Image

        with Image.open(shot) as im:
            im.convert("RGB").save(dest, quality=80, optimize=True)
        shot.unlink()
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--logits", type=Path, help="a CLIP folder (default: a tiny random one)")
    args = parser.parse_args()
    from label_studio_sdk import LabelStudio

    with tempfile.TemporaryDirectory(prefix="dslo-ls-") as tmp:
        work = Path(tmp)
        clip = args.logits
        if clip is None:
            from dslo.testing import make_tiny_clip

            clip = make_tiny_clip(work / "clip")
        paths = images(work / "files" / "camvid", 1)
        with label_studio(work, work / "files") as ls_url, \
                dslo_backend(model_args(clip), ls_url, work / "backend.log") as backend_url:
            ls = LabelStudio(base_url=ls_url, api_key=TOKEN)
            project = ls.projects.create(title="dslo pre-labels", label_config=brush_config(CAMVID_CLASSES))
            upload(ls_url, project.id, paths)
            ls.ml.create(project=project.id, url=backend_url, title="dslo", is_interactive=False)
            ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                              selected_items={"all": True, "excluded": []})
            task = next(iter(ls.tasks.list(project=project.id)))
            screenshot(ls_url, project.id, task.id, args.dest)
    print(f"wrote {args.dest}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, SRC)
    sys.exit(main())
