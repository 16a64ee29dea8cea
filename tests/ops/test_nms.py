"""fastladder.ops.nms and batched_nms against torchvision.ops (the oracle) and the pure-PyTorch
reference: clustered boxes with heavy overlap, ties, degenerate and non-finite boxes, 0/1/many
boxes, float16/bfloat16/float32/float64; opcheck; torch.compile; bad input."""
import pytest
import torch
import torchvision
from torchvision.ops import boxes as tv_boxes

from fastladder import ops
from fastladder._box_samples import clustered_boxes, random_boxes
from fastladder.reference import boxes as reference
from fastladder.testing import DEVICES

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def unique_scores(n, generator, dtype=torch.float32):
    """n distinct scores in random order (no ties: the kept order is then fully specified)."""
    return ((torch.randperm(n, generator=generator).double() + 1) / (n + 1)).to(dtype)


def assert_valid_nms(keep, boxes, scores, threshold):
    """The defining properties of a greedy NMS result, whatever the order among equal scores: kept
    boxes by non-increasing score, no two kept boxes overlap above the threshold, and every dropped
    box overlaps a kept box of at least its score above the threshold."""
    b, s = boxes.double(), scores.double()
    assert torch.all(s[keep][1:] <= s[keep][:-1])
    iou = reference.box_iou(b, b)
    kept_iou = iou[keep][:, keep]
    kept_iou.fill_diagonal_(0)
    assert not torch.any(kept_iou > threshold)
    dropped = torch.ones(len(b), dtype=torch.bool)
    dropped[keep] = False
    for j in torch.nonzero(dropped).flatten():
        assert torch.any((iou[keep, j] > threshold) & (s[keep] >= s[j])), (
            f"box {int(j)} dropped without a suppressor")


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("n", [1, 2, 37, 300, 1500])
def test_nms_matches_torchvision_on_clustered_boxes(n, threshold, generator, seed):
    boxes, _ = clustered_boxes(n, generator, boxes_per_cluster=10)
    scores = unique_scores(n, generator)
    keep = ops.nms(boxes, scores, threshold)
    expected = torchvision.ops.nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, expected), f"seed {seed}: {len(keep)} kept, torchvision {len(expected)}"


@pytest.mark.parametrize("n", [40, 2000])
def test_nms_matches_torchvision_on_uniform_boxes_of_mixed_sizes(n, generator, seed):
    # sizes over two orders of magnitude: several size groups in the sweep
    boxes = random_boxes(n, generator, min_size=1.0, max_size=400.0)
    scores = unique_scores(n, generator)
    for threshold in (0.1, 0.45):
        assert torch.equal(ops.nms(boxes, scores, threshold),
                           torchvision.ops.nms(boxes, scores, threshold)), seed


@pytest.mark.parametrize("n", [60, 800])
def test_nms_with_tied_scores(n, generator, seed):
    boxes, _ = clustered_boxes(n, generator, boxes_per_cluster=6)
    scores = torch.randint(0, 4, (n,), generator=generator).float()  # many exact ties
    keep = ops.nms(boxes, scores, 0.5)
    # the reference breaks ties by index, as fastladder does: identical
    assert torch.equal(keep, reference.nms(boxes, scores, 0.5)), seed
    # torchvision may order ties differently: both must be valid greedy NMS results
    assert_valid_nms(keep, boxes, scores, 0.5)
    assert_valid_nms(torchvision.ops.nms(boxes, scores, 0.5), boxes, scores, 0.5)


def test_nms_identical_boxes_keeps_the_best(generator):
    box = random_boxes(1, generator)
    boxes = box.repeat(5, 1)
    scores = unique_scores(5, generator)
    assert ops.nms(boxes, scores, 0.99).tolist() == [int(scores.argmax())]
    # IoU is exactly 1, not above 1: nothing is suppressed at threshold 1
    assert ops.nms(boxes, scores, 1.0).tolist() == torch.argsort(scores, descending=True).tolist()


@pytest.mark.parametrize("n", [40, 1500])  # the candidate-vs-kept test and the sorted sweep
def test_nms_degenerate_boxes_overlap_nothing(n, generator, seed):
    boxes, _ = clustered_boxes(n, generator, boxes_per_cluster=40)
    boxes = boxes.clone()
    boxes[0, 2] = boxes[0, 0]          # zero width
    boxes[1, 3] = boxes[1, 1]          # zero height
    boxes[2] = boxes[2, [2, 3, 0, 1]]  # inverted
    boxes[3] = boxes[4]                # a duplicate of a proper box
    boxes[5, 2:] = boxes[5, :2]        # a point
    boxes[6:n:7, 2] = boxes[6:n:7, 0]  # many more zero-width boxes
    scores = unique_scores(n, generator)
    scores[[0, 1, 2, 5]] = 2.0 + torch.arange(4.0)  # the degenerate boxes first
    keep = ops.nms(boxes, scores, 0.3)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.3)), seed
    assert {0, 1, 2, 5} <= set(keep.tolist())


