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

from dslo.eval.metrics import IoUAccumulator
from dslo.outputs import atomic_save_image, overlay_image

DOCS = Path(__file__).resolve().parent


def cell_evidence(label: np.ndarray, k: int, cell: int = 16, noise: float = 0.02, seed: int = 0) -> torch.Tensor:
    """The figure's stand-in for CLIP: ``(H, W)`` ids (``k`` = ignore) → ``(k, H/cell, W/cell)``
    CLIP-like logits, the class fractions of each ``cell``×``cell`` block (a partial last block is
    dropped) in [0.15, 0.25] plus white noise. Simpler than the benchmarks' evidence
    (``benchmarks.evidence.make_evidence``: no blur, no confusion, no distractors); kept as it is
    so docs/quickstart-*.png stay reproducible."""
    onehot = torch.nn.functional.one_hot(torch.from_numpy(label.astype(np.int64)).clamp(max=k), k + 1)
    frac = torch.nn.functional.avg_pool2d(onehot.permute(2, 0, 1)[None].float()[:, :k], cell)[0]
    g = torch.Generator().manual_seed(seed)
    return 0.15 + 0.1 * frac + noise * torch.randn(frac.shape, generator=g)


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
