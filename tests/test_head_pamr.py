"""PAMR against a naive per-pixel loop written from the method's description."""

from __future__ import annotations

import math

import pytest
import torch

from dslo.head.pamr import pamr


def _naive(image, scores, steps, dilations):
    C, H, W = image.shape
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]

    def at(t, r, c):
        return t[:, min(max(r, 0), H - 1), min(max(c, 0), W - 1)]

    weights = {}
    for r in range(H):
        for c in range(W):
            ring = [at(image, r + d * dr, c + d * dc) for d in dilations for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
            ring = torch.stack(ring).double()  # (9·D, C)
            std = ring.std(0)
            logit = []
            for d in dilations:
                for dr, dc in offsets:
                    diff = (image[:, r, c].double() - at(image, r + d * dr, c + d * dc).double()).abs()
                    logit.append((-diff / (1e-8 + 0.1 * std)).mean())
            e = [math.exp(v) for v in logit]
            weights[r, c] = [v / sum(e) for v in e]
    m = scores.double()
    for _ in range(steps):
        out = torch.zeros_like(m)
        for r in range(H):
            for c in range(W):
                j = 0
                for d in dilations:
                    for dr, dc in offsets:
                        out[:, r, c] += weights[r, c][j] * at(m, r + d * dr, c + d * dc)
                        j += 1
        m = out
    return m


@pytest.mark.parametrize("dilations", [(1,), (1, 2)])
def test_pamr_equals_naive_loop(dilations):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 6, 7, generator=g)
    scores = torch.rand(4, 6, 7, generator=g)
    out = pamr(image, scores, steps=3, dilations=dilations)
    torch.testing.assert_close(out.double(), _naive(image, scores, 3, dilations), atol=1e-5, rtol=1e-5)
    # a convex combination of neighbours: spatially constant scores are a fixed point
    flat = torch.rand(4, 1, 1, generator=g).expand(4, 6, 7)
    torch.testing.assert_close(pamr(image, flat, steps=3, dilations=dilations), flat.contiguous())


def test_pamr_ignores_per_channel_normalisation_and_checks_shapes():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 9, 11, generator=g)
    scores = torch.rand(2, 9, 11, generator=g)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(3, 1, 1)
    torch.testing.assert_close(pamr(image, scores), pamr((image - mean) / std, scores), atol=1e-5, rtol=1e-4)
    assert torch.equal(pamr(image, scores, steps=0), scores)
    with pytest.raises(ValueError, match="share H, W"):
        pamr(image, scores[:, :5])