def test_nms_drops_non_finite_boxes_and_scores(generator, seed):
    boxes, _ = clustered_boxes(200, generator, boxes_per_cluster=10)
    scores = unique_scores(200, generator)
    boxes[3, 0] = float("nan")
    boxes[7, 2] = float("inf")
    boxes[11, 1] = -float("inf")
    scores[13] = float("nan")
    scores[17] = float("inf")
    scores[19] = -float("inf")
    keep = ops.nms(boxes, scores, 0.5)
    finite = torch.tensor([i for i in range(200) if i not in (3, 7, 11, 13, 17, 19)])
    expected = finite[torchvision.ops.nms(boxes[finite], scores[finite], 0.5)]
    assert torch.equal(keep, expected), seed
    assert torch.equal(keep, reference.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_nms_dtypes(dtype, generator, seed):
    boxes, _ = clustered_boxes(400, generator, boxes_per_cluster=8, image_size=200.0, dtype=dtype)
    scores = torch.rand(400, generator=generator).to(dtype)
    keep = ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep, reference.nms(boxes, scores, 0.5)), seed
    if dtype == torch.float64:
        # torchvision's CPU kernel has no float16/bfloat16; float64 is computed in float64 by both
        assert_valid_nms(keep, boxes, scores, 0.5)
        scores = unique_scores(400, generator, dtype)
        assert torch.equal(ops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    else:
        # float16/bfloat16 are computed in float32: as torchvision on the float32 values (stable ties)
        assert torch.equal(keep, reference.nms(boxes.float(), scores.float(), 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_nms_empty(device):
    boxes = torch.empty(0, 4, device=device)
    keep = ops.nms(boxes, torch.empty(0, device=device), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device.type == device
    keep = ops.batched_nms(boxes, torch.empty(0, device=device),
                           torch.empty(0, dtype=torch.int64, device=device), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


def test_nms_single_box(generator):
    boxes = random_boxes(1, generator)
    assert ops.nms(boxes, torch.rand(1, generator=generator), 0.5).tolist() == [0]


def test_nms_accepts_non_contiguous_inputs(generator, seed):
    boxes, scores = clustered_boxes(300, generator)
    wide = torch.cat([boxes, boxes], dim=1)[:, ::2]  # strided view of other values
    assert torch.equal(ops.nms(wide, scores, 0.5), torchvision.ops.nms(wide.contiguous(), scores, 0.5)), seed


# --- batched_nms -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n,classes", [(1, 1), (50, 3), (700, 5), (3000, 80)])
def test_batched_nms_matches_torchvision(n, classes, generator, seed):
    boxes, _ = clustered_boxes(n, generator, boxes_per_cluster=15)
    scores = unique_scores(n, generator)
    idxs = torch.randint(0, classes, (n,), generator=generator)
    keep = ops.batched_nms(boxes, scores, idxs, 0.5)
    # torchvision's per-class form computes the same IoUs (its offset form rounds the offset coordinates)
    assert torch.equal(keep, tv_boxes._batched_nms_vanilla(boxes, scores, idxs, 0.5)), seed
    assert torch.equal(keep, reference.batched_nms(boxes, scores, idxs, 0.5)), seed


def test_batched_nms_matches_torchvision_offset_trick_on_integer_boxes(generator, seed):
    # integer coordinates: the offset trick is exact, so torchvision's default path must agree exactly
    corner = torch.randint(0, 100, (300, 2), generator=generator)
    boxes = torch.cat([corner, corner + torch.randint(1, 40, (300, 2), generator=generator)], dim=1).float()
    scores = unique_scores(300, generator)
    idxs = torch.randint(0, 4, (300,), generator=generator)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.4),
                       torchvision.ops.batched_nms(boxes, scores, idxs, 0.4))


def test_batched_nms_category_values_are_arbitrary(generator, seed):
    boxes, _ = clustered_boxes(500, generator, boxes_per_cluster=25)
    scores = unique_scores(500, generator)
    dense = torch.randint(0, 6, (500,), generator=generator)
    expected = ops.batched_nms(boxes, scores, dense, 0.5)
    values = torch.tensor([-(2**62), -7, 0, 3, 10**12, 2**62])  # sparse and negative categories
    assert torch.equal(ops.batched_nms(boxes, scores, values[dense], 0.5), expected), seed
    assert torch.equal(ops.batched_nms(boxes, scores, dense.to(torch.int32), 0.5), expected)


def test_batched_nms_one_category_is_nms(generator, seed):
    boxes, _ = clustered_boxes(800, generator)
    scores = unique_scores(800, generator)
    idxs = torch.full((800,), 3)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), ops.nms(boxes, scores, 0.5)), seed


# --- CPU vs CUDA -----------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("n", [1, 64, 65, 1000, 5000])
def test_nms_cuda_matches_cpu(n, generator, seed):
    """Exactly fastladder's CPU result: both backends test the same IoU expression with the same
    rounding (common/iou.h, products rounded on their own). (torchvision's CUDA kernel contracts
    its products into FMAs, so it may legitimately decide otherwise at IoUs within an ulp of the
    threshold: it is not the reference here.)"""
    boxes, _ = clustered_boxes(n, generator)
    scores = unique_scores(n, generator)
    for threshold in (0.0, 0.5, 0.7, 1.0):
        cpu = ops.nms(boxes, scores, threshold)
        cuda = ops.nms(boxes.cuda(), scores.cuda(), threshold)
        assert torch.equal(cuda.cpu(), cpu), seed
    idxs = torch.randint(0, 7, (n,), generator=generator)
    assert torch.equal(ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu(),
                       ops.batched_nms(boxes, scores, idxs, 0.5)), seed


@pytest.mark.cuda
def test_nms_cuda_ties_and_non_finite(generator, seed):
    boxes, _ = clustered_boxes(500, generator, boxes_per_cluster=5)
    scores = torch.randint(0, 3, (500,), generator=generator).half()
    boxes = boxes.half()
    boxes[4, 1] = float("nan")
    scores[9] = float("inf")
    keep = ops.nms(boxes.cuda(), scores.cuda(), 0.5).cpu()
    assert torch.equal(keep, ops.nms(boxes, scores, 0.5)), seed  # ties by index on both backends
    assert 4 not in keep.tolist() and 9 not in keep.tolist()
    finite = torch.tensor([i for i in range(500) if i not in (4, 9)])
    assert_valid_nms(keep.apply_(lambda i: int((finite == i).nonzero())), boxes[finite].float(),
                     scores[finite].float(), 0.5)


# --- operator checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_nms_opcheck(device, generator):
    boxes, scores = clustered_boxes(120, generator)
    idxs = torch.randint(0, 3, (120,), generator=generator)
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    torch.library.opcheck(torch.ops.fastladder.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.fastladder.batched_nms.default, (boxes, scores, idxs, 0.5))
    torch.library.opcheck(torch.ops.fastladder.nms.default, (boxes[:0], scores[:0], 0.5))


def test_nms_torch_compile_fullgraph(generator, seed):
    boxes, scores = clustered_boxes(300, generator)
    idxs = torch.randint(0, 4, (300,), generator=generator)

    def select(boxes, scores, idxs):
        keep = ops.batched_nms(boxes, scores, idxs, 0.5)
        first = ops.nms(boxes, scores, 0.5)
        return boxes[keep], scores[keep], first

    compiled = torch.compile(select, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(boxes, scores, idxs), select(boxes, scores, idxs)):
        assert torch.equal(got, want), seed


@pytest.mark.parametrize("call,match", [
    (lambda b, s: ops.nms(b, s, 1.5), r"iou_threshold must be in \[0, 1\], got 1.5"),
    (lambda b, s: ops.nms(b, s, -0.1), r"iou_threshold must be in \[0, 1\]"),
    (lambda b, s: ops.nms(b[:, :3], s, 0.5), r"boxes must be an \[N, 4\] tensor .* got shape \[10, 3\]"),
    (lambda b, s: ops.nms(b, s[:9], 0.5),
     r"scores must be an \[N\] tensor .* got scores \[9\] for boxes \[10, 4\]"),
    (lambda b, s: ops.nms(b, s.double(), 0.5), r"boxes and scores must have the same dtype"),
    (lambda b, s: ops.nms(b.long(), s.long(), 0.5), r"boxes must be floating point"),
    (lambda b, s: ops.batched_nms(b, s, torch.zeros(9, dtype=torch.int64), 0.5),
     r"idxs must be an \[N\] tensor .* got idxs \[9\] for boxes \[10, 4\]"),
    (lambda b, s: ops.batched_nms(b, s, torch.zeros(10), 0.5), r"idxs must be an integer tensor"),
    (lambda b, s: ops.batched_nms(b, s, torch.zeros(10, dtype=torch.int64), 2.0),
     r"iou_threshold must be in"),
])
def test_nms_bad_input(call, match, generator):
    boxes = random_boxes(10, generator)
    scores = torch.rand(10, generator=generator)
    with pytest.raises(ValueError, match=match):
        call(boxes, scores)


@pytest.mark.slow
@pytest.mark.parametrize("n", [20000, 50000])
def test_nms_large(n, generator, seed):
    boxes, _ = clustered_boxes(n, generator)
    scores = unique_scores(n, generator)
    assert torch.equal(ops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5)), seed
    idxs = torch.randint(0, 80, (n,), generator=generator)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5),
                       tv_boxes._batched_nms_vanilla(boxes, scores, idxs, 0.5))
