"""Prior matching and MultiBoxLoss against the per-image loop references, hand-made matching cases
(forced matches, conflicts, ties, no prior above the threshold, padding, no ground truth), zero
positives, hard negative counts and gradients."""
import math

import pytest
import torch

from fastladder.models.ssd import SSD300_CONFIG, ssd_priors
from fastladder.ops.boxes import encode_boxes
from fastladder.reference import multibox as reference
from fastladder.train.multibox import MultiBoxLoss, match_priors, pad_ground_truth, priors_to_xyxy


@pytest.fixture(scope="module")
def priors():
    """The 8732 SSD300 priors, float64."""
    c = SSD300_CONFIG
    return ssd_priors(300, [38, 19, 10, 5, 3, 1], c["steps"], c["min_sizes"], c["max_sizes"],
                      c["aspect_ratios"], dtype=torch.float64)


def small_priors(generator, n=300):
    """Random priors (cx, cy, w, h) inside the unit square, float64."""
    centers = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    sizes = 0.02 + torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.5
    return torch.cat([centers, sizes], dim=1)


def random_ground_truth(generator, batch, most, num_classes=21, dtype=torch.float64):
    """Padded ground truth with a random number of objects per image (zero included)."""
    corner = torch.rand(batch, most, 2, generator=generator, dtype=torch.float64) * 0.8
    size = 0.01 + torch.rand(batch, most, 2, generator=generator, dtype=torch.float64) * 0.6
    boxes = torch.cat([corner, (corner + size).clamp(max=1.0)], dim=-1).to(dtype)
    labels = torch.randint(1, num_classes, (batch, most), generator=generator)
    counts = torch.randint(0, most + 1, (batch,), generator=generator)
    counts[0] = most
    if batch > 1:
        counts[1] = 0  # an image without objects
    labels[torch.arange(most)[None, :] >= counts[:, None]] = -1
    padding = labels < 0
    boxes[padding] = torch.rand(int(padding.sum()), 4, generator=generator, dtype=torch.float64).to(dtype)
    return boxes, labels


def xyxy(*boxes):
    return torch.tensor(boxes, dtype=torch.float64)


def as_priors(boxes_xyxy):
    low, high = boxes_xyxy[:, :2], boxes_xyxy[:, 2:]
    return torch.cat([(low + high) / 2, high - low], dim=1)


# --- matching -------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_priors", ["ssd300", 300])
def test_matching_matches_reference(generator, priors, num_priors):
    prior_set = priors if num_priors == "ssd300" else small_priors(generator)
    boxes, labels = random_ground_truth(generator, 4, 6)
    got_boxes, got_labels = match_priors(boxes, labels, prior_set)
    want_boxes, want_labels = reference.match_priors(boxes, labels, prior_set)
    assert torch.equal(got_labels, want_labels)
    assert torch.equal(got_boxes, want_boxes)
    assert got_boxes.shape == (4, prior_set.shape[0], 4) and got_labels.dtype == torch.int64
    # every valid ground truth got at least one prior; the image without objects none
    for b in range(4):
        valid = labels[b] >= 0
        assert (got_labels[b] > 0).sum() >= int(valid.sum()) > 0 or int(valid.sum()) == 0
    assert not (got_labels[1] > 0).any()
    torch.testing.assert_close(got_boxes[1], priors_to_xyxy(prior_set).expand_as(got_boxes[1]))


def test_matching_threshold_is_strict_and_on_best_overlap():
    gt = xyxy([0.0, 0.0, 0.4, 0.4])
    # prior 0: the gt itself (IoU 1, forced); prior 1: IoU exactly 0.5; prior 2: IoU 0.64; prior 3: IoU 0
    prior_boxes = xyxy([0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.4, 0.2], [0.0, 0.0, 0.4, 0.256],
                       [0.6, 0.6, 0.9, 0.9])
    matched, labels = match_priors(gt[None], torch.tensor([[7]]), as_priors(prior_boxes))
    assert labels.tolist() == [[7, 0, 7, 0]]
    assert torch.equal(matched[0, 0], gt[0]) and torch.equal(matched[0, 2], gt[0])
    _, labels = match_priors(gt[None], torch.tensor([[7]]), as_priors(prior_boxes), iou_threshold=0.499)
    assert labels.tolist() == [[7, 7, 7, 0]]


