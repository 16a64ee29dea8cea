"""fastladder.ops.box_iou against torchvision.ops.box_iou and the reference; degenerate boxes,
dtypes, gradients, opcheck, torch.compile, bad input."""
import pytest
import torch
import torchvision

from fastladder import ops
from fastladder._box_samples import clustered_boxes, random_boxes
from fastladder.reference import boxes as reference
from fastladder.testing import DEVICES, TOLERANCES, assert_close_to_reference


@pytest.mark.parametrize("n,m", [(1, 1), (7, 300), (300, 5), (257, 129)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_matches_torchvision(n, m, dtype, generator, seed):
    a, _ = clustered_boxes(n, generator, boxes_per_cluster=3, image_size=300.0, dtype=dtype)
    b, _ = clustered_boxes(m, generator, boxes_per_cluster=3, image_size=300.0, dtype=dtype)
    got = ops.box_iou(a, b)
    assert got.shape == (n, m) and got.dtype == dtype
    # same formula, same order of operations: equal to the last bit
    assert torch.equal(got, torchvision.ops.box_iou(a, b)), seed
    assert torch.equal(got, reference.box_iou(a, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_box_iou_low_precision(dtype, generator, seed):
    a, _ = clustered_boxes(60, generator, boxes_per_cluster=4, image_size=100.0, dtype=dtype)
    b, _ = clustered_boxes(50, generator, boxes_per_cluster=4, image_size=100.0, dtype=dtype)
    got = ops.box_iou(a, b)
    assert got.dtype == dtype
    # computed in float32 from the same values, rounded once
    assert torch.equal(got, reference.box_iou(a, b)), seed
    assert torch.equal(got, torchvision.ops.box_iou(a.float(), b.float()).to(dtype))
    # torchvision rounds every step to the low precision dtype: close, not equal
    torch.testing.assert_close(got.double(), torchvision.ops.box_iou(a, b).double(), **TOLERANCES[dtype],
                               msg=lambda m: f"seed {seed}: {m}")


def test_box_iou_degenerate_boxes(generator):
    proper = random_boxes(3, generator, image_size=10.0)
    point = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    line = torch.tensor([[0.0, 5.0, 10.0, 5.0]])
    inverted = proper[:1, [2, 3, 0, 1]]
    boxes = torch.cat([proper, point, line, inverted, point])
    got = ops.box_iou(boxes, boxes)
    torchvision_iou = torchvision.ops.box_iou(boxes, boxes)
    # torchvision's 0 / 0 is NaN; fastladder reports 0 there, and agrees everywhere else
    nan = torch.isnan(torchvision_iou)
    assert nan.any()
    assert torch.all(got[nan] == 0)
    assert torch.equal(got[~nan], torchvision_iou[~nan])
    assert torch.all(got[3:, :] == 0) and torch.all(got[:, 3:] == 0)
    assert torch.allclose(got[:3, :3].diagonal(), torch.ones(3))


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_empty(device):
    a = torch.rand(5, 4, device=device)
    assert ops.box_iou(a, a[:0]).shape == (5, 0)
    assert ops.box_iou(a[:0], a).shape == (0, 5)
    assert ops.box_iou(a[:0], a[:0]).shape == (0, 0)


def test_box_iou_gradients(generator, seed):
    a, _ = clustered_boxes(9, generator, boxes_per_cluster=3, image_size=50.0, dtype=torch.float64)
    b, _ = clustered_boxes(7, generator, boxes_per_cluster=3, image_size=50.0, dtype=torch.float64)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(ops.box_iou, (a, b)), seed
    weight = torch.rand(9, 7, generator=generator, dtype=torch.float64)
    got = torch.autograd.grad((ops.box_iou(a, b) * weight).sum(), (a, b))
    want = torch.autograd.grad((reference.box_iou(a, b) * weight).sum(), (a, b))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_box_iou_cuda_matches_cpu(dtype, generator, seed):
    a, _ = clustered_boxes(300, generator, dtype=dtype)
    b, _ = clustered_boxes(200, generator, dtype=dtype)
    assert_close_to_reference(ops.box_iou(a.cuda(), b.cuda()).cpu(), ops.box_iou(a, b), seed=seed)


@pytest.mark.parametrize("device", DEVICES)
def test_box_iou_opcheck(device, generator):
    a, _ = clustered_boxes(20, generator, dtype=torch.float64)
    b, _ = clustered_boxes(30, generator, dtype=torch.float64)
    a, b = a.to(device).requires_grad_(True), b.to(device)
    torch.library.opcheck(torch.ops.fastladder.box_iou.default, (a, b))
    torch.library.opcheck(torch.ops.fastladder.box_iou.default, (a[:0].detach(), b))


def test_box_iou_torch_compile_fullgraph(generator, seed):
    a, _ = clustered_boxes(40, generator)
    b, _ = clustered_boxes(50, generator)
    compiled = torch.compile(lambda x, y: ops.box_iou(x, y).max(dim=1).values, fullgraph=True,
                             backend="aot_eager")
    assert torch.equal(compiled(a, b), ops.box_iou(a, b).max(dim=1).values), seed


@pytest.mark.parametrize("a_shape,b_shape,kw,match", [
    ((5, 3), (4, 4), {}, r"boxes1 must be an \[N, 4\] tensor .* got shape \[5, 3\]"),
    ((5, 4), (4,), {}, r"boxes2 must be an \[M, 4\] tensor .* got shape \[4\]"),
    ((5, 4), (4, 4), {"dtype2": torch.float64},
     r"boxes1 and boxes2 must have the same dtype, got Float and Double"),
    ((5, 4), (4, 4), {"dtype1": torch.int64, "dtype2": torch.int64}, r"boxes1 must be floating point"),
])
def test_box_iou_bad_input(a_shape, b_shape, kw, match):
    a = torch.ones(a_shape, dtype=kw.get("dtype1", torch.float32))
    b = torch.ones(b_shape, dtype=kw.get("dtype2", torch.float32))
    with pytest.raises(ValueError, match=match):
        ops.box_iou(a, b)
