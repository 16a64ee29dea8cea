"""fastladder.ops.ladder_blend against conv2d(reference upsample_concat)."""
import pytest
import torch

from fastladder import ops, reference
from fastladder.testing import DEVICES


def make(mode="concat", low_channels=4, skip_channels=6, low_size=(5, 7), skip_size=(10, 13), out_channels=3,
         dtype=torch.float32, device="cpu", bias=True, requires_grad=False):
    skip_channels = low_channels if mode == "add" else skip_channels
    joined = low_channels + skip_channels if mode == "concat" else skip_channels
    tensors = dict(
        low=torch.randn(2, low_channels, *low_size, dtype=dtype, device=device),
        skip=torch.randn(2, skip_channels, *skip_size, dtype=dtype, device=device),
        weight=torch.randn(out_channels, joined, 3, 3, dtype=dtype, device=device) * 0.2,
        bias=torch.randn(out_channels, dtype=dtype, device=device) if bias else None,
        scale=torch.rand(joined, dtype=dtype, device=device) + 0.5,
        shift=torch.randn(joined, dtype=dtype, device=device) * 0.5,
    )
    for t in tensors.values():
        if t is not None:
            t.requires_grad_(requires_grad)
    return tensors


def call(fn, t, **kwargs):
    return fn(t["low"], t["skip"], t["weight"], t["bias"], scale=t["scale"], shift=t["shift"], **kwargs)


@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference(seed, mode, channels_last, bias, device):
    """float32 forward and backward, on each device."""
    t = make(mode, bias=bias, device=device, requires_grad=True)
    if channels_last:
        t["skip"] = t["skip"].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    for relu in (False, True):
        actual = call(ops.ladder_blend, t, mode=mode, relu=relu)
        expected = call(reference.ladder_blend, t, mode=mode, relu=relu)
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"seed {seed}: {m}")
        leaves = [v for v in t.values() if v is not None]
        grad_out = torch.randn_like(expected)
        for a, e in zip(torch.autograd.grad(actual, leaves, grad_out),
                        torch.autograd.grad(expected, leaves, grad_out)):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=lambda m: f"seed {seed}: {m}")


def test_gradcheck_float64(seed):
    t = make(low_channels=2, skip_channels=2, low_size=(3, 3), skip_size=(5, 6), out_channels=2,
             dtype=torch.float64, requires_grad=True)
    names = ["low", "skip", "weight", "bias", "scale", "shift"]

    def fn(low, skip, weight, bias, scale, shift):
        return ops.ladder_blend(low, skip, weight, bias, scale=scale, shift=shift)

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names))


def test_torch_compile_fullgraph(seed):
    t = make(requires_grad=True)
    fn = lambda **kw: call(ops.ladder_blend, kw).sum()  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(**t), fn(**t))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast(seed, device):
    dtype = torch.bfloat16
    t = make(device=device)
    with torch.autocast(device, dtype=dtype):
        out = call(ops.ladder_blend, t)
    assert out.dtype == dtype
    expected = call(reference.ladder_blend, t)
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=1e-1)


def test_empty_batch():
    t = make()
    t["low"], t["skip"] = t["low"][:0], t["skip"][:0]
    assert call(ops.ladder_blend, t).shape == (0, 3, 10, 13)


@pytest.mark.parametrize("change,match", [
    (dict(weight=torch.randn(3, 9, 3, 3)), r"weight has 9 input channels but the joined input has 10"),
    (dict(weight=torch.randn(3, 10, 1, 1)), r"weight must be a \[C_out, C_join, 3, 3\] tensor"),
    (dict(bias=torch.randn(4)), r"bias must be a \[3\] tensor"),
    (dict(weight=torch.randn(3, 10, 3, 3).double()), r"weight must have the inputs' dtype"),
])
def test_bad_input(change, match):
    t = make()
    t.update(change)
    with pytest.raises(ValueError, match=match):
        call(ops.ladder_blend, t)


