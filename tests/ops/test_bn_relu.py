"""fastladder.ops.bn_relu against relu(x * scale + shift)."""
import pytest
import torch

from fastladder import ops, reference
from fastladder.testing import DEVICES, assert_close_to_reference


def make(shape, dtype=torch.float32, device="cpu", requires_grad=False):
    x = torch.randn(*shape, dtype=dtype, device=device)
    scale = torch.rand(shape[1], dtype=dtype, device=device) + 0.5
    shift = torch.randn(shape[1], dtype=dtype, device=device) * 0.5
    return [t.requires_grad_(requires_grad) for t in (x, scale, shift)]


LAYOUTS = {
    "nchw": lambda x: x,
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    # the DenseNet case: the first channels of a larger NCHW buffer, read in place
    "buffer_prefix": lambda x: torch.cat([x, torch.randn_like(x)], dim=1)[:, : x.shape[1]],
    # the same in a channels_last model: a channel slice of an NHWC buffer, also read in place
    "channels_last_prefix": lambda x: torch.cat([x, torch.randn_like(x)], dim=1).contiguous(
        memory_format=torch.channels_last)[:, : x.shape[1]],
    # ... and a band of its rows (eval's banded BN-ReLU-1×1), images further apart than H·W pixels
    "channels_last_band": lambda x: torch.cat([torch.randn_like(x[:, :, :1]), x, torch.randn_like(x)], dim=2)
    .repeat(1, 2, 1, 1).contiguous(memory_format=torch.channels_last)[:, : x.shape[1], 1:1 + x.shape[2]],
    "transposed": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 1, 1), (3, 1, 4, 6), (1, 64, 17, 3)])
def test_matches_reference(seed, layout, shape):
    x, scale, shift = make(shape)
    x = LAYOUTS[layout](x)
    assert_close_to_reference(ops.bn_relu(x, scale, shift), reference.bn_relu(x, scale, shift), seed=seed)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes(seed, dtype, device):
    x, scale, shift = make((2, 6, 5, 5), dtype=dtype, device=device)
    expected = reference.bn_relu(x.double(), scale.double(), shift.double()).to(dtype)
    assert_close_to_reference(ops.bn_relu(x, scale, shift), expected, seed=seed)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bfloat16_is_the_float32_result_rounded_once(seed, layout):
    """bfloat16 runs in float32 (x * scale, then + shift, then ReLU) and rounds once to nearest even, bit for
    bit as torch's float32 ops followed by .to(bfloat16): NaN, infinities and subnormal results included
    (the AVX512_BF16 conversion flushes those, so the kernel must not use it for them)."""
    x, scale, shift = make((2, 37, 5, 7), dtype=torch.bfloat16)
    x.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.bfloat16)
    # channel 1 maps x onto 0.75·x: subnormal inputs give subnormal results, and values that round
    # into or out of the subnormal range
    scale[1], shift[1] = 0.75, 0.0
    x[:, 1, :2] = torch.tensor([3e-39, 1e-40, 1.2e-38, 1.1755e-38, -5e-39, 2.0e-38, 7e-41],
                               dtype=torch.bfloat16)
    x = LAYOUTS[layout](x)
    expected = torch.relu(x.float() * scale.float()[:, None, None] + shift.float()[:, None, None])
    expected = expected.to(torch.bfloat16)
    assert expected[:, 1, 0].float().abs().min() < torch.finfo(torch.float32).tiny  # subnormals are there
    got = ops.bn_relu(x, scale, shift)
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    finite = ~torch.isnan(expected)
    assert torch.equal(got[finite].view(torch.int16), expected[finite].view(torch.int16)), f"seed {seed}"


def test_channels_last_is_kept(seed):
    x, scale, shift = make((2, 6, 5, 5))
    y = ops.bn_relu(x.contiguous(memory_format=torch.channels_last), scale, shift)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (1, 3, 1, 9), (3, 2, 4, 1)])