def test_forced_assignment_beats_a_higher_overlap():
    """Prior 0 is A's best prior but overlaps B more: it stays A's (SSD's rule); prior 1 is B's best."""
    prior_boxes = xyxy([0, 0, 0.4, 0.4], [0, 0, 0.5, 0.5])
    a, b = [0, 0, 0.3, 0.3], [0, 0, 0.45, 0.45]   # IoU(a) = 0.5625, 0.36; IoU(b) = 0.79, 0.81
    for gt, labels, expected in [(xyxy(a, b), [3, 5], [3, 5]), (xyxy(b, a), [5, 3], [3, 5])]:
        for fn in (match_priors, reference.match_priors):
            _, got = fn(gt[None], torch.tensor([labels]), as_priors(prior_boxes))
            assert got[0].tolist() == expected, fn.__module__


def test_conflicting_forced_assignments_go_to_the_highest_overlap():
    """A and C both want prior 0: C overlaps it more and takes it; A is left without a prior (as in
    SSD) and prior 1 goes to C by the threshold rule."""
    prior_boxes = xyxy([0, 0, 0.4, 0.4], [0, 0, 0.5, 0.5])
    a, c = [0, 0, 0.3, 0.3], [0, 0, 0.38, 0.38]   # IoU(a) = 0.5625, 0.36; IoU(c) = 0.9025, 0.5776
    for gt, labels in [(xyxy(a, c), [3, 4]), (xyxy(c, a), [4, 3])]:
        for fn in (match_priors, reference.match_priors):
            _, got = fn(gt[None], torch.tensor([labels]), as_priors(prior_boxes))
            assert got[0].tolist() == [4, 4], fn.__module__


def test_ties_go_to_the_lowest_index(generator):
    # two identical ground truths with different labels: every tie goes to the first
    prior_set = small_priors(generator, 200)
    box = [0.2, 0.3, 0.6, 0.7]
    matched, labels = match_priors(xyxy(box, box)[None], torch.tensor([[2, 9]]), prior_set)
    assert (labels == 2).any() and not (labels == 9).any()
    _, want = reference.match_priors(xyxy(box, box)[None], torch.tensor([[2, 9]]), prior_set)
    assert torch.equal(labels, want)
    # two identical priors: the first is the gt's best prior
    prior_boxes = xyxy([0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9])
    _, labels = match_priors(xyxy([0.05, 0.05, 0.3, 0.3])[None], torch.tensor([[1]]), as_priors(prior_boxes))
    assert labels.tolist() == [[1, 0, 0]]  # IoU 0.16 < 0.5: only the forced (first) prior


def test_ground_truth_with_no_prior_above_threshold(priors):
    tiny = xyxy([0.501, 0.502, 0.509, 0.511])  # far smaller than the smallest prior (0.1)
    iou_best = None
    matched, labels = match_priors(tiny[None], torch.tensor([[4]]), priors)
    assert int((labels > 0).sum()) == 1
    p = int(torch.nonzero(labels[0])[0])
    from fastladder.reference.boxes import box_iou
    iou = box_iou(tiny, priors_to_xyxy(priors))[0]
    iou_best = iou.max()
    assert iou_best < 0.5 and iou[p] == iou_best
    assert torch.equal(matched[0, p], tiny[0])
    _, want = reference.match_priors(tiny[None], torch.tensor([[4]]), priors)
    assert torch.equal(labels, want)


def test_no_ground_truth_and_list_input(generator, priors):
    no_boxes, no_labels = torch.zeros(2, 0, 4, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.int64)
    matched, labels = match_priors(no_boxes, no_labels, priors)
    assert matched.shape == (2, 8732, 4) and not labels.any()
    torch.testing.assert_close(matched[1], priors_to_xyxy(priors))
    assert encode_boxes(matched, priors).abs().max() < 1e-9  # background targets are zero offsets
    boxes, padded_labels = random_ground_truth(generator, 3, 5)
    per_image_boxes = [boxes[b][padded_labels[b] >= 0] for b in range(3)]
    per_image_labels = [padded_labels[b][padded_labels[b] >= 0] for b in range(3)]
    got = match_priors(per_image_boxes, per_image_labels, priors)
    want = match_priors(boxes, padded_labels, priors)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    padded, padded_labels2 = pad_ground_truth(per_image_boxes, per_image_labels)
    assert padded.shape[1] == max(len(x) for x in per_image_labels)
    assert (padded_labels2[1] == -1).all()


