"""IoUAccumulator against a hand-computed confusion matrix and against torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dslo.eval.metrics import IoUAccumulator, _confusion_torch, confusion_matrix


def test_hand_computed_confusion_matrix():
    # 4 classes; class 3 appears nowhere; 255 pixels are ignored whatever is predicted there.
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255], [0, 1, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 3], [0, 1, 1, 2]])
    cm = confusion_matrix(pred, target, 4).numpy()
    expected = np.zeros((4, 5), dtype=np.int64)
    # row = target, column = prediction
    expected[0, 0] = 2; expected[0, 1] = 1          # target 0: (0,0)->0 (0,1)->1 (2,0)->0
    expected[1, 1] = 3                              # target 1: (0,2) (0,3) (2,1) -> 1
    expected[2, 2] = 2; expected[2, 0] = 1; expected[2, 1] = 1  # (1,0)->2 (1,1)->0 (2,2)->1 (2,3)->2
    np.testing.assert_array_equal(cm, expected)

    acc = IoUAccumulator(4, class_names=["a", "b", "c", "d"])
    acc.update(pred, target)
    r = acc.compute()
    # I = diag = [2, 3, 2, 0]; label areas [3, 3, 4, 0]; pred areas [3, 5, 2, 0]
    # U = [3+3-2, 3+5-3, 4+2-2, 0] = [4, 5, 4, 0]
    assert r["iou"][:3] == pytest.approx([50.0, 60.0, 50.0])
    assert math.isnan(r["iou"][3])  # absent from prediction and label: excluded from the mean
    assert r["miou"] == pytest.approx((50 + 60 + 50) / 3)
    assert r["aacc"] == pytest.approx(7 / 10 * 100)
    assert r["per_class"]["b"] == pytest.approx(60.0)


def test_accumulates_over_images_not_mean_of_images():
    acc = IoUAccumulator(2)
    acc.update(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]))  # per-image class-0 IoU 75
    acc.update(np.array([1]), np.array([0]))                   # per-image class-0 IoU 0
    # dataset level: class 0 I = 3, U = 5 → 60; class 1 I = 0, U = 2 → 0
    r = acc.compute()
    assert r["iou"] == pytest.approx([60.0, 0.0])
    assert r["images"] == 2


def test_prediction_outside_range_counts_as_wrong_and_bad_label_raises():
    acc = IoUAccumulator(2)
    acc.update(np.array([0, 7, -1]), np.array([0, 1, 1]))
    assert acc.compute()["iou"] == pytest.approx([100.0, 0.0])
    with pytest.raises(ValueError, match="outside 0..1"):
        acc.update(np.array([0]), np.array([11]))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="integer"):
        acc.update(np.zeros(3), np.zeros(3, int))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchmetrics_on_random_data(seed):
    from torchmetrics.classification import MulticlassJaccardIndex

    k = 9
    g = torch.Generator().manual_seed(seed)
    ours = IoUAccumulator(k)
    ref = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average=None, zero_division=float("nan"))
    ref_macro = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="macro")
    for _ in range(4):
        # classes 7 and 8 never occur anywhere (absent from both prediction and label)
        target = torch.randint(0, 7, (23, 31), generator=g)
        target[torch.rand(23, 31, generator=g) < 0.1] = 255
        pred = torch.randint(0, 7, (23, 31), generator=g)
        pred[torch.rand(23, 31, generator=g) < 0.3] = 6  # skew so IoUs differ per class
        target[:, :3] = torch.where(target[:, :3] == 255, 255, 5)  # class 5 over-represented
        ours.update(pred, target)
        ref.update(pred, target)
        ref_macro.update(pred, target)
    r = ours.compute()
    expected = ref.compute().numpy() * 100
    np.testing.assert_allclose(np.array(r["iou"]), expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(r["iou"][7]) and np.isnan(r["iou"][8])
    assert r["miou"] == pytest.approx(float(ref_macro.compute()) * 100, rel=1e-6)


def test_merge_equals_single_pass():
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, 5, (8, 8)), rng.integers(0, 5, (8, 8))) for _ in range(6)]
    whole, a, b = IoUAccumulator(5), IoUAccumulator(5), IoUAccumulator(5)
    for i, (p, t) in enumerate(data):
        whole.update(p, t)
        (a if i % 2 else b).update(p, t)
    assert a.merge(b).compute() == whole.compute()


def test_device_path_matches_numpy_path():
    # Accelerator tensors are counted with torch on their device; same counts as the numpy path.
    rng = np.random.default_rng(3)
    target = rng.integers(0, 6, (17, 19))
    target[rng.random((17, 19)) < 0.2] = 255
    pred = rng.integers(-1, 8, (17, 19))  # includes out-of-range predictions
    expected = confusion_matrix(pred, target, 6)
    got = _confusion_torch(torch.from_numpy(pred), torch.from_numpy(target), 6, 255)
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="outside 0..5"):
        _confusion_torch(torch.tensor([0]), torch.tensor([9]), 6, 255)
