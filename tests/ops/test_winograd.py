"""fastladder.ops.conv3x3_winograd and winograd_weight against conv2d and the step-by-step reference."""
import pytest
import torch
import torch.nn.functional as F

from fastladder import ops, reference

TILES = [4, 2]  # F(4×4, 3×3) and F(2×2, 3×3)


def make(n=2, c_in=5, c_out=3, height=7, width=9, dtype=torch.float32, device="cpu", bias=True):
    x = torch.randn(n, c_in, height, width, dtype=dtype, device=device)
    weight = torch.randn(c_out, c_in, 3, 3, dtype=dtype, device=device) / (9 * max(c_in, 1)) ** 0.5
    b = torch.randn(c_out, dtype=dtype, device=device) if bias else None
    return x, weight, b


def relative_error(actual, expected):
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("padding", [(1, 1), (0, 1), (1, 0), (0, 0)])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (4, 4), (7, 9), (13, 5), (17, 33)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_conv2d(seed, tile, padding, size, bias):
    """Odd sizes (tiles cut by the border), every padding; float64 exactly, float32 within 2e-5 of the
    largest output (measured: 2e-6 to 9e-6 for F(4×4), below 1e-6 for F(2×2))."""
    if size[0] + 2 * padding[0] < 3 or size[1] + 2 * padding[1] < 3:
        pytest.skip("smaller than the filter")
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        x, weight, b = make(height=size[0], width=size[1], dtype=dtype, bias=bias)
        for relu in (False, True):
            bias64 = None if b is None else b.double()
            expected = F.conv2d(x.double(), weight.double(), bias64, padding=padding)
            expected = expected.relu() if relu else expected
            actual = ops.conv3x3_winograd(x, ops.winograd_weight(weight, tile), b, padding=padding, relu=relu)
            assert actual.shape == expected.shape and actual.dtype == dtype
            if expected.abs().max() > 0:
                error = relative_error(actual, expected)
                assert error < tolerance, f"seed {seed}: {dtype} relative error {error:.2e}"


@pytest.mark.parametrize("tile", TILES)
def test_matches_the_reference_algorithm(seed, tile):
    x, weight, b = make(c_in=6, c_out=4, height=11, width=14, dtype=torch.float64)
    u = ops.winograd_weight(weight, tile)
    assert u.shape == ((tile + 2) ** 2, 6, 4)
    torch.testing.assert_close(u, reference.winograd_weight(weight, tile), rtol=0, atol=1e-15,
                               msg=lambda m: f"seed {seed}: {m}")
    for padding in ((1, 1), (0, 1)):
        torch.testing.assert_close(ops.conv3x3_winograd(x, u, b, padding=padding, relu=True),
                                   reference.conv3x3_winograd(x, u, b, padding, relu=True),
                                   msg=lambda m: f"seed {seed}: {m}")


# Odd channel counts (bfloat16 pairs the input channels: a zero one pads them), output channels cut
# inside a 16-lane vector and past 32 (the dot product's register block), widths whose tile count is no
# multiple of its 12-row block, every padding.
BF16_SHAPES = [(1, 1, 3, 3), (5, 3, 7, 9), (6, 17, 4, 30), (7, 40, 13, 5), (128, 32, 9, 50),
               (256, 128, 5, 27)]


@pytest.mark.parametrize("c_in,c_out,height,width", BF16_SHAPES)
def test_bfloat16_f2x2(seed, bfloat16_loops, c_in, c_out, height, width):
    """bfloat16 F(2×2, 3×3): equal to the reference algorithm, which rounds the transformed tiles to
    bfloat16 as the kernel does (up to the float32 sums' order), and, from 6 input channels on, about as
    close to the exact convolution as oneDNN's direct bfloat16 one (measured over 60 seeds: at most 1.73×
    its error, 6e-3 of the largest output). With fewer channels nothing averages the transformed tiles'
    rounding out: one input channel gave up to 3.9e-2."""
    x, weight, b = make(n=2, c_in=c_in, c_out=c_out, height=height, width=width)
    x = x.relu().bfloat16().contiguous(memory_format=torch.channels_last)
    u = ops.winograd_weight(weight, 2).bfloat16()
    for padding in ((1, 1), (0, 1), (1, 0)):
        for relu in (False, True):
            actual = ops.conv3x3_winograd(x, u, b, padding=padding, relu=relu)
            assert actual.dtype == torch.bfloat16
            assert actual.is_contiguous(memory_format=torch.channels_last)
            expected = reference.conv3x3_winograd(x, u, b, padding, relu=relu)
            # one bfloat16 rounding step of the result apart, at most
            torch.testing.assert_close(actual.float(), expected.float(), rtol=2 ** -7, atol=1e-5,
                                       msg=lambda m: f"seed {seed} padding {padding}: {m}")
            if c_in < 6:
                continue
            exact = F.conv2d(x.double(), weight.double(), b.double(), padding=padding)
            exact = exact.relu() if relu else exact
            direct = F.conv2d(x, weight.bfloat16(), b.bfloat16(), padding=padding)
            direct = direct.relu() if relu else direct
            error, direct_error = relative_error(actual, exact), relative_error(direct, exact)
            assert error < max(2.5 * direct_error, 1e-2), (
                f"seed {seed} padding {padding}: relative error {error:.2e}, direct {direct_error:.2e}")


