"""fastladder.ops.conv3x3_winograd and winograd_weight against conv2d and the step-by-step reference."""
import pytest
import torch
import torch.nn.functional as F

from fastladder import ops, reference


def make(n=2, c_in=5, c_out=3, height=7, width=9, dtype=torch.float32, device="cpu", bias=True):
    x = torch.randn(n, c_in, height, width, dtype=dtype, device=device)
    weight = torch.randn(c_out, c_in, 3, 3, dtype=dtype, device=device) / (9 * max(c_in, 1)) ** 0.5
    b = torch.randn(c_out, dtype=dtype, device=device) if bias else None
    return x, weight, b


def relative_error(actual, expected):
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("padding", [(1, 1), (0, 1), (1, 0), (0, 0)])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (4, 4), (7, 9), (13, 5), (17, 33)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_conv2d(seed, padding, size, bias):
    """Odd sizes (tiles cut by the border), every padding; float64 exactly, float32 within 2e-5 of the
    largest output (measured: 2e-6 to 9e-6)."""
    if size[0] + 2 * padding[0] < 3 or size[1] + 2 * padding[1] < 3:
        pytest.skip("smaller than the filter")
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        x, weight, b = make(height=size[0], width=size[1], dtype=dtype, bias=bias)
        for relu in (False, True):
            bias64 = None if b is None else b.double()
            expected = F.conv2d(x.double(), weight.double(), bias64, padding=padding)
            expected = expected.relu() if relu else expected
            actual = ops.conv3x3_winograd(x, ops.winograd_weight(weight), b, padding=padding, relu=relu)
            assert actual.shape == expected.shape and actual.dtype == dtype
            if expected.abs().max() > 0:
                error = relative_error(actual, expected)
                assert error < tolerance, f"seed {seed}: {dtype} relative error {error:.2e}"


def test_matches_the_reference_algorithm(seed):
    x, weight, b = make(c_in=6, c_out=4, height=11, width=14, dtype=torch.float64)
    u = ops.winograd_weight(weight)
    torch.testing.assert_close(u, reference.winograd_weight(weight), rtol=0, atol=1e-15,
                               msg=lambda m: f"seed {seed}: {m}")
    for padding in ((1, 1), (0, 1)):
        torch.testing.assert_close(ops.conv3x3_winograd(x, u, b, padding=padding, relu=True),
                                   reference.conv3x3_winograd(x, u, b, padding, relu=True),
                                   msg=lambda m: f"seed {seed}: {m}")


def test_dense_block_shapes_float32(seed):
    """The shapes the converted LDN runs: 128 → 32 channels (dense layers), 256 → 128 (ladder blend)."""
    for c_in, c_out in ((128, 32), (256, 128)):
        x, weight, b = make(n=1, c_in=c_in, c_out=c_out, height=21, width=70)
        x = x.relu().contiguous(memory_format=torch.channels_last)
        expected = F.conv2d(x.double(), weight.double(), b.double(), padding=1)
        error = relative_error(ops.conv3x3_winograd(x, ops.winograd_weight(weight), b), expected)
        assert error < 2e-5, f"seed {seed}: {c_in}->{c_out} relative error {error:.2e}"


def test_layouts(seed):
    """NCHW in, NCHW out; channels_last, or a channel slice of a channels_last buffer (read in place),
    channels_last out."""
    x, weight, b = make(c_in=6)
    u = ops.winograd_weight(weight)
    expected = F.conv2d(x, weight, b, padding=1)
    buffer = torch.randn(2, 10, 7, 9).contiguous(memory_format=torch.channels_last)
    buffer[:, :6] = x
    cases = {"nchw": (x, torch.contiguous_format),
             "channels_last": (x.contiguous(memory_format=torch.channels_last), torch.channels_last),
             "channels_last slice": (buffer[:, :6], torch.channels_last),
             "nchw slice": (torch.cat([x, x], 1)[:, :6], torch.contiguous_format)}
    for name, (view, memory_format) in cases.items():
        actual = ops.conv3x3_winograd(view, u, b)
        assert actual.is_contiguous(memory_format=memory_format), name
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4,
                                   msg=lambda m: f"seed {seed} {name}: {m}")


def test_empty_inputs(seed):
    x, weight, b = make()
    u = ops.winograd_weight(weight)
    assert ops.conv3x3_winograd(x[:0], u, b).shape == (0, 3, 7, 9)
    assert ops.conv3x3_winograd(x[:, :, :2, :2], u, b, padding=(0, 0)).shape == (2, 3, 0, 0)
    # no input channels: the output is the bias
    no_channels = ops.conv3x3_winograd(x[:, :0], ops.winograd_weight(weight[:, :0]), b, relu=False)
    torch.testing.assert_close(no_channels, b.view(1, -1, 1, 1).expand(2, 3, 7, 9))


def test_winograd_weight_gradcheck_float64(seed):
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.winograd_weight, (weight,))


def test_opcheck(seed):
    x, weight, b = make()
    u = ops.winograd_weight(weight)
    for view in (x, x.contiguous(memory_format=torch.channels_last)):
        for padding in ([1, 1], [0, 1]):
            torch.library.opcheck(torch.ops.fastladder.conv3x3_winograd.default, (view, u, b, padding, True),
                                  test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.fastladder.winograd_weight.default, (weight,))


def test_torch_compile_fullgraph(seed):
    x, weight, b = make()
    u = ops.winograd_weight(weight)
    fn = lambda x: ops.conv3x3_winograd(x, u, b, relu=True)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), fn(x))


def test_checks_its_arguments():
    x, weight, b = make()
    u = ops.winograd_weight(weight)
    with pytest.raises(ValueError, match=r"weight must be a \[36, C_in = 5, C_out\] Winograd-domain filter"):
        ops.conv3x3_winograd(x, weight, b)
    with pytest.raises(ValueError, match=r"padding must be two values, each 0 or 1"):
        ops.conv3x3_winograd(x, u, b, padding=(2, 2))
    with pytest.raises(ValueError, match=r"x must be float32 or float64, got BFloat16"):
        ops.conv3x3_winograd(x.bfloat16(), u.bfloat16(), b)
    with pytest.raises(ValueError, match=r"weight must have x's dtype"):
        ops.conv3x3_winograd(x, u.double(), b)
    with pytest.raises(ValueError, match=r"bias must be a \[3\] tensor"):
        ops.conv3x3_winograd(x, u, b[:2])
    with pytest.raises(ValueError, match=r"is smaller than the 3x3 filter"):
        ops.conv3x3_winograd(x[:, :, :1], u, b, padding=(0, 1))
    with pytest.raises(ValueError, match=r"weight must be a \[C_out, C_in, 3, 3\] filter"):
        ops.winograd_weight(weight[..., :2])


@pytest.mark.cuda
def test_cuda_weight_transform_and_no_cuda_kernel(seed):
    """winograd_weight runs on every device; the convolution is CPU-only (the inference modules use
    cuDNN on CUDA), and says so."""
    x, weight, b = make(device="cuda")
    u = ops.winograd_weight(weight)
    assert u.device.type == "cuda"
    torch.testing.assert_close(u.cpu(), ops.winograd_weight(weight.cpu()))
    with pytest.raises(NotImplementedError):
        ops.conv3x3_winograd(x, u, b)
