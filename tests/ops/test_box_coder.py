"""fastladder.ops.encode_boxes / decode_boxes against torchvision's BoxCoder with weights
(10, 10, 5, 5) (SSD variances 0.1 / 0.2) and the reference; the log(1000/16) clamp, NaN, batch
dimensions, dtypes, gradients, opcheck, torch.compile, bad input."""
import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from fastladder import ops
from fastladder._box_samples import priors_to_xyxy, random_boxes, ssd300_priors
from fastladder.reference import boxes as reference
from fastladder.testing import DEVICES, assert_close_to_reference


def dyadic_priors(p, generator, dtype=torch.float32):
    """Priors whose (cx, cy, w, h) <-> (x1, y1, x2, y2) conversion is exact (multiples of 2^-10),
    so that torchvision, which takes anchors as corners, sees exactly the same priors."""
    centers = torch.randint(0, 1024, (p, 2), generator=generator).double() / 1024
    sizes = torch.randint(8, 512, (p, 2), generator=generator).double() / 1024
    return torch.cat([centers, sizes], dim=1).to(dtype)


def test_decode_matches_torchvision_box_coder(generator, seed):
    priors = dyadic_priors(500, generator)
    loc = torch.randn(500, 4, generator=generator) * 2
    got = ops.decode_boxes(loc, priors)
    want = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).decode_single(loc, priors_to_xyxy(priors))
    # the same operations in the same order; only exp() may differ in the last bit
    torch.testing.assert_close(got, want, rtol=2e-7, atol=2e-7, msg=lambda m: f"seed {seed}: {m}")


def test_decode_clamps_the_log_scale_as_torchvision(generator):
    priors = dyadic_priors(4, generator)
    loc = torch.tensor([[0.0, 0.0, 100.0, -100.0], [0.0, 0.0, float("inf"), 0.0],
                        [0.0, 0.0, -float("inf"), 30.0], [0.0, 0.0, 20.0, 20.0]])
    got = ops.decode_boxes(loc, priors)
    want = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).decode_single(loc, priors_to_xyxy(priors))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    width = got[:, 2] - got[:, 0]
    torch.testing.assert_close(width[[0, 1]], priors[[0, 1], 2] * 1000 / 16, rtol=1e-6, atol=0)
    assert width[2] == 0  # exp(-inf) = 0: a zero-width box, still finite


def test_decode_propagates_nan():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)
    loc = torch.tensor([[float("nan"), 0.0, 0.0, 0.0], [0.0, 0.0, float("nan"), 0.0]])
    got = ops.decode_boxes(loc, priors)
    assert torch.isnan(got[0, [0, 2]]).all() and torch.isnan(got[1, [0, 2]]).all()
    assert torch.isfinite(got[:, [1, 3]]).all()


def test_encode_matches_torchvision_box_coder(generator, seed):
    priors = dyadic_priors(400, generator)
    boxes = random_boxes(400, generator, image_size=1.0, min_size=0.01, max_size=0.5)
    got = ops.encode_boxes(boxes, priors)
    want = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode_single(boxes, priors_to_xyxy(priors))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=lambda m: f"seed {seed}: {m}")


def test_encode_zero_size_box_gives_minus_inf():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    got = ops.encode_boxes(torch.tensor([[0.4, 0.4, 0.4, 0.6]]), priors)
    assert got[0, 2] == -math.inf and torch.isfinite(got[0, [0, 1, 3]]).all()


@pytest.mark.parametrize("variances", [(0.1, 0.2), (0.25, 0.5), (1.0, 1.0)])
def test_encode_decode_round_trip(variances, generator, seed):
    priors = ssd300_priors(torch.float64)
    boxes = priors_to_xyxy(priors) + torch.randn(len(priors), 4, generator=generator,
                                                 dtype=torch.float64) * 0.01
    boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]),
                       torch.maximum(boxes[:, :2], boxes[:, 2:]) + 1e-3], 1)
    round_trip = ops.decode_boxes(ops.encode_boxes(boxes, priors, variances), priors, variances)
    torch.testing.assert_close(round_trip, boxes, rtol=1e-12, atol=1e-12, msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 2)])