@pytest.mark.parametrize("tile", TILES)
def test_dense_block_shapes_float32(seed, tile):
    """The shapes the converted LDN runs: 128 → 32 channels (dense layers), 256 → 128 (ladder blend)."""
    for c_in, c_out in ((128, 32), (256, 128)):
        x, weight, b = make(n=1, c_in=c_in, c_out=c_out, height=21, width=70)
        x = x.relu().contiguous(memory_format=torch.channels_last)
        expected = F.conv2d(x.double(), weight.double(), b.double(), padding=1)
        error = relative_error(ops.conv3x3_winograd(x, ops.winograd_weight(weight, tile), b), expected)
        assert error < 2e-5, f"seed {seed}: {c_in}->{c_out} relative error {error:.2e}"


@pytest.mark.parametrize("tile,dtype", [(4, torch.float32), (2, torch.float32), (2, torch.bfloat16)])
def test_layouts(seed, tile, dtype):
    """NCHW in, NCHW out; channels_last, or a channel slice of a channels_last buffer (read in place),
    channels_last out."""
    x, weight, b = make(c_in=6)
    x = x.to(dtype)
    u = ops.winograd_weight(weight, tile).to(dtype)
    expected = ops.conv3x3_winograd(x.contiguous(memory_format=torch.channels_last), u, b)
    buffer = torch.randn(2, 10, 7, 9, dtype=dtype).contiguous(memory_format=torch.channels_last)
    buffer[:, :6] = x
    cases = {"nchw": (x, torch.contiguous_format),
             "channels_last": (x.contiguous(memory_format=torch.channels_last), torch.channels_last),
             "channels_last slice": (buffer[:, :6], torch.channels_last),
             "nchw slice": (torch.cat([x, x], 1)[:, :6], torch.contiguous_format)}
    for name, (view, memory_format) in cases.items():
        actual = ops.conv3x3_winograd(view, u, b)
        assert actual.is_contiguous(memory_format=memory_format), name
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=lambda m: f"seed {seed} {name}: {m}")


@pytest.mark.parametrize("tile,dtype", [(4, torch.float32), (2, torch.float32), (2, torch.bfloat16)])
def test_empty_inputs(seed, tile, dtype):
    x, weight, b = make()
    x = x.to(dtype)
    u = ops.winograd_weight(weight, tile).to(dtype)
    assert ops.conv3x3_winograd(x[:0], u, b).shape == (0, 3, 7, 9)
    assert ops.conv3x3_winograd(x[:, :, :2, :2], u, b, padding=(0, 0)).shape == (2, 3, 0, 0)
    # no input channels: the output is the bias
    no_channels = ops.conv3x3_winograd(x[:, :0], ops.winograd_weight(weight[:, :0], tile).to(dtype), b)
    torch.testing.assert_close(no_channels, b.view(1, -1, 1, 1).expand(2, 3, 7, 9).to(dtype))


@pytest.mark.parametrize("tile", TILES)
def test_winograd_weight_gradcheck_float64(seed, tile):
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: ops.winograd_weight(w, tile), (weight,))


@pytest.mark.parametrize("tile,dtype", [(4, torch.float32), (2, torch.float32), (2, torch.bfloat16)])
def test_opcheck(seed, tile, dtype):
    x, weight, b = make()
    x = x.to(dtype)
    u = ops.winograd_weight(weight, tile).to(dtype)
    for view in (x, x.contiguous(memory_format=torch.channels_last)):
        for padding in ([1, 1], [0, 1]):
            torch.library.opcheck(torch.ops.fastladder.conv3x3_winograd.default, (view, u, b, padding, True),
                                  test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.fastladder.winograd_weight.default, (weight, tile))


@pytest.mark.parametrize("tile", TILES)
def test_torch_compile_fullgraph(seed, tile):
    x, weight, b = make()
    u = ops.winograd_weight(weight, tile)
    fn = lambda x: ops.conv3x3_winograd(x, u, b, relu=True)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), fn(x))


def test_checks_its_arguments():
    x, weight, b = make()
    u = ops.winograd_weight(weight)
    with pytest.raises(ValueError, match=r"weight must be a \[36 or 16, C_in = 5, C_out\] Winograd-domain"):
        ops.conv3x3_winograd(x, weight, b)
    with pytest.raises(ValueError, match=r"padding must be two values, each 0 or 1"):
        ops.conv3x3_winograd(x, u, b, padding=(2, 2))
    with pytest.raises(ValueError, match=r"x must be float32, float64 or bfloat16, got Half"):
        ops.conv3x3_winograd(x.half(), u.half(), b)
    with pytest.raises(ValueError, match=r"bfloat16 needs the F\(2x2, 3x3\) filter"):
        ops.conv3x3_winograd(x.bfloat16(), u.bfloat16(), b)
    with pytest.raises(ValueError, match=r"output_tile must be 4 \(F\(4x4, 3x3\)\) or 2"):
        ops.winograd_weight(weight, 3)
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
    torch.testing.assert_close(ops.winograd_weight(weight, 2).cpu(), ops.winograd_weight(weight.cpu(), 2))
    with pytest.raises(NotImplementedError):
        ops.conv3x3_winograd(x, u, b)
