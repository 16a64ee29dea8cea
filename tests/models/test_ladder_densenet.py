"""LadderDenseNet family: registry, parity with the unfused twin, any input size, errors, loss."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastladder.nn.inference
from fastladder import ops
from fastladder.models import create_model, list_models, optimize_for_inference
from fastladder.models.ladder_densenet import _ladder_layout
from fastladder.nn import FoldedConv2d, fuse_for_inference
from fastladder.reference.models import reference_twin
from fastladder.testing import DEVICES, randomize_batch_norm
from fastladder.train.losses import ladder_loss

TINY = dict(growth_rate=4, num_init_features=8, bn_size=2, block_config=(2, 2, 4, 2), context_channels=16,
            upsample_channels=8)
VARIANTS = [
    ("ladder_densenet121", {}),
    ("ladder_densenet121", dict(mode="add", context="spp")),
    ("ladder_densenet169", dict(context="spp")),
    ("densenet121_32x", {}),
    ("dilated8_densenet121", {}),
]




def test_registry():
    names = list_models()
    for name in ["ladder_densenet121", "ladder_densenet169", "densenet121_32x", "dilated8_densenet121",
                 "densenet121", "densenet161", "densenet169", "densenet201"]:
        assert name in names
    assert list_models("ladder_*") == ["ladder_densenet121", "ladder_densenet169"]
    with pytest.raises(ValueError, match="unknown model 'ladder_densenet999'"):
        create_model("ladder_densenet999")


def test_paper_channel_counts():
    """Skip channels of the LDN papers' DenseNets: DB1 256, DB2 512, DB3 1024 / 1280, DB4a 768 / 1152;
    DB4b 1024 / 1664."""
    assert _ladder_layout(32, (6, 12, 24, 16), 64, "ladder")["skip_channels"] == [256, 512, 1024, 768]
    assert _ladder_layout(32, (6, 12, 32, 32), 64, "ladder")["skip_channels"] == [256, 512, 1280, 1152]
    for name, final in [("ladder_densenet121", 1024), ("ladder_densenet169", 1664)]:
        model = create_model(name)
        assert model.features.denseblock4.out_channels == final
        assert model.context.reduce.conv.weight.shape == (512, final, 1, 1)
        assert model.context.blend.conv.weight.shape == (128, 512, 3, 3)
        assert model.context.blend.conv.dilation == (2, 2)
        assert [up.skip_conv.weight.shape[1] for up in model.upsample] == _ladder_layout(
            32, model.config["block_config"], 64, "ladder")["skip_channels"][::-1]
        assert model.classifier.conv.weight.shape == (19, 128, 1, 1)


@pytest.mark.parametrize("name, kwargs", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference_twin(generator, name, kwargs, device):
    model = randomize_batch_norm(create_model(name, num_classes=5, **TINY, **kwargs), generator)
    model = model.to(device, torch.float64)
    twin = reference_twin(model)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in twin.named_parameters()]
    x = torch.randn(2, 3, 67, 93, dtype=torch.float64, generator=generator).to(device)
    target = torch.randint(0, 5, (2, 67, 93), generator=generator).to(device)
    target[:, :5] = 255
    # train: logits, aux logits, gradients, running statistics
    (logits, aux), (logits_ref, aux_ref) = model(x), twin(x)
    assert logits.shape == (2, 5, 67, 93)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-9, atol=1e-9)
    if aux_ref is None:
        assert aux is None
    else:
        torch.testing.assert_close(aux, aux_ref, rtol=1e-9, atol=1e-9)
    ladder_loss((logits, aux), target).backward()
    ladder_loss((logits_ref, aux_ref), target).backward()
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-9, msg=n)
    for (n, b), c in zip(model.named_buffers(), twin.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-9, atol=1e-9, msg=n)
    # eval: logits only, from the model and from its fused inference form
    model.eval()
    twin.eval()
    fused = fuse_for_inference(model)
    with torch.no_grad():
        expected = twin(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(fused(x), expected, rtol=1e-9, atol=1e-9)


def test_float32_eval_matches_reference(generator):
    model = randomize_batch_norm(create_model("ladder_densenet121", num_classes=4, **TINY), generator).eval()
    twin = reference_twin(model)
    x = torch.randn(1, 3, 64, 80, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=1e-4, atol=1e-4)


def test_memory_efficient_model_equals_naive(generator):
    naive = randomize_batch_norm(create_model("ladder_densenet121", num_classes=3, **TINY), generator)
    efficient = create_model("ladder_densenet121", num_classes=3, memory_efficient=True, **TINY)
    efficient.load_state_dict(naive.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=generator)
    target = torch.randint(0, 3, (2, 64, 64), generator=generator)
    for model in (naive, efficient):
        ladder_loss(model(x), target).backward()
    for (n, p), q in zip(naive.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=n)
    for (n, b), c in zip(naive.named_buffers(), efficient.buffers()):
        torch.testing.assert_close(b, c, rtol=0, atol=0, msg=n)
        if n.endswith("num_batches_tracked"):
            assert b.item() == 1, n


@pytest.mark.parametrize("size", [(61, 61), (64, 64), (65, 130), (97, 71), (128, 77)])
def test_any_input_size_gives_input_sized_logits(generator, size):
    model = create_model("ladder_densenet121", num_classes=3, **TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size, generator=generator)).shape == (1, 3) + size


@pytest.mark.parametrize("name, smallest", [("ladder_densenet121", 61), ("densenet121_32x", 29),
                                            ("dilated8_densenet121", 5)])
def test_image_smaller_than_the_stride_is_an_error(name, smallest):
    model = create_model(name, num_classes=3, **TINY).eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, smallest, smallest))
        with pytest.raises(ValueError, match=rf"\(1, 3, {smallest - 1}, 100\).*at least {smallest}"):
            model(torch.zeros(1, 3, smallest - 1, 100))


def test_bad_input_shapes():
    model = create_model("ladder_densenet121", num_classes=3, **TINY)
    with pytest.raises(ValueError, match=r"3 channels.*\(1, 4, 64, 64\)"):
        model(torch.zeros(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\].*\(3, 64, 64\)"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="architecture"):
        create_model("ladder_densenet121", architecture="16x")
    with pytest.raises(ValueError, match="context"):
        create_model("ladder_densenet121", context="aspp")


def test_backbone_weights_load_into_features(generator):
    source = create_model("densenet121", num_classes=1000, growth_rate=4, num_init_features=8, bn_size=2,
                          block_config=(2, 2, 4, 2))
    randomize_batch_norm(source, generator)
    model = create_model("ladder_densenet121", backbone_weights=source.state_dict(), **TINY)
    for key, value in source.features.state_dict().items():
        if not key.startswith("norm5"):
            torch.testing.assert_close(model.features.state_dict()[key], value, msg=key)
    broken = {k: v for k, v in source.state_dict().items() if "denseblock4.denselayer2." not in k}
    with pytest.raises(ValueError,
                       match=r"missing keys \(\d+\): features\.denseblock4\.denselayer2\.conv1\.weight"):
        create_model("ladder_densenet121", backbone_weights=broken, **TINY)


def test_optimize_for_inference_gives_the_eval_logits(generator):
    model = randomize_batch_norm(create_model("ladder_densenet121", num_classes=3, **TINY), generator).eval()
    x = torch.randn(1, 3, 64, 96, generator=generator)
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model, x)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)


def test_ladder_loss(generator):
    logits = torch.randn(2, 4, 16, 12, generator=generator, requires_grad=True)
    aux = torch.randn(2, 4, 4, 3, generator=generator)
    target = torch.randint(0, 4, (2, 16, 12), generator=generator)
    target[0, :3] = 255
    upsampled = F.interpolate(aux, size=(16, 12), mode="bilinear", align_corners=False)
    expected = 0.7 * F.cross_entropy(logits, target, ignore_index=255) + 0.3 * F.cross_entropy(
        upsampled, target, ignore_index=255)
    torch.testing.assert_close(ladder_loss((logits, aux), target), expected)
    torch.testing.assert_close(ladder_loss((logits, None), target),
                               F.cross_entropy(logits, target, ignore_index=255))
    torch.testing.assert_close(ladder_loss(logits, target), F.cross_entropy(logits, target, ignore_index=255))
    # ignored pixels contribute nothing, whatever their logits
    changed = logits.detach().clone()
    changed[0, :, :3] = 100
    torch.testing.assert_close(ladder_loss((changed, aux), target), expected)
    with pytest.raises(ValueError, match=r"target \(2, 16, 11\)"):
        ladder_loss(logits, target[..., :11])


@pytest.mark.slow
def test_full_size_ladder_densenet121_matches_reference(generator):
    model = randomize_batch_norm(create_model("ladder_densenet121"), generator).eval()
    twin = reference_twin(model)
    x = torch.randn(1, 3, 256, 512, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=1e-3, atol=1e-3)


def test_channels_last_and_banded_eval_match_reference(generator, monkeypatch):
    monkeypatch.setattr(fastladder.nn.inference, "BAND_BYTES", 1000)
    monkeypatch.setattr(fastladder.nn.inference, "LAYER_BAND_BYTES", 1000)
    monkeypatch.setattr(fastladder.nn.inference, "LAYER_BAND_ROWS", 3)
    model = randomize_batch_norm(create_model("ladder_densenet121", num_classes=4, **TINY), generator)
    model = model.double().eval()
    twin = reference_twin(model)
    x = torch.randn(1, 3, 70, 90, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        expected = twin(x)
        for candidate in (model, fuse_for_inference(model)):
            torch.testing.assert_close(candidate(x), expected, rtol=1e-9, atol=1e-9)
            candidate = candidate.to(memory_format=torch.channels_last)
            torch.testing.assert_close(candidate(x.contiguous(memory_format=torch.channels_last)), expected,
                                       rtol=1e-9, atol=1e-9)


def test_cpu_inference_convolves_3x3_by_winograd(generator, monkeypatch):
    """The converted dense layers (whole and in row bands) and ladder blends run their 3×3s through
    conv3x3_winograd on CPU: F(4×4, 3×3) in float32, F(2×2, 3×3) after a cast to bfloat16 (on CPUs with
    AVX512_BF16, which also fuse BN-ReLU-1×1), and still give the eval model's logits."""
    monkeypatch.setattr(fastladder.nn.inference, "LAYER_BAND_BYTES", 1000)
    monkeypatch.setattr(fastladder.nn.inference, "LAYER_BAND_ROWS", 3)
    model = randomize_batch_norm(create_model("ladder_densenet121", num_classes=4, **TINY), generator).eval()
    x = torch.randn(1, 3, 70, 90, generator=generator)
    fused = fuse_for_inference(model).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = model(x)
        with torch.profiler.profile() as profile:
            actual = fused(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    calls = [event.name for event in profile.events()]
    layers = [m for m in fused.modules() if isinstance(m, fastladder.nn.inference.FoldedDenseLayer)]
    blends = [m for m in fused.modules() if isinstance(m, fastladder.nn.inference.FoldedLadderUpsample)]
    # banded layers (DB1 at 1/4: 18 rows in bands of 3) call it once per band
    assert calls.count("fastladder::conv3x3_winograd") > len(layers) + len(blends)

    def positions():  # of the Winograd filters: 36 for F(4×4, 3×3), 16 for F(2×2, 3×3)
        return ({m.weight2_winograd.shape[0] for m in layers}
                | {m.blend_weight_winograd.shape[0] for m in blends})

    assert positions() == {36}

    # the cast recomputes the Winograd filters in their bfloat16 form from the float32 filters
    weight2 = layers[0].weight2.clone()
    fused.to(torch.bfloat16)
    assert positions() == {16}
    assert layers[0].weight2_winograd.dtype == torch.bfloat16
    torch.testing.assert_close(layers[0].weight2_winograd, ops.winograd_weight(weight2, 2).bfloat16(),
                               rtol=0, atol=0)
    with torch.inference_mode(), torch.profiler.profile() as profile:
        actual = fused(x.to(torch.bfloat16))
    calls = [event.name for event in profile.events()]
    assert ("fastladder::conv3x3_winograd" in calls) == ops.fast_bfloat16()
    # and the dense layers' BN-ReLU-1×1 fused
    assert ("fastladder::bn_relu_conv1x1" in calls) == ops.fast_bfloat16()
    error = ((actual.float() - expected).abs().max() / expected.abs().max()).item()
    assert error < 5e-2, f"bfloat16 relative error {error:.2e}"
    fused.float()
    assert positions() == {36}


def _tiny_registry_model(name, generator):
    """Every registry model at a size tests can run (DenseNets and LDNs tiny, SSD at width 1/8)."""
    if name.startswith("ssd"):
        return create_model(name, num_classes=4, width=0.125)
    if name.startswith("densenet") and not name.endswith(("_32x",)) and "dilated8" not in name:
        model = create_model(name, num_classes=6, growth_rate=4, num_init_features=8, bn_size=2,
                             block_config=(2, 2, 4, 2))
        return randomize_batch_norm(model, generator)
    return randomize_batch_norm(create_model(name, num_classes=4, **TINY), generator)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("device", DEVICES)
def test_every_registry_model_fuses_to_its_eval_output(generator, name, device):
    """fuse_for_inference and optimize_for_inference = the eval model = the reference twin (where there is
    one); the training model is left as it was."""
    model = _tiny_registry_model(name, generator).to(device).eval()
    keys = list(model.state_dict())
    size = (model.min_input_size(),) * 2 if name.startswith("ssd") else (67, 93)
    x = torch.randn(1 if name.startswith("ssd") else 2, 3, *size, generator=generator).to(device)
    fused = fuse_for_inference(model)
    fast = optimize_for_inference(model, x)
    assert list(model.state_dict()) == keys and all(m.training is False for m in model.modules())
    tolerance = dict(rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        if name.startswith("ssd"):  # compare the head's outputs, before post-processing
            expected = model.head(model.forward_features(x))
            for got in (fused.head(fused.forward_features(x)),
                        fast.module.head(fast.module.forward_features(x.contiguous(memory_format=torch.channels_last)))):
                for a, b in zip(got, expected):
                    torch.testing.assert_close(a, b, **tolerance)
            return
        expected = model(x)
        torch.testing.assert_close(reference_twin(model)(x), expected, **tolerance)
        torch.testing.assert_close(fused(x), expected, **tolerance)
        torch.testing.assert_close(fast(x), expected, **tolerance)
    assert type(fused.features.conv0) is FoldedConv2d  # the stem's norm0 and relu0 folded into conv0


def _hooked_modules(model):
    """Names of the modules of model.named_modules() whose forward hooks fire in one call (containers
    without a forward of their own, nn.ModuleList, cannot be called and are left out)."""
    ran = []
    handles = [module.register_forward_hook(lambda *_, name=name: ran.append(name))
               for name, module in model.named_modules() if not isinstance(module, nn.ModuleList)]
    expected = [name for name, module in model.named_modules() if not isinstance(module, nn.ModuleList)]
    return ran, expected, handles


@pytest.mark.parametrize("name, kwargs", VARIANTS)
def test_every_module_fires_its_forward_hook(generator, name, kwargs):
    """visualize hooks modules by name: every module of the eval model and of its fused form runs as a
    module."""
    model = randomize_batch_norm(create_model(name, num_classes=3, **TINY, **kwargs), generator).eval()
    x = torch.randn(1, 3, 64, 64, generator=generator)
    for candidate in (model, fuse_for_inference(model)):
        ran, expected, handles = _hooked_modules(candidate)
        with torch.no_grad():
            candidate(x)
        for handle in handles:
            handle.remove()
        # the auxiliary classifier is part of the training loss only
        assert {n for n in expected if not n.startswith("aux_classifier")} - set(ran) == set()
    assert {"features.conv0", "features.norm0", "classifier", "context",
            "features.denseblock1.denselayer1.conv2"} <= set(dict(model.named_modules()))


def test_optimize_for_inference_bfloat16_and_nchw_options(generator):
    model = randomize_batch_norm(create_model("ladder_densenet121", num_classes=3, **TINY), generator).eval()
    x = torch.randn(1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected = model(x)
    nchw = optimize_for_inference(model, x, channels_last=False)
    torch.testing.assert_close(nchw(x), expected, rtol=1e-4, atol=1e-4)
    half = optimize_for_inference(model, x, dtype=torch.bfloat16)
    out = half(x)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    torch.testing.assert_close(out.float(), expected, rtol=0.1, atol=0.1 * expected.abs().max().item())
    with pytest.raises(ValueError, match="example_input"):
        optimize_for_inference(model, x[0])