def test_box_coder_matches_reference(dtype, batch_shape, generator, seed):
    priors = ssd300_priors(dtype)[:1000]
    loc = torch.randn(*batch_shape, 1000, 4, generator=generator).to(dtype)
    decoded = ops.decode_boxes(loc, priors, (0.1, 0.2))
    assert decoded.shape == loc.shape and decoded.dtype == dtype
    assert_close_to_reference(decoded, reference.decode_boxes(loc, priors, (0.1, 0.2)), seed=seed)
    encoded = ops.encode_boxes(decoded, priors, (0.1, 0.2))
    assert_close_to_reference(encoded, reference.encode_boxes(decoded, priors, (0.1, 0.2)), seed=seed)


@pytest.mark.parametrize("device", DEVICES)
def test_box_coder_empty(device):
    priors = torch.rand(0, 4, device=device)
    assert ops.decode_boxes(torch.rand(3, 0, 4, device=device), priors).shape == (3, 0, 4)
    priors = torch.rand(5, 4, device=device)
    assert ops.encode_boxes(torch.rand(0, 5, 4, device=device), priors).shape == (0, 5, 4)


def test_box_coder_gradients(generator, seed):
    priors = dyadic_priors(20, generator, torch.float64)
    loc = (torch.randn(2, 20, 4, generator=generator, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.decode_boxes(x, priors), (loc,)), seed
    boxes = random_boxes(20, generator, image_size=1.0, min_size=0.05, max_size=0.5, dtype=torch.float64)
    boxes.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.encode_boxes(x, priors, (0.2, 0.3)), (boxes,)), seed
    # beyond the clamp no gradient flows, as through torch.clamp
    big = torch.tensor([[0.0, 0.0, 50.0, 0.0]], dtype=torch.float64, requires_grad=True)
    ops.decode_boxes(big, priors[:1]).sum().backward()
    assert big.grad[0, 2] == 0


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_box_coder_cuda_matches_cpu(dtype, generator, seed):
    priors = ssd300_priors(dtype)
    loc = torch.randn(4, len(priors), 4, generator=generator).to(dtype)
    assert_close_to_reference(ops.decode_boxes(loc.cuda(), priors.cuda()).cpu(),
                              ops.decode_boxes(loc, priors), seed=seed)
    boxes = ops.decode_boxes(loc, priors)
    assert_close_to_reference(ops.encode_boxes(boxes.cuda(), priors.cuda()).cpu(),
                              ops.encode_boxes(boxes, priors), seed=seed)


@pytest.mark.parametrize("device", DEVICES)
def test_box_coder_opcheck(device, generator):
    priors = dyadic_priors(30, generator, torch.float64).to(device)
    loc = torch.randn(2, 30, 4, generator=generator, dtype=torch.float64).to(device).requires_grad_(True)
    torch.library.opcheck(torch.ops.fastladder.decode_boxes.default, (loc, priors, [0.1, 0.2]))
    boxes = ops.decode_boxes(loc.detach(), priors).requires_grad_(True)
    torch.library.opcheck(torch.ops.fastladder.encode_boxes.default, (boxes, priors, [0.1, 0.2]))


def test_box_coder_torch_compile_fullgraph(generator, seed):
    priors = ssd300_priors()
    loc = torch.randn(2, len(priors), 4, generator=generator)
    fn = lambda x: ops.encode_boxes(ops.decode_boxes(x, priors), priors)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(loc), fn(loc)), seed


@pytest.mark.parametrize("loc_shape,prior_shape,kw,match", [
    ((2, 10, 4), (11, 4), {}, r"loc has 10 boxes per row but there are 11 priors"),
    ((2, 10, 3), (10, 4), {}, r"loc must be a \[\.\.\., P, 4\] tensor, got shape \[2, 10, 3\]"),
    ((2, 10, 4), (10, 5), {}, r"priors must be a \[P, 4\] tensor .* got shape \[10, 5\]"),
    ((2, 10, 4), (10, 4), {"prior_dtype": torch.float64},
     r"loc and priors must have the same dtype, got Float and Double"),
    ((2, 10, 4), (10, 4), {"variances": (0.1, 0.0)}, r"variances must be positive and finite"),
    ((2, 10, 4), (10, 4), {"variances": (0.1, 0.2, 0.3)}, r"variances must be two numbers"),
])
def test_box_coder_bad_input(loc_shape, prior_shape, kw, match):
    loc = torch.ones(loc_shape)
    priors = torch.ones(prior_shape, dtype=kw.get("prior_dtype", torch.float32))
    with pytest.raises(ValueError, match=match):
        ops.decode_boxes(loc, priors, kw.get("variances", (0.1, 0.2)))
