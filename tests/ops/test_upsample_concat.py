"""fastladder.ops.upsample_concat against the unfused reference (F.interpolate + cat/add + affine + ReLU)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from fastladder import ops, reference
from fastladder.testing import DEVICES, assert_close_to_reference

# (low h, w) -> (skip H, W): 2× (the ladder case), odd and non-integer ratios, 1×1, same size, downscale
SIZES = [((4, 5), (8, 10)), ((3, 7), (7, 13)), ((1, 1), (5, 3)), ((6, 6), (6, 6)), ((9, 8), (4, 5)),
         ((5, 1), (11, 2))]


def make_inputs(mode, low_size, skip_size, dtype=torch.float32, device="cpu", batch=2, affine=True,
                channels_last=False, low_channels=3, skip_channels=5, requires_grad=False):
    skip_channels = low_channels if mode == "add" else skip_channels
    out_channels = low_channels + skip_channels if mode == "concat" else skip_channels
    low = torch.randn(batch, low_channels, *low_size, dtype=dtype, device=device)
    skip = torch.randn(batch, skip_channels, *skip_size, dtype=dtype, device=device)
    if channels_last:
        low, skip = (low.contiguous(memory_format=torch.channels_last),
                     skip.contiguous(memory_format=torch.channels_last))
    scale = shift = None
    if affine:
        scale = (torch.rand(out_channels, dtype=dtype, device=device) + 0.5)
        shift = torch.randn(out_channels, dtype=dtype, device=device) * 0.5
    tensors = [low, skip, scale, shift]
    for t in tensors:
        if t is not None:
            t.requires_grad_(requires_grad)
    return tensors


@pytest.mark.parametrize("low_size,skip_size", SIZES)
@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_forward_matches_reference(seed, low_size, skip_size, mode, align_corners, channels_last, device):
    low, skip, scale, shift = make_inputs(mode, low_size, skip_size, channels_last=channels_last,
                                          device=device)
    for affine, relu in itertools.product([False, True], [False, True]):
        kwargs = dict(mode=mode, relu=relu, align_corners=align_corners,
                      scale=scale if affine else None, shift=shift if affine else None)
        actual = ops.upsample_concat(low, skip, **kwargs)
        expected = reference.upsample_concat(low, skip, **kwargs)
        assert actual.shape == expected.shape
        assert_close_to_reference(actual, expected, seed=seed, msg=f"affine={affine} relu={relu}")
        expected_format = (torch.channels_last if channels_last and skip_size != (1, 1)
                           else torch.contiguous_format)
        assert actual.is_contiguous(memory_format=expected_format)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes(seed, dtype, device):
    low, skip, scale, shift = make_inputs("concat", (5, 6), (10, 12), dtype=dtype, device=device)
    actual = ops.upsample_concat(low, skip, scale=scale, shift=shift, relu=True)
    # the fused kernel rounds once; compare with the reference computed in float64
    expected = reference.upsample_concat(low.double(), skip.double(), scale=scale.double(),
                                         shift=shift.double(), relu=True)
    assert actual.dtype == dtype
    assert_close_to_reference(actual, expected.to(dtype), seed=seed)


def test_only_scale_or_only_shift(seed):
    low, skip, scale, shift = make_inputs("concat", (3, 4), (6, 8))
    torch.testing.assert_close(ops.upsample_concat(low, skip, scale=scale),
                               reference.upsample_concat(low, skip, scale=scale))
    torch.testing.assert_close(ops.upsample_concat(low, skip, shift=shift),
                               reference.upsample_concat(low, skip, shift=shift))


def test_float32_2x_upsample_is_exact(seed):
    # 2× weights (0.25/0.75) are exact in binary; the CPU kernel must agree with F.interpolate to the
    # last bit or be within one rounding of it
    low = torch.randn(1, 4, 16, 32)
    skip = torch.randn(1, 2, 32, 64)
    actual = ops.upsample_concat(low, skip)[:, :4]
    expected = F.interpolate(low, size=(32, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_non_contiguous_inputs(seed):
    low = torch.randn(2, 6, 5, 7)[:, ::2]
    skip = torch.randn(2, 5, 11, 9).transpose(2, 3)
    expected = reference.upsample_concat(low, skip, relu=True)
    torch.testing.assert_close(ops.upsample_concat(low, skip, relu=True), expected)


@pytest.mark.parametrize("mode", ["concat", "add"])
def test_empty_batch_and_channels(mode):
    low = torch.randn(0, 3, 4, 4)
    skip = torch.randn(0, 3, 8, 8)
    out = ops.upsample_concat(low, skip, mode=mode)
    assert out.shape == (0, 6 if mode == "concat" else 3, 8, 8)
    low = torch.randn(2, 0, 4, 4, requires_grad=True)
    skip = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = ops.upsample_concat(low, skip)
    torch.testing.assert_close(out, skip)
    out.sum().backward()
    assert low.grad.shape == low.shape and torch.equal(skip.grad, torch.ones_like(skip))


@pytest.mark.parametrize("low_size,skip_size", SIZES)
@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_backward_matches_reference(seed, low_size, skip_size, mode, channels_last, device):
    inputs = make_inputs(mode, low_size, skip_size, channels_last=channels_last, device=device,
                         requires_grad=True)
    low, skip, scale, shift = inputs
    for align_corners in (False, True):
        kwargs = dict(mode=mode, scale=scale, shift=shift, relu=True, align_corners=align_corners)
        grad_out = torch.randn_like(reference.upsample_concat(low, skip, **kwargs))
        actual = torch.autograd.grad(ops.upsample_concat(low, skip, **kwargs), inputs, grad_out)
        expected = torch.autograd.grad(reference.upsample_concat(low, skip, **kwargs), inputs, grad_out)
        for name, a, e in zip(["low", "skip", "scale", "shift"], actual, expected):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4,
                                       msg=lambda m: f"grad {name} (seed {seed}): {m}")


@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_float64(seed, mode, relu):
    # shift moves the pre-activation away from 0, where ReLU is not differentiable
    low, skip, scale, shift = make_inputs(mode, (3, 4), (5, 7), dtype=torch.float64, requires_grad=True)
    for align_corners in (False, True):
        def fn(low, skip, scale, shift):
            return ops.upsample_concat(low, skip, mode=mode, scale=scale, shift=shift, relu=relu,
                                       align_corners=align_corners)
        assert torch.autograd.gradcheck(fn, (low, skip, scale, shift))
    assert torch.autograd.gradcheck(lambda a, b: ops.upsample_concat(a, b, mode=mode), (low, skip))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_backward_is_deterministic(seed, device, channels_last):
    inputs = make_inputs("concat", (13, 17), (40, 51), device=device, channels_last=channels_last,
                         low_channels=8, skip_channels=8, requires_grad=True)
    out = ops.upsample_concat(inputs[0], inputs[1], scale=inputs[2], shift=inputs[3], relu=True)
    grad_out = torch.randn_like(out)
    first = torch.autograd.grad(out, inputs, grad_out, retain_graph=True)
    for _ in range(3):
        again = torch.autograd.grad(out, inputs, grad_out, retain_graph=True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def _opcheck_samples():
    low, skip, scale, shift = make_inputs("concat", (3, 5), (7, 9), requires_grad=True)
    yield (low, skip, "concat", scale, shift, True, False)
    yield (low.detach(), skip.detach(), "concat", None, None, False, True)
    low, skip, scale, shift = make_inputs("add", (4, 4), (8, 8), channels_last=True, requires_grad=True)
    yield (low, skip, "add", scale, shift, True, False)


def test_opcheck(seed):
    for args in _opcheck_samples():
        torch.library.opcheck(torch.ops.fastladder.upsample_concat.default, args)


def test_torch_compile_fullgraph(seed):
    low, skip, scale, shift = make_inputs("concat", (5, 6), (10, 12), requires_grad=True)

    def fn(low, skip, scale, shift):
        return ops.upsample_concat(low, skip, scale=scale, shift=shift, relu=True).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(low, skip, scale, shift), fn(low, skip, scale, shift))
    grads = torch.autograd.grad(compiled(low, skip, scale, shift), (low, skip, scale, shift))
    expected = torch.autograd.grad(fn(low, skip, scale, shift), (low, skip, scale, shift))
    for a, e in zip(grads, expected):
        torch.testing.assert_close(a, e)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_cuda_matches_cpu(seed, dtype, channels_last, mode, align_corners):
    """The forward is bit-identical: both backends evaluate the same taps and expressions with every
    product rounded on its own (no FMA on CUDA); gradients are sums in another order."""
    inputs = make_inputs(mode, (7, 9), (15, 20), dtype=dtype, channels_last=channels_last, requires_grad=True)
    cuda_inputs = [t.detach().cuda().requires_grad_() for t in inputs]
    kwargs = dict(mode=mode, relu=True, align_corners=align_corners)
    cpu_out = ops.upsample_concat(inputs[0], inputs[1], scale=inputs[2], shift=inputs[3], **kwargs)
    cuda_out = ops.upsample_concat(cuda_inputs[0], cuda_inputs[1], scale=cuda_inputs[2], shift=cuda_inputs[3],
                                   **kwargs)
    assert cuda_out.stride() == cpu_out.stride()
    assert torch.equal(cuda_out.cpu(), cpu_out), seed
    plain = dict(mode=mode, align_corners=align_corners)  # no affine, no ReLU
    assert torch.equal(ops.upsample_concat(cuda_inputs[0], cuda_inputs[1], **plain).cpu(),
                       ops.upsample_concat(inputs[0], inputs[1], **plain)), seed
    grad_out = torch.randn_like(cpu_out)
    cpu_grads = torch.autograd.grad(cpu_out, inputs, grad_out)
    cuda_grads = torch.autograd.grad(cuda_out, cuda_inputs, grad_out.cuda())
    for a, e in zip(cuda_grads, cpu_grads):
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(a.cpu().float(), e.float(), rtol=tol, atol=tol)


BAD_INPUTS = [
    (lambda: (torch.randn(2, 3, 4), torch.randn(2, 3, 8, 8)), {}, ValueError,
     r"low must be a 4-D .*\[2, 3, 4\]"),
    (lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8)), {}, ValueError, r"skip must be a 4-D"),
    (lambda: (torch.randn(2, 3, 4, 4), torch.randn(3, 3, 8, 8)), {}, ValueError,
     r"same batch size.*\[2, 3, 4, 4\].*\[3, 3, 8, 8\]"),
    (lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8, 8)), {"mode": "add"}, ValueError,
     r"mode='add' needs .*same channels"),
    (lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)), {"mode": "sum"}, ValueError,
     r"mode must be one of"),
    (lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8).double()), {}, ValueError, r"same dtype"),
    (lambda: (torch.randint(0, 5, (2, 3, 4, 4)), torch.randint(0, 5, (2, 3, 8, 8))), {}, ValueError,
     r"floating point"),
    (lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)), {"scale": torch.ones(5)}, ValueError,
     r"scale must be a 1-D tensor of length 6.*\[5\]"),
    (lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)),
     {"scale": torch.ones(6), "shift": torch.ones(6).double()}, ValueError, r"shift must have the dtype"),
    (lambda: (torch.randn(2, 3, 0, 4), torch.randn(2, 3, 8, 8)), {}, ValueError, r"non-empty spatial sizes"),
]


@pytest.mark.parametrize("make,kwargs,error,match", BAD_INPUTS)
def test_bad_input_is_a_clear_error(make, kwargs, error, match):
    low, skip = make()
    with pytest.raises(error, match=match):
        ops.upsample_concat(low, skip, **kwargs)


# --- upsample_bilinear: upsample_concat with nothing to join ---------------------------------------

@pytest.mark.parametrize("low_size,size", SIZES + [((112 // 8, 256 // 8), (448 // 8, 1024 // 8))])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_upsample_bilinear_is_f_interpolate(seed, low_size, size, align_corners, channels_last, device):
    """float64 to rounding, float32 within a few ulp (the sums in another order), bfloat16 as float32 then
    rounded once: NCHW-contiguous whatever the input layout."""
    x = torch.randn(2, 3, *low_size, dtype=torch.float64, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        actual = ops.upsample_bilinear(x.to(dtype), size, align_corners=align_corners)
        expected = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
        assert actual.shape == expected.shape and actual.dtype == dtype and actual.is_contiguous()
        torch.testing.assert_close(actual.double(), expected, rtol=tolerance, atol=tolerance,
                                   msg=lambda m: f"seed {seed} {dtype}: {m}")
    low = x.to(torch.bfloat16)
    actual = ops.upsample_bilinear(low, size, align_corners=align_corners)
    expected = F.interpolate(low.float(), size=size, mode="bilinear", align_corners=align_corners)
    # one bfloat16 rounding apart at most (float32 sums in another order can round the other way)
    torch.testing.assert_close(actual.float(), expected.to(torch.bfloat16).float(), rtol=2 ** -7, atol=1e-6,
                               msg=lambda m: f"seed {seed} bfloat16: {m}")


def test_upsample_bilinear_gradcheck_and_empty(seed):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.upsample_bilinear(x, (9, 7)), (x,))
    assert ops.upsample_bilinear(x[:0].detach(), (9, 7)).shape == (0, 3, 9, 7)
    assert ops.upsample_bilinear(x[:, :0].detach(), (9, 7)).shape == (2, 0, 9, 7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_nchw_rows_reuse_their_interpolated_sources(seed, dtype):
    """The NCHW kernel interpolates each low row along x once and blends cached rows: with the skip term,
    the affine and the ReLU on top, and windows of rows (upsample_concat_rows), it gives what the
    per-pixel formula gives (the channels_last kernel, which does not cache)."""
    for mode in ("add", "concat"):
        low, skip, scale, shift = make_inputs(mode, (5, 7), (20, 27), dtype=dtype, batch=2)
        expected = ops.upsample_concat(low.contiguous(memory_format=torch.channels_last),
                                       skip.contiguous(memory_format=torch.channels_last), mode=mode,
                                       scale=scale, shift=shift, relu=True)
        actual = ops.upsample_concat(low, skip, mode=mode, scale=scale, shift=shift, relu=True)
        assert actual.is_contiguous()
        torch.testing.assert_close(actual, expected.contiguous(), rtol=0, atol=0,
                                   msg=lambda m: f"seed {seed} {mode} {dtype}: {m}")
        rows = torch.ops.fastladder.upsample_concat_rows(low, skip, mode, scale, shift, True, False, 3, 11,
                                                         False)
        torch.testing.assert_close(rows, expected.contiguous()[:, :, 3:14], rtol=0, atol=0,
                                   msg=lambda m: f"seed {seed} rows {mode} {dtype}: {m}")
