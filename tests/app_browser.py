"""Run ``dslo app`` in a subprocess and drive it with a real headless Chromium.

Used by ``test_app_browser.py``; run as a script it takes the README's screenshot of the page on a
real CamVid image with the offline preset:

    python tests/app_browser.py docs/app-screenshot.jpg [--logits CLIP_DIR]

Without ``--logits`` a tiny random CLIP is written (``dslo.testing.make_tiny_clip``), so the labels
in the picture mean nothing; pass a real CLIP folder for a meaningful one.

The browser is Debian's ``chromium`` driven by Playwright through ``executable_path`` (Playwright's
own browser download is never used), with a fresh profile and no background network traffic.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from conftest import DATA  # tests/ is on the path both under pytest and when run as a script
from served import checkout_env, free_port, serving
from standins import FAST  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CAMVID_IMAGE = DATA / "camvid" / "test" / "0001TP_008550.png"
CAMVID_CLASSES = "sky, building, pole, road, pavement, tree, sign, fence, car, pedestrian, bicyclist"
START_TIMEOUT_S = 300  # importing torch + Gradio and loading models on a busy 2-core machine
REQUEST_TIMEOUT_MS = 300_000  # one segmentation on a busy CPU
STEP_TIMEOUT_MS = 60_000  # any other wait in the page


@contextlib.contextmanager
def running_app(args: list[str], log_path: Path) -> Iterator[str]:
    """Start ``dslo app ARGS`` on a free loopback port, wait until it answers, yield its URL, stop
    it at the end. The app's output goes to ``log_path``."""
    port = free_port()
    env = checkout_env(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "dslo", "app", "--host", "127.0.0.1", "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}/"
    with serving(cmd, env, log_path, url, "dslo app", START_TIMEOUT_S):
        yield url


@contextlib.contextmanager
def chromium(profile_dir: Path | None = None):
    """A Playwright browser context on Debian's headless Chromium with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with contextlib.ExitStack() as stack:
        if profile_dir is None:
            profile_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chromium-")))
        p = stack.enter_context(sync_playwright())
        ctx = p.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            accept_downloads=True, viewport={"width": 1500, "height": 1100})
        ctx.set_default_timeout(STEP_TIMEOUT_MS)
        stack.callback(ctx.close)
        yield ctx


def status_text(page) -> str:
    return page.locator("#dslo-status").inner_text().strip()


def segment_in_page(page, classes: str, image: Path | None = None) -> str:
    """Upload ``image`` (if given), type ``classes``, press Segment and wait for the new status
    line; returns it."""
    if image is not None:
        page.locator("#dslo-image input[type=file]").set_input_files(str(image))
        page.locator("#dslo-image img").first.wait_for(state="visible")
    page.locator("#dslo-classes textarea").fill(classes)
    before = status_text(page)
    page.locator("#dslo-segment").click()
    page.wait_for_function(
        "before => { const t = document.querySelector('#dslo-status').innerText.trim();"
        " return t !== before && (t.startsWith('Segmented') || t.startsWith('Error')); }",
        arg=before, timeout=REQUEST_TIMEOUT_MS)
    return status_text(page)


def pick_example(page, name: str) -> None:
    """Click the example called ``name`` and wait until the image input shows it."""
    img = page.locator("#dslo-image img").first
    before = img.get_attribute("src") if img.count() else None
    page.locator("#dslo-examples").get_by_text(name, exact=True).first.click()
    page.wait_for_function(
        "before => { const i = document.querySelector('#dslo-image img');"
        " return i && i.complete && i.naturalWidth > 0 && i.getAttribute('src') !== before; }",
        arg=before)


def table_rows(page) -> list[list[str]]:
    """The class table's cells as text, one list per row in row order (header left out). Gradio's
    table draws its rows as ARIA grid rows; every row is drawn for a table this short."""
    return page.evaluate(
        "() => [...document.querySelectorAll('#dslo-table [role=row][data-index]')]"
        ".sort((a, b) => a.dataset.index - b.dataset.index)"
        ".map(r => [...r.querySelectorAll('[role=gridcell]')].map(c => c.innerText.trim()))")


def image_shown(page, elem_id: str, timeout_ms: float = 30_000) -> bool:
    """Whether the component's image loads and has a size (it is on screen, not a placeholder).
    Waits for the load: a visible ``<img>`` may still be fetching its file on a busy machine."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    img = page.locator(f"#{elem_id} img").first
    img.wait_for(state="visible")
    try:
        page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(),
                               timeout=timeout_ms)
    except PlaywrightTimeout:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Screenshot of dslo app on a CamVid image (offline preset).")
    ap.add_argument("output", type=Path, help="image to write (.png or .jpg), e.g. docs/app-screenshot.jpg")
    ap.add_argument("--logits", type=Path, help="a CLIP folder (default: a tiny random one)")
    ap.add_argument("--image", type=Path, default=CAMVID_IMAGE)
    ap.add_argument("--classes", default=CAMVID_CLASSES)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        logits = args.logits
        if logits is None:
            from dslo.testing import make_tiny_clip

            logits = make_tiny_clip(Path(tmp) / "tiny-clip")
        app_args = ["--model", "offline", "--logits", str(logits), "--device", "cpu", *FAST]
        with running_app(app_args, Path(tmp) / "app.log") as url, chromium() as ctx:
            page = ctx.new_page()
            page.goto(url)
            status = segment_in_page(page, args.classes, args.image)
            if not status.startswith("Segmented"):
                print(f"the request failed: {status}", file=sys.stderr)
                return 1
            for elem in ("dslo-overlay", "dslo-coarse", "dslo-seeds"):
                image_shown(page, elem)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            jpeg = args.output.suffix.lower() in (".jpg", ".jpeg")  # a quarter of the PNG's bytes
            page.screenshot(path=str(args.output), full_page=True, type="jpeg" if jpeg else "png",
                            **({"quality": 85} if jpeg else {}))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