@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_prefix_gives_dense_channels_last(seed, shape, device):
    """A channel slice of an NHWC buffer (a channels_last DenseNet's prefix) is read in place and
    gives a dense channels_last result, as the fake kernel says (its strides under compile)."""
    x, scale, shift = make(shape, device=device)
    for layout in ("channels_last_prefix", "channels_last_band"):
        prefix = LAYOUTS[layout](x)
        assert torch.equal(prefix, x)
        y = ops.bn_relu(prefix, scale, shift)
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        torch.testing.assert_close(y, reference.bn_relu(x, scale, shift))
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = torch.ops.fastladder.bn_relu(mode.from_tensor(prefix), mode.from_tensor(scale),
                                                mode.from_tensor(shift))
        assert fake.stride() == y.stride()


def test_out_variant(seed):
    x, scale, shift = make((2, 4, 3, 5))
    out = torch.empty(0)
    result = ops.bn_relu(x, scale, shift, out=out)
    assert result is out
    torch.testing.assert_close(out, reference.bn_relu(x, scale, shift))
    x.requires_grad_()
    with pytest.raises(RuntimeError, match="does not support automatic differentiation"):
        ops.bn_relu(x, scale, shift, out=out)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_backward_matches_reference(seed, layout):
    x, scale, shift = make((3, 5, 6, 7), requires_grad=True)
    xl = LAYOUTS[layout](x)
    grad_out = torch.randn(3, 5, 6, 7)
    actual = torch.autograd.grad(ops.bn_relu(xl, scale, shift), (x, scale, shift), grad_out)
    expected = torch.autograd.grad(reference.bn_relu(xl, scale, shift), (x, scale, shift), grad_out)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64(seed):
    x, scale, shift = make((2, 3, 4, 5), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.bn_relu, (x, scale, shift))
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(ops.bn_relu, (cl, scale, shift))
    prefix = LAYOUTS["channels_last_prefix"](x.detach()).requires_grad_()
    assert torch.autograd.gradcheck(ops.bn_relu, (prefix, scale, shift))


def test_backward_is_deterministic(seed):
    x, scale, shift = make((2, 16, 33, 35), requires_grad=True)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    for inp in (x, x_cl):
        y = ops.bn_relu(inp, scale, shift)
        g = torch.randn_like(y)
        first = torch.autograd.grad(y, (inp, scale, shift), g, retain_graph=True)
        again = torch.autograd.grad(y, (inp, scale, shift), g, retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_empty():
    x, scale, shift = make((0, 3, 4, 4))
    assert ops.bn_relu(x, scale, shift).shape == (0, 3, 4, 4)


def test_opcheck(seed):
    x, scale, shift = make((2, 3, 4, 5), requires_grad=True)
    torch.library.opcheck(torch.ops.fastladder.bn_relu.default, (x, scale, shift))
    cl = x.detach().contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.fastladder.bn_relu.default, (cl, scale.detach(), shift.detach()))
    prefix = LAYOUTS["channels_last_prefix"](x.detach()).requires_grad_()
    torch.library.opcheck(torch.ops.fastladder.bn_relu.default, (prefix, scale, shift))


def test_torch_compile_fullgraph(seed):
    x, scale, shift = make((2, 3, 4, 5), requires_grad=True)
    fn = lambda x, s, b: ops.bn_relu(x, s, b).sum()  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, scale, shift), fn(x, scale, shift))
    torch.testing.assert_close(torch.autograd.grad(compiled(x, scale, shift), x)[0],
                               torch.autograd.grad(fn(x, scale, shift), x)[0])


def test_fold_batch_norm_matches_eval_batchnorm(seed):
    norm = torch.nn.BatchNorm2d(4)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2)
    norm.weight.data.normal_()
    norm.bias.data.normal_()
    norm.eval()
    x = torch.randn(2, 4, 5, 5)
    scale, shift = ops.fold_batch_norm(norm)
    torch.testing.assert_close(ops.bn_relu(x, scale.detach(), shift.detach()), torch.relu(norm(x)))


