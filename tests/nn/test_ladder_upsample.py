"""fastladder.nn.LadderUpsample against its unfused twin fastladder.reference.LadderUpsampleReference."""
import pytest
import torch

from fastladder.nn import FoldedLadderUpsample, LadderUpsample, fuse_for_inference
from fastladder.reference import LadderUpsampleReference
from fastladder.testing import DEVICES


def randomize_batch_norms(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.5)


def pair(mode, skip_projection=True, low_channels=6, skip_channels=10, out_channels=5):
    if mode == "add" and not skip_projection:
        skip_channels = low_channels
    fused = LadderUpsample(low_channels, skip_channels, out_channels, mode=mode,
                           skip_projection=skip_projection)
    randomize_batch_norms(fused)
    twin = LadderUpsampleReference(low_channels, skip_channels, out_channels, mode=mode,
                                   skip_projection=skip_projection)
    twin.load_state_dict(fused.state_dict())  # identical parameter names: loads strictly
    return fused, twin, skip_channels


@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("skip_projection", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_eval_parity(seed, mode, skip_projection, channels_last, device):
    """The eval module and its fuse_for_inference form against the unfused twin."""
    module, twin, skip_channels = pair(mode, skip_projection)
    module, twin = module.to(device).eval(), twin.to(device).eval()
    folded = fuse_for_inference(module)
    assert type(folded) is FoldedLadderUpsample
    low = torch.randn(2, 6, 5, 9).to(device)
    skip = torch.randn(2, skip_channels, 9, 17).to(device)
    if channels_last:
        low, skip = low.to(memory_format=torch.channels_last), skip.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = twin(low, skip)
        for candidate in (module, folded):
            torch.testing.assert_close(candidate(low, skip), expected, rtol=1e-4, atol=1e-4,
                                       msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("device", DEVICES)
def test_train_parity(seed, mode, device):
    fused, twin, skip_channels = pair(mode)
    fused.to(device).train(), twin.to(device).train()
    low = torch.randn(3, 6, 4, 6).to(device).requires_grad_()
    skip = torch.randn(3, skip_channels, 8, 11).to(device).requires_grad_()
    out_fused, out_twin = fused(low, skip), twin(low, skip)
    torch.testing.assert_close(out_fused, out_twin, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out_twin)
    params_f, params_t = list(fused.parameters()), list(twin.parameters())
    grads_f = torch.autograd.grad(out_fused, [low, skip] + params_f, grad)
    grads_t = torch.autograd.grad(out_twin, [low, skip] + params_t, grad)
    for a, e in zip(grads_f, grads_t):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=lambda m: f"seed {seed}: {m}")
    for (name, a), b in zip(fused.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, msg=lambda m: f"buffer {name}: {m}")


def test_folded_module_leaves_a_skip_it_does_not_own_intact(seed):
    """The inference module frees a skip handed over as a temporary after projecting it, never one that
    somebody still holds (a variable, a hook reading the module's inputs)."""
    module, twin, skip_channels = pair("concat")
    folded = fuse_for_inference(module.eval())
    low = torch.randn(1, 6, 5, 9)
    skip = torch.randn(1, skip_channels, 9, 17)
    kept = skip.clone()
    with torch.no_grad():
        expected = twin.eval()(low, skip)
        torch.testing.assert_close(folded(low, skip), expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(skip, kept)
        seen = []
        handle = folded.register_forward_hook(lambda m, inputs, out: seen.append(inputs[1].clone()))
        torch.testing.assert_close(folded(low, skip.clone()), expected, rtol=1e-4, atol=1e-4)
        handle.remove()
        assert torch.equal(seen[0], kept)
        skips = [skip.clone()]
        torch.testing.assert_close(folded(low, skips.pop()), expected, rtol=1e-4, atol=1e-4)


def test_state_dict_keys_are_plain_modules():
    keys = set(LadderUpsample(4, 8, 16).state_dict())
    assert {"skip_norm.weight", "skip_norm.running_mean", "skip_conv.weight", "blend_norm.weight",
            "blend_conv.weight"} <= keys


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        LadderUpsample(4, 8, mode="mean")
    with pytest.raises(ValueError, match="needs skip_channels == low_channels"):
        LadderUpsample(4, 8, mode="add", skip_projection=False)
    module = LadderUpsample(4, 8).eval()
    with pytest.raises(ValueError, match=r"low must be \[N, 4, h, w\], got shape \(1, 3, 2, 2\)"):
        module(torch.randn(1, 3, 2, 2), torch.randn(1, 8, 4, 4))
