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
def test_matches_reference(seed, mode, channels_last, bias):
    t = make(mode, bias=bias, requires_grad=True)
    if channels_last:
        t["skip"] = t["skip"].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    for relu in (False, True):
        actual = call(ops.ladder_blend, t, mode=mode, relu=relu)
        expected = call(reference.ladder_blend, t, mode=mode, relu=relu)
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"seed {seed}: {m}")
        leaves = [v for v in t.values() if v is not None]
        grad_out = torch.randn_like(expected)
        for a, e in zip(torch.autograd.grad(actual, leaves, grad_out), torch.autograd.grad(expected, leaves, grad_out)):
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