@pytest.mark.parametrize("args,match", [
    (lambda: (torch.randn(2, 3, 4), torch.ones(3), torch.ones(3)), r"x must be a 4-D .*\[2, 3, 4\]"),
    (lambda: (torch.randn(2, 3, 4, 4), torch.ones(4), torch.ones(3)),
     r"scale must be a 1-D tensor of length C = 3.*\[4\]"),
    (lambda: (torch.randn(2, 3, 4, 4), torch.ones(3), torch.ones(3).double()), r"shift must have x's dtype"),
    (lambda: (torch.randint(0, 3, (2, 3, 4, 4)), torch.ones(3), torch.ones(3)), r"floating point"),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        ops.bn_relu(*args())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cuda_matches_cpu(seed, dtype, layout):
    """Every layout built ON the device (a .cuda() copy of a slice would be dense: the slice paths
    would never reach the GPU kernel). Forward and grad x round as on the CPU (no FMA: products
    rounded on their own), so they are equal; d scale, d shift are sums in another order."""
    x, scale, shift = make((2, 40, 9, 11), dtype=dtype)
    x_cuda, scale_cuda, shift_cuda = x.cuda(), scale.cuda(), shift.cuda()
    x_cpu, xl_cuda = LAYOUTS[layout](x), LAYOUTS[layout](x_cuda)
    assert xl_cuda.device.type == "cuda" and xl_cuda.stride() == x_cpu.stride(), layout
    torch.testing.assert_close(xl_cuda.cpu(), x_cpu, rtol=0, atol=0)  # the same values, read in place
    cpu_in = [x_cpu.detach().requires_grad_(), scale.requires_grad_(), shift.requires_grad_()]
    cuda_in = [xl_cuda.detach().requires_grad_(), scale_cuda.requires_grad_(), shift_cuda.requires_grad_()]
    y_cpu, y_cuda = ops.bn_relu(*cpu_in), ops.bn_relu(*cuda_in)
    assert y_cuda.stride() == y_cpu.stride()
    assert torch.equal(y_cuda.cpu(), y_cpu), seed
    g = torch.randn_like(y_cpu)
    (gx_cuda, gs_cuda, gb_cuda), (gx_cpu, gs_cpu, gb_cpu) = (torch.autograd.grad(y_cuda, cuda_in, g.cuda()),
                                                             torch.autograd.grad(y_cpu, cpu_in, g))
    assert torch.equal(gx_cuda.cpu(), gx_cpu), seed
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(gs_cuda.cpu(), gs_cpu, rtol=tol, atol=tol)
    torch.testing.assert_close(gb_cuda.cpu(), gb_cpu, rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cuda_out(seed, layout):
    """bn_relu.out on the device, every layout built on the device: the CPU's values."""
    x, scale, shift = make((3, 24, 6, 7))
    xl_cuda = LAYOUTS[layout](x.cuda())
    out = torch.full((1,), float("nan"), device="cuda")
    result = ops.bn_relu(xl_cuda, scale.cuda(), shift.cuda(), out=out)
    assert result is out and out.shape == x.shape
    assert torch.equal(out.cpu(), ops.bn_relu(LAYOUTS[layout](x), scale, shift).contiguous()), seed


# --- bn_relu_conv1x1 ---------------------------------------------------------------------------------

def make_conv1x1(shape, out_channels, dtype=torch.float32, bias=True):
    x, scale, shift = make(shape, dtype=torch.float32)
    weight = torch.randn(out_channels, shape[1], 1, 1) / max(shape[1], 1) ** 0.5
    b = torch.randn(out_channels) if bias else None
    return (x.to(dtype), scale.to(dtype), shift.to(dtype), weight.to(dtype),
            None if b is None else b.to(dtype))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape,out_channels", [((2, 5, 7, 9), 3), ((1, 64, 17, 3), 40), ((3, 7, 4, 6), 17),
                                                ((1, 144, 5, 26), 128)])
@pytest.mark.parametrize("relu", [False, True])
def test_bn_relu_conv1x1_bfloat16(seed, bfloat16_loops, layout, shape, out_channels, relu):
    """Fused in bfloat16: the activation as bn_relu rounds it, the sums in float32 (as oneDNN's bfloat16
    convolution), rounded once: within one bfloat16 rounding of conv2d(bn_relu(x)). Odd channel counts
    (a zero channel pads the pairs), output channels cut inside a 16-lane vector and past 32, pixel counts
    that are no multiple of the 12-pixel block, every layout bn_relu reads."""
    x, scale, shift, weight, b = make_conv1x1(shape, out_channels, dtype=torch.bfloat16)
    x = LAYOUTS[layout](x)
    actual = ops.bn_relu_conv1x1(x, scale, shift, weight, b, relu=relu)
    # the reference's activation in float32, rounded to bfloat16 as the kernel's is
    activation = ops.bn_relu(x, scale, shift).float()
    expected = torch.nn.functional.conv2d(activation, weight.float(), b.float())
    expected = expected.relu() if relu else expected
    assert actual.dtype == torch.bfloat16 and actual.shape == expected.shape
    activation = ops.bn_relu(x, scale, shift)  # its layout is the op's
    layout = torch.channels_last if activation.is_contiguous(memory_format=torch.channels_last) and \
        not activation.is_contiguous() else torch.contiguous_format
    assert actual.is_contiguous(memory_format=layout)
    torch.testing.assert_close(actual.float(), expected.to(torch.bfloat16).float(), rtol=2 ** -7, atol=1e-4,
                               msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bn_relu_conv1x1_other_dtypes(seed, dtype):
    x, scale, shift, weight, b = make_conv1x1((2, 6, 5, 7), 4, dtype=dtype)
    for view in (x, LAYOUTS["channels_last_prefix"](x)):
        for relu in (False, True):
            torch.testing.assert_close(ops.bn_relu_conv1x1(view, scale, shift, weight, b, relu=relu),
                                       reference.bn_relu_conv1x1(view, scale, shift, weight, b, relu=relu),
                                       msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bn_relu_conv1x1_empty_inputs(seed, dtype):
    x, scale, shift, weight, b = make_conv1x1((2, 6, 5, 7), 4, dtype=dtype)
    assert ops.bn_relu_conv1x1(x[:0], scale, shift, weight, b).shape == (0, 4, 5, 7)
    assert ops.bn_relu_conv1x1(x[:, :, :0], scale, shift, weight, b).shape == (2, 4, 0, 7)
    # no input channels: the bias, then the ReLU
    out = ops.bn_relu_conv1x1(x[:, :0], scale[:0], shift[:0], weight[:, :0], b, relu=True)
    torch.testing.assert_close(out, b.relu().view(1, -1, 1, 1).expand(2, 4, 5, 7).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bn_relu_conv1x1_opcheck_and_compile(seed, dtype):
    x, scale, shift, weight, b = make_conv1x1((2, 6, 5, 7), 4, dtype=dtype)
    for view in (x, LAYOUTS["channels_last_prefix"](x)):
        torch.library.opcheck(torch.ops.fastladder.bn_relu_conv1x1.default,
                              (view, scale, shift, weight, b, True),
                              test_utils=("test_schema", "test_faketensor"))
    fn = lambda x: ops.bn_relu_conv1x1(x, scale, shift, weight, b, relu=True)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), fn(x))


def test_bn_relu_conv1x1_checks_its_arguments():
    x, scale, shift, weight, b = make_conv1x1((2, 6, 5, 7), 4)
    with pytest.raises(ValueError, match=r"weight must be a \[C_out, C = 6, 1, 1\] filter"):
        ops.bn_relu_conv1x1(x, scale, shift, weight[:, :5], b)
    with pytest.raises(ValueError, match=r"weight must have x's dtype and device"):
        ops.bn_relu_conv1x1(x, scale, shift, weight.double(), b)
    with pytest.raises(ValueError, match=r"bias must be a \[4\] tensor"):
        ops.bn_relu_conv1x1(x, scale, shift, weight, b[:3])
    with pytest.raises(ValueError, match=r"scale must be a 1-D tensor of length C = 6"):
        ops.bn_relu_conv1x1(x, scale[:5], shift, weight, b)


@pytest.mark.cuda
def test_bn_relu_conv1x1_is_cpu_only(seed):
    """The inference modules run bn_relu and cuDNN on CUDA; the fused op has no CUDA kernel and says so."""
    x, scale, shift, weight, b = (t.cuda() for t in make_conv1x1((2, 6, 5, 7), 4))
    with pytest.raises(NotImplementedError):
        ops.bn_relu_conv1x1(x, scale, shift, weight, b)