def test_matching_errors(priors):
    boxes = xyxy([0.1, 0.1, 0.3, 0.3])[None]
    with pytest.raises(ValueError, match="image 0, row 0.*label 0"):
        match_priors(boxes, torch.tensor([[0]]), priors)
    with pytest.raises(ValueError, match="x2 > x1"):
        match_priors(xyxy([0.3, 0.1, 0.1, 0.3])[None], torch.tensor([[1]]), priors)
    with pytest.raises(ValueError, match=r"gt_boxes must be \[B, M, 4\]"):
        match_priors(boxes[0], torch.tensor([1]), priors)
    with pytest.raises(ValueError, match=r"gt_boxes\[1\] must be \[M, 4\]"):
        match_priors([boxes[0], torch.zeros(2, 3)], [torch.tensor([1]), torch.tensor([1, 2])], priors)
    with pytest.raises(ValueError, match=r"priors must be a \[P, 4\]"):
        match_priors(boxes, torch.tensor([[1]]), priors[:, :3])
    # padding rows may hold anything
    match_priors(torch.cat([boxes, xyxy([0.5, 0.5, 0.1, 0.1])[None]], dim=1), torch.tensor([[1, -1]]), priors)


# --- loss -----------------------------------------------------------------------------------------

def head_outputs(generator, batch, num_priors, num_classes, dtype=torch.float64):
    loc = torch.randn(batch, num_priors, 4, generator=generator, dtype=torch.float64).to(dtype)
    conf = torch.randn(batch, num_priors, num_classes, generator=generator, dtype=torch.float64) * 2
    conf = conf.to(dtype)
    return loc.requires_grad_(), conf.requires_grad_()


@pytest.mark.parametrize("options", [{}, dict(neg_pos_ratio=2.5, min_negatives=7), dict(iou_threshold=0.4)])
def test_loss_matches_reference(generator, priors, options):
    boxes, labels = random_ground_truth(generator, 3, 5)
    loc, conf = head_outputs(generator, 3, priors.shape[0], 21)
    loss, parts = MultiBoxLoss(21, **options)(loc, conf, priors, boxes, labels)
    want, want_parts = reference.multibox_loss(loc, conf, priors, boxes, labels, **options)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(parts["loc"], want_parts["loc"])
    torch.testing.assert_close(parts["conf"], want_parts["conf"])
    assert not parts["loc"].requires_grad and not parts["conf"].requires_grad
    got_grads = torch.autograd.grad(loss, [loc, conf])
    want_grads = torch.autograd.grad(want, [loc, conf])
    for got, expected in zip(got_grads, want_grads):
        torch.testing.assert_close(got, expected)


def test_loss_float32_matches_reference(generator, priors):
    boxes, labels = random_ground_truth(generator, 2, 4, num_classes=3, dtype=torch.float32)
    loc, conf = head_outputs(generator, 2, priors.shape[0], 3, dtype=torch.float32)
    loss, _ = MultiBoxLoss(3)(loc, conf, priors.float(), boxes, labels)
    want, _ = reference.multibox_loss(loc, conf, priors.float(), boxes, labels)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)


def test_gradients_only_on_positives_and_mined_negatives(generator, priors):
    boxes, labels = random_ground_truth(generator, 2, 4)
    labels[1, 0] = 5  # both images have objects
    boxes[1, 0] = xyxy([0.2, 0.2, 0.6, 0.5])[0]
    loc, conf = head_outputs(generator, 2, priors.shape[0], 21)
    loss, _ = MultiBoxLoss(21)(loc, conf, priors, boxes, labels)
    loss.backward()
    _, matched_labels = match_priors(boxes, labels, priors)
    for b in range(2):
        positive = matched_labels[b] > 0
        num_positive = int(positive.sum())
        assert (loc.grad[b][~positive] == 0).all() and (loc.grad[b][positive].abs().sum(-1) > 0).all()
        touched = conf.grad[b].abs().sum(-1) > 0
        assert touched[positive].all()
        assert int(touched[~positive].sum()) == 3 * num_positive  # 3:1 hard negatives
        # the mined negatives are the background priors of highest loss
        ce = -torch.log_softmax(conf[b].detach(), dim=-1)[:, 0]
        assert ce[~positive & touched].min() >= ce[~positive & ~touched].max()