@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("band_bytes", [1, 10000, 10**9])
@pytest.mark.parametrize("device", DEVICES)
def test_inference_in_bands_matches_reference(seed, monkeypatch, mode, channels_last, band_bytes, device):
    # no gradient: ladder_blend convolves band by band; tiny band sizes force many bands (8 rows,
    # the minimum, with a last band of a different height)
    from fastladder.ops import upsample
    monkeypatch.setattr(upsample, "BAND_BYTES", band_bytes)
    t = make(mode, low_size=(6, 7), skip_size=(19, 13), device=device)
    if channels_last:
        t["skip"] = t["skip"].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        actual = call(ops.ladder_blend, t, mode=mode)
    expected = call(reference.ladder_blend, t, mode=mode)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"seed {seed}: {m}")
    expected_format = torch.channels_last if channels_last else torch.contiguous_format
    assert actual.is_contiguous(memory_format=expected_format)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_upsample_concat_rows_is_a_window_of_the_full_result(seed, channels_last, device):
    t = make(low_size=(4, 5), skip_size=(9, 11), device=device)
    full = ops.upsample_concat(t["low"], t["skip"], scale=t["scale"], shift=t["shift"], relu=True)
    for begin, count in [(-1, 11), (-1, 3), (0, 9), (4, 2), (7, 3), (9, 1), (2, 0)]:
        rows = torch.ops.fastladder.upsample_concat_rows(t["low"], t["skip"], "concat", t["scale"],
                                                         t["shift"], True, False, begin, count, channels_last)
        assert rows.shape == (2, 10, count, 11)
        assert rows.is_contiguous(memory_format=(torch.channels_last if channels_last
                                                 else torch.contiguous_format))
        for k in range(count):
            y = begin + k
            expected = full[:, :, y] if 0 <= y < 9 else torch.zeros_like(full[:, :, 0])
            torch.testing.assert_close(rows[:, :, k], expected, msg=lambda m: f"row {y} (seed {seed}): {m}")
    with pytest.raises(ValueError, match=r"rows \[-2, 3\) must lie within \[-1, 10\]"):
        torch.ops.fastladder.upsample_concat_rows(t["low"], t["skip"], "concat", None, None, False, False,
                                                  -2, 5, True)


@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_upsample_concat_rows_out_fills_the_band_buffer(seed, mode, channels_last, device):
    """upsample_concat_rows.out writes the window into a reused band buffer, in place, in its layout."""
    t = make(mode, low_size=(4, 5), skip_size=(9, 11), device=device)
    joined = t["scale"].shape[0]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.full((2, joined, 4, 11), float("nan"), device=device).contiguous(memory_format=layout)
    for begin in (-1, 3, 6):
        args = (t["low"], t["skip"], mode, t["scale"], t["shift"], True, False, begin, 4, channels_last)
        result = torch.ops.fastladder.upsample_concat_rows.out(*args, out=out)
        assert result.data_ptr() == out.data_ptr() and out.is_contiguous(memory_format=layout)
        expected = torch.ops.fastladder.upsample_concat_rows(*args)
        assert torch.equal(out, expected), seed
    with pytest.raises(ValueError):
        torch.ops.fastladder.upsample_concat_rows.out(t["low"], t["skip"], mode, None, None, False, False, 0,
                                                      3, channels_last, out=out)


def test_upsample_concat_rows_opcheck(seed):
    t = make(low_size=(4, 5), skip_size=(9, 11))
    for channels_last in (False, True):
        args = (t["low"], t["skip"], "concat", t["scale"], t["shift"], True, False, -1, 6, channels_last)
        torch.library.opcheck(torch.ops.fastladder.upsample_concat_rows.default, args)


def test_torch_compile_inference_in_bands(seed):
    t = make()
    fn = lambda **kw: call(ops.ladder_blend, kw)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**t), fn(**t))


def test_ladder_blend_bands_opcheck(seed):
    t = make(low_size=(4, 5), skip_size=(9, 11))
    for skip in (t["skip"], t["skip"].contiguous(memory_format=torch.channels_last)):
        args = (t["low"], skip, t["weight"], t["bias"], "concat", t["scale"], t["shift"], True, False, 4)
        torch.library.opcheck(torch.ops.fastladder.ladder_blend_bands.default, args,
                              test_utils=("test_schema", "test_faketensor"))


def test_ladder_blend_bands_checks_its_arguments():
    t = make()
    with pytest.raises(ValueError, match=r"weight must be a \[C_out, 10, 3, 3\] tensor for the joined input"):
        torch.ops.fastladder.ladder_blend_bands(t["low"], t["skip"], t["weight"][:, :9], None, "concat",
                                                None, None, True, False, 8)
    with pytest.raises(ValueError, match=r"band_rows must be positive, got 0"):
        torch.ops.fastladder.ladder_blend_bands(t["low"], t["skip"], t["weight"], None, "concat", None, None,
                                                True, False, 0)
