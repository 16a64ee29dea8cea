"""DenseNet backbones: torchvision architecture, state_dict keys and weights; dilation; errors."""
import re

import pytest
import torch
import torchvision

from fastladder.models import create_model, densenet121
from fastladder.models.densenet import load_densenet_weights
from fastladder.reference.models import reference_twin


def legacy_keys(state_dict):
    """The old torchvision key style: denselayerM.norm1.weight → denselayerM.norm.1.weight."""
    return {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def torchvision_densenet121():
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def block_outputs(features, x):
    outputs = {}
    for name, module in features.named_children():
        x = module(x)
        if name.startswith("denseblock"):
            outputs[name] = x
    return outputs


@pytest.mark.parametrize("style", ["current", "legacy", "path"])
def test_loads_torchvision_densenet121(torchvision_densenet121, style, tmp_path):
    weights = torchvision_densenet121.state_dict()
    if style == "legacy":
        weights = legacy_keys(weights)
        assert any(".norm.1." in k for k in weights)
    if style == "path":
        torch.save(weights, tmp_path / "densenet121.pth")
        weights = str(tmp_path / "densenet121.pth")
    model = create_model("densenet121", num_classes=1000, backbone_weights=weights).eval()
    assert list(model.state_dict()) == list(torchvision_densenet121.state_dict())
    x = torch.randn(1, 3, 75, 61)
    with torch.no_grad():
        ours, theirs = block_outputs(model.features, x), block_outputs(torchvision_densenet121.features, x)
        for name in theirs:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-4, msg=name)
        torch.testing.assert_close(model(x), torchvision_densenet121(x), rtol=1e-4, atol=1e-4)


def test_torchvision_memory_efficient_keys_match():
    assert list(densenet121(memory_efficient=True).state_dict()) == list(
        torchvision.models.densenet121(weights=None, memory_efficient=True).state_dict())


@pytest.mark.parametrize("name, factory", [("densenet161", torchvision.models.densenet161),
                                           ("densenet169", torchvision.models.densenet169),
                                           ("densenet201", torchvision.models.densenet201)])
def test_keys_and_shapes_match_torchvision(name, factory):
    ours = {k: v.shape for k, v in create_model(name, num_classes=1000).state_dict().items()}
    theirs = {k: v.shape for k, v in factory(weights=None).state_dict().items()}
    assert ours == theirs


def test_backbone_weights_with_other_class_count_skip_the_classifier(torchvision_densenet121):
    model = create_model("densenet121", num_classes=19, backbone_weights=torchvision_densenet121.state_dict())
    torch.testing.assert_close(model.features.conv0.weight, torchvision_densenet121.features.conv0.weight)
    assert model.classifier.weight.shape == (19, 1024)


def test_missing_unexpected_and_mismatched_keys_are_listed(torchvision_densenet121):
    weights = dict(torchvision_densenet121.state_dict())
    del weights["features.denseblock2.denselayer3.conv1.weight"]
    weights["features.denseblock9.denselayer1.conv1.weight"] = torch.zeros(1)
    weights["features.conv0.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(ValueError) as error:
        create_model("densenet121", num_classes=1000, backbone_weights=weights)
    text = str(error.value)
    assert "missing keys (1): features.denseblock2.denselayer3.conv1.weight" in text
    assert "unexpected keys (1): features.denseblock9.denselayer1.conv1.weight" in text
    assert "features.conv0.weight: weights (64, 3, 5, 5) vs model (64, 3, 7, 7)" in text


def test_a_densenet169_checkpoint_does_not_fit_densenet121():
    weights = torchvision.models.densenet169(weights=None).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys .*denseblock3\.denselayer25"):
        load_densenet_weights(densenet121(), weights)


def test_not_a_state_dict():
    with pytest.raises(ValueError, match="path or a state_dict"):
        create_model("densenet121", backbone_weights=42)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_tiny_densenet_matches_reference(generator, memory_efficient):
    config = dict(growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8, bn_size=2, num_classes=7)
    model = create_model("densenet121", memory_efficient=memory_efficient, **config).double()
    twin = reference_twin(model)
    x = torch.randn(2, 3, 45, 37, dtype=torch.float64, generator=generator)
    out, expected = model(x), twin(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    out.sum().backward()
    expected.sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_dilated_densenet_has_stride_8(generator):
    config = dict(growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8, bn_size=2, dilated=True)
    model = create_model("densenet121", **config).double().eval()
    twin = reference_twin(model)
    assert model.features.denseblock3.denselayer1.conv2.dilation == (2, 2)
    assert model.features.denseblock4.denselayer1.conv2.dilation == (4, 4)
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[-2:] == (8, 6)
        torch.testing.assert_close(model(x), twin(x), rtol=1e-10, atol=1e-10)