def test_zero_positives(generator, priors):
    loc, conf = head_outputs(generator, 2, priors.shape[0], 4)
    no_boxes, no_labels = torch.zeros(2, 0, 4, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.int64)
    loss, parts = MultiBoxLoss(4)(loc, conf, priors, no_boxes, no_labels)
    assert loss.item() == 0 and parts["loc"].item() == 0 and parts["conf"].item() == 0
    loss.backward()
    assert (loc.grad == 0).all() and (conf.grad == 0).all()
    # min_negatives: the k hardest background priors per image, divided by 1
    loss, parts = MultiBoxLoss(4, min_negatives=5)(loc, conf, priors, no_boxes, no_labels)
    ce = -torch.log_softmax(conf.detach(), dim=-1)[..., 0]
    expected = ce.sort(dim=1, descending=True).values[:, :5].sum()
    torch.testing.assert_close(parts["conf"], expected)
    assert parts["loc"].item() == 0
    want, _ = reference.multibox_loss(loc, conf, priors, no_boxes, no_labels, min_negatives=5)
    torch.testing.assert_close(loss, want)


def test_empty_batch(priors):
    loc = torch.zeros(0, 8732, 4, dtype=torch.float64, requires_grad=True)
    conf = torch.zeros(0, 8732, 3, dtype=torch.float64, requires_grad=True)
    loss, parts = MultiBoxLoss(3)(loc, conf, priors, torch.zeros(0, 2, 4, dtype=torch.float64),
                                  torch.zeros(0, 2, dtype=torch.int64))
    loss.backward()
    assert loss.item() == 0 and parts["loc"].item() == 0 and loc.grad.shape == (0, 8732, 4)


def test_perfect_prediction_has_zero_box_loss(generator, priors):
    boxes, labels = random_ground_truth(generator, 2, 3)
    matched, _ = match_priors(boxes, labels, priors)
    loc = encode_boxes(matched, priors)
    conf = torch.zeros(2, priors.shape[0], 21, dtype=torch.float64)
    _, parts = MultiBoxLoss(21)(loc, conf, priors, boxes, labels)
    assert parts["loc"].item() < 1e-20
    num_positive = int((match_priors(boxes, labels, priors)[1] > 0).sum())
    torch.testing.assert_close(parts["conf"].item(), 4 * num_positive * math.log(21) / num_positive)


def test_loss_errors(priors):
    loss = MultiBoxLoss(3)
    loc, conf = torch.zeros(1, 8732, 4, dtype=torch.float64), torch.zeros(1, 8732, 3, dtype=torch.float64)
    boxes, labels = xyxy([0.1, 0.1, 0.3, 0.3])[None], torch.tensor([[1]])
    with pytest.raises(ValueError, match=r"conf_logits \[B, P, 3\]"):
        loss(loc, conf[..., :2], priors, boxes, labels)
    with pytest.raises(ValueError, match=r"priors must be \[P, 4\] with P = 8732"):
        loss(loc, conf, priors[:100], boxes, labels)
    with pytest.raises(ValueError, match=r"label 3.*labels 1 … 2"):
        loss(loc, conf, priors, boxes, torch.tensor([[3]]))
    with pytest.raises(ValueError, match="ground truth for 2 images, predictions for 1"):
        loss(loc, conf, priors, boxes.expand(2, 1, 4), labels.expand(2, 1))
    with pytest.raises(ValueError, match="num_classes"):
        MultiBoxLoss(1)


@pytest.mark.cuda
def test_cuda_matches_cpu(generator, priors):
    boxes, labels = random_ground_truth(generator, 3, 5, dtype=torch.float32)
    loc, conf = head_outputs(generator, 3, priors.shape[0], 21, dtype=torch.float32)
    want, want_parts = MultiBoxLoss(21)(loc, conf, priors.float(), boxes, labels)
    got, parts = MultiBoxLoss(21)(loc.detach().cuda(), conf.detach().cuda(), priors.float().cuda(),
                                  boxes.cuda(), labels.cuda())
    torch.testing.assert_close(got.cpu(), want.detach(), rtol=1e-5, atol=1e-5)
    matched = match_priors(boxes.cuda(), labels.cuda(), priors.float().cuda())
    assert torch.equal(matched[1].cpu(), match_priors(boxes, labels, priors.float())[1])
