"""fastladder.eval.confusion_matrix and mean_iou against an independent per-class count."""
import math

import pytest
import torch

from fastladder.eval import confusion_matrix, mean_iou


def brute_force_iou(pred, target, num_classes, ignore_index=255):
    """IoU per class by counting pixel sets class by class (no confusion matrix)."""
    valid = target != ignore_index
    ious = []
    for c in range(num_classes):
        p, t = (pred == c) & valid, (target == c) & valid
        union = (p | t).sum().item()
        ious.append((p & t).sum().item() / union if union else math.nan)
    return ious


def test_matches_brute_force(generator):
    num_classes = 7
    target = torch.randint(0, num_classes, (3, 31, 45), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.1] = 255
    # predictions: mostly right, some wrong, class 6 never predicted nor present in some images
    pred = torch.where(torch.rand(target.shape, generator=generator) < 0.7, target.clamp(max=num_classes - 1),
                       torch.randint(0, num_classes, target.shape, generator=generator))
    confusion = confusion_matrix(pred, target, num_classes)
    assert confusion.shape == (num_classes, num_classes) and confusion.dtype == torch.int64
    assert confusion.sum().item() == (target != 255).sum().item()
    result = mean_iou(confusion)
    expected = brute_force_iou(pred, target, num_classes)
    torch.testing.assert_close(result["iou"], torch.tensor(expected, dtype=torch.float64), equal_nan=True)
    defined = [v for v in expected if not math.isnan(v)]
    assert result["miou"] == pytest.approx(sum(defined) / len(defined))
    valid = target != 255
    assert result["pixel_accuracy"] == pytest.approx((pred[valid] == target[valid]).double().mean().item())


def test_matrices_of_batches_add_up(generator):
    target = torch.randint(0, 4, (4, 9, 11), generator=generator)
    pred = torch.randint(0, 4, (4, 9, 11), generator=generator)
    whole = confusion_matrix(pred, target, 4)
    parts = sum(confusion_matrix(pred[i:i + 1], target[i:i + 1], 4) for i in range(4))
    assert torch.equal(whole, parts)


def test_absent_class_is_left_out_and_only_predicted_class_counts_zero():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 2]])
    result = mean_iou(confusion_matrix(pred, target, 4))
    assert result["iou"][0] == 1.0 and result["iou"][1] == 0.5 and result["iou"][2] == 0.0
    assert math.isnan(result["iou"][3].item())
    assert result["miou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert result["pixel_accuracy"] == pytest.approx(0.75)


def test_ignored_pixels_do_not_count_whatever_is_predicted_there():
    target = torch.tensor([255, 255, 1])
    pred = torch.tensor([0, 99, 1])  # 99 is out of range but sits on an ignored pixel
    assert confusion_matrix(pred, target, 2).tolist() == [[0, 0], [0, 1]]


@pytest.mark.parametrize("pred,target,num_classes,match", [
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2,
     r"same shape, got \(2, 3\) and \(3, 2\)"),
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), 2, r"pred must hold integer class ids"),
    (torch.tensor([0, 5]), torch.tensor([0, 1]), 2, r"pred holds ids outside \[0, 2\).*\[5\]"),
    (torch.tensor([0, 1]), torch.tensor([0, 7]), 2, r"target holds ids outside \[0, 2\).*\[7\]"),
    (torch.tensor([0]), torch.tensor([0]), 0, r"num_classes must be a positive int"),
])
def test_bad_input(pred, target, num_classes, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, num_classes)


def test_mean_iou_needs_a_square_matrix():
    with pytest.raises(ValueError, match=r"square \[C, C\] matrix, got shape \(2, 3\)"):
        mean_iou(torch.zeros(2, 3))
