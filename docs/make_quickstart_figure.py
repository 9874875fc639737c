"""Make the README quick-start picture with `dslo refine` on a real CamVid image (reproducible).

CLIP weights cannot be downloaded in the environment this figure was made in, so the class
evidence is a stand-in derived from the real annotation, deliberately degraded to look like CLIP
patch logits: the label map is pooled to a 1/16 grid (class fractions per cell), mapped to the
cosine range CLIP produces (0.15 + 0.1 * fraction) and Gaussian noise (std 0.02) is added. The
attention is the real offline focus-s14 ViT-S/14. The head (maximum velocity + JBU) then has to
recover the boundaries from the image and the attention alone.

    python docs/make_quickstart_figure.py [--data ../shared/data] [--image 0001TP_008550]

Writes docs/quickstart-overlay.png (dslo refine's overlay) and docs/quickstart-coarse.png (the
arg-max of the coarse evidence, bilinearly upsampled, for comparison) and prints pixel accuracy
and mIoU of both against the annotation.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "benchmarks"))

from evidence import cell_evidence  # noqa: E402  (the benchmarks' evidence generators, one module)

from dslo.eval.metrics import IoUAccumulator  # noqa: E402
from dslo.outputs import atomic_save_image, overlay_image  # noqa: E402


def scores(pred: np.ndarray, label: np.ndarray, k: int) -> tuple[float, float]:
    """(pixel accuracy, mIoU) in percent with the project's metric (ids >= k are ignored)."""
    acc = IoUAccumulator(k)
    acc.update(pred, np.where(label < k, label, 255))
    r = acc.compute()
    return r["aacc"], r["miou"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DOCS.parents[1] / "shared" / "data")
    ap.add_argument("--image", default="0001TP_008550")
    args = ap.parse_args()
    camvid = args.data / "camvid"
    image = camvid / "test" / f"{args.image}.png"
    label = np.array(Image.open(camvid / "testannot" / f"{args.image}.png"))
    names = [n.strip() for n in (camvid / "classes.txt").read_text().splitlines() if n.strip()]
    k = len(names)
    L = cell_evidence(label, k)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(L, Path(tmp) / "logits.pt")
        subprocess.run([sys.executable, "-m", "dslo", "refine", "--logits-file", str(Path(tmp) / "logits.pt"),
                        "--image", str(image), "--classes-file", str(camvid / "classes.txt"),
                        "--attention", "focus-s14", "--mode", "mv", "--device", "cpu",
                        "-o", tmp, "--save", "mask,overlay"], check=True)
        refined = np.array(Image.open(Path(tmp) / f"{args.image}.png"))
        shutil.copy(Path(tmp) / f"{args.image}.overlay.png", DOCS / "quickstart-overlay.png")
    rgb = np.asarray(Image.open(image).convert("RGB"))
    up = torch.nn.functional.interpolate(L[None], size=label.shape, mode="bilinear", align_corners=False)[0]
    coarse = up.argmax(0).numpy()
    atomic_save_image(DOCS / "quickstart-coarse.png", overlay_image(rgb, coarse, names))
    print(f"{args.image}: coarse evidence arg-max  pixel acc {scores(coarse, label, k)[0]:.1f}  "
          f"mIoU {scores(coarse, label, k)[1]:.1f}")
    print(f"{args.image}: dslo refine (M.V.)      pixel acc {scores(refined, label, k)[0]:.1f}  "
          f"mIoU {scores(refined, label, k)[1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
