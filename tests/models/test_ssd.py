"""SSD300/SSD512: priors (counts, geometry vs the original Caffe configurations and torchvision), feature map
sizes, outputs in train and eval, other input sizes, torchvision VGG16 weights, L2Norm, gradients."""
import math

import pytest
import torch

from fastladder.models import create_model, list_models
from fastladder.models.ssd import (SSD300_CONFIG, SSD512_CONFIG, SSD, priors_per_location, ssd300_vgg16,
                                   ssd512_vgg16, ssd_priors)
from fastladder.nn.ssd import L2Norm, SSDHead
from fastladder.ops.boxes import ssd_postprocess
from fastladder.train.multibox import MultiBoxLoss

SSD300_MAPS = [38, 19, 10, 5, 3, 1]
SSD512_MAPS = [64, 32, 16, 8, 4, 2, 1]


def config_priors(config, maps, **kwargs):
    return ssd_priors(config["image_size"], maps, config["steps"], config["min_sizes"], config["max_sizes"],
                      config["aspect_ratios"], dtype=torch.float64, **kwargs)


@pytest.fixture(scope="module")
def tiny_ssd300():
    torch.manual_seed(0)
    return ssd300_vgg16(num_classes=5, width=0.125)


# --- priors ---------------------------------------------------------------------------------------

def test_prior_counts():
    c300, c512 = SSD300_CONFIG, SSD512_CONFIG
    assert priors_per_location(c300["aspect_ratios"], c300["max_sizes"]) == [4, 6, 6, 6, 4, 4]
    assert priors_per_location(c512["aspect_ratios"], c512["max_sizes"]) == [4, 6, 6, 6, 6, 4, 4]
    assert config_priors(SSD300_CONFIG, SSD300_MAPS).shape == (8732, 4)
    assert config_priors(SSD512_CONFIG, SSD512_MAPS).shape == (24564, 4)


def test_priors_follow_the_facts_formula():
    """Centres (j + 0.5)·step/300; sides min/300, sqrt(min·max)/300, min·sqrt(ar)/300 × min/sqrt(ar)/300."""
    priors = config_priors(SSD300_CONFIG, SSD300_MAPS, clip=False)
    start = 0
    for k, (f, step, lo, hi) in enumerate(zip(SSD300_MAPS, SSD300_CONFIG["steps"], SSD300_CONFIG["min_sizes"],
                                              SSD300_CONFIG["max_sizes"])):
        per_location = [4, 6, 6, 6, 4, 4][k]
        block = priors[start:start + f * f * per_location].view(f, f, per_location, 4)
        start += f * f * per_location
        s, extra = lo / 300, math.sqrt(lo * hi) / 300
        r2 = math.sqrt(2)
        expected = [(s, s), (extra, extra), (s * r2, s / r2), (s / r2, s * r2)]
        if per_location == 6:
            expected += [(s * math.sqrt(3), s / math.sqrt(3)), (s / math.sqrt(3), s * math.sqrt(3))]
        i, j = f - 1, min(1, f - 1)  # a location off the diagonal: row i, column j
        for a, (w, h) in enumerate(expected):
            first = [0.5 * step / 300, 0.5 * step / 300, w, h]
            assert block[0, 0, a].tolist() == pytest.approx(first, abs=1e-12)
            other = [(j + 0.5) * step / 300, (i + 0.5) * step / 300, w, h]
            assert block[i, j, a].tolist() == pytest.approx(other, abs=1e-12)
    assert start == 8732


def test_priors_clip_and_match_torchvision():
    """The VOC SSD300 priors equal torchvision's DefaultBoxGenerator with scales min_sizes/300 + [315/300]."""
    anchor_utils = pytest.importorskip("torchvision.models.detection.anchor_utils")
    scales = [s / 300 for s in SSD300_CONFIG["min_sizes"]] + [315 / 300]
    generator = anchor_utils.DefaultBoxGenerator([list(r) for r in SSD300_CONFIG["aspect_ratios"]],
                                                 scales=scales, steps=list(SSD300_CONFIG["steps"]), clip=True)
    expected = generator._grid_default_boxes([[f, f] for f in SSD300_MAPS], [300, 300], dtype=torch.float64)
    priors = config_priors(SSD300_CONFIG, SSD300_MAPS)
    torch.testing.assert_close(priors, expected, rtol=0, atol=1e-6)  # torchvision rounds to float32
    assert priors[:, 2:].max() <= 1 and priors.min() > 0
    unclipped = config_priors(SSD300_CONFIG, SSD300_MAPS, clip=False)
    assert unclipped[:, 2:].max() > 1  # the last map's wide priors


def test_custom_aspect_ratios_and_convention():
    """The seed study's {0.3, 0.5, 1, 2, 3} without flipping: 1 (dropped as a duplicate of the square),
    so 1 + 1 + 4 = 6 per location; ar = w / h, so 0.3 is a tall box."""
    ratios = ((0.3, 0.5, 1, 2, 3),) * 6
    assert priors_per_location(ratios, SSD300_CONFIG["max_sizes"], flip=False) == [6] * 6
    # flipped: + 1/0.3 and 1/3 (1/0.5 = 2 and 1/2 = 0.5 are duplicates)
    assert priors_per_location(ratios, SSD300_CONFIG["max_sizes"], flip=True) == [8] * 6
    assert priors_per_location(((2,),), None) == [3]
    priors = ssd_priors(300, [1], None, [100], None, [(0.3,)], clip=False, flip=False, dtype=torch.float64)
    assert priors.shape == (2, 4)
    w, h = priors[1, 2].item(), priors[1, 3].item()
    assert w / h == pytest.approx(0.3) and w * h == pytest.approx((100 / 300) ** 2)
    # image-relative on a non-square image: sides divided by W and H respectively
    priors = ssd_priors((200, 400), [(2, 4)], None, [100], None, None, dtype=torch.float64)
    assert priors.shape == (8, 4)
    assert priors[0].tolist() == pytest.approx([0.125, 0.25, 0.25, 0.5])


def test_custom_aspect_ratios_change_head_channels():
    ratios = ((0.3, 0.5, 1, 2, 3),) * 6
    model = ssd300_vgg16(num_classes=3, width=0.125, aspect_ratios=ratios, flip=False)
    assert model.priors_per_location == (6,) * 6
    assert [conv.out_channels for conv in model.head.loc] == [24] * 6
    assert [conv.out_channels for conv in model.head.conf] == [18] * 6
    assert model.priors.shape == (sum(f * f for f in SSD300_MAPS) * 6, 4)
    # an extra tall ratio for pedestrians: square, extra square, 2, 1/2, 0.4 and (flipped) 2.5
    pedestrian = ssd300_vgg16(num_classes=2, width=0.125, aspect_ratios=((2, 0.4),) * 6)
    assert pedestrian.priors_per_location == (6,) * 6
    assert pedestrian.head.loc[0].out_channels == 24 and pedestrian.head.conf[0].out_channels == 12


def test_prior_argument_errors():
    with pytest.raises(ValueError, match="min_sizes must have one entry per feature map"):
        ssd_priors(300, [38, 19], None, [30], None, None)
    with pytest.raises(ValueError, match="aspect_ratios"):
        ssd_priors(300, [38], None, [30], None, [(0,)])
    with pytest.raises(ValueError, match="feature_sizes"):
        ssd_priors(300, [0], None, [30], None, None)


# --- model ----------------------------------------------------------------------------------------

def test_registry():
    assert {"ssd300_vgg16", "ssd512_vgg16"} <= set(list_models("ssd*"))
    model = create_model("ssd300_vgg16", num_classes=3, width=0.125)
    assert isinstance(model, SSD) and model.num_classes == 3


def test_architecture_at_full_width():
    model = ssd300_vgg16()
    f = model.features
    assert f[16].ceil_mode and (f[30].kernel_size, f[30].stride, f[30].padding) == (3, 1, 1)
    assert model.fc6.weight.shape == (1024, 512, 3, 3) and model.fc6.dilation == (6, 6)
    assert model.fc7.weight.shape == (1024, 1024, 1, 1)
    assert model.l2norm.weight.shape == (512,) and torch.all(model.l2norm.weight == 20)
    extras = [(e.reduce.out_channels, e.conv.out_channels, e.conv.stride[0], e.conv.padding[0])
              for e in model.extras]
    assert extras == [(256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)]
    assert [c.in_channels for c in model.head.loc] == [512, 1024, 512, 256, 256, 256]
    assert model.feature_sizes(300) == [(f, f) for f in SSD300_MAPS]
    assert model.priors.shape == (8732, 4)
    big = ssd512_vgg16(width=0.125)
    assert big.feature_sizes(512) == [(f, f) for f in SSD512_MAPS] and big.priors.shape == (24564, 4)
    assert big.extras[-1].conv.kernel_size == (4, 4) and big.extras[-1].conv.padding == (1, 1)


def test_feature_sizes_match_the_layers(tiny_ssd300):
    for size in [(300, 300), (272, 330)]:
        with torch.no_grad():
            maps = tiny_ssd300.forward_features(torch.randn(1, 3, *size))
        assert [tuple(m.shape[-2:]) for m in maps] == tiny_ssd300.feature_sizes(size)


def test_train_and_eval_outputs(tiny_ssd300, generator):
    model = tiny_ssd300
    x = torch.randn(2, 3, 300, 300, generator=generator)
    model.train()
    with torch.no_grad():
        loc, conf = model(x)
    assert loc.shape == (2, 8732, 4) and conf.shape == (2, 8732, 5)
    model.eval()
    with torch.no_grad():
        detections = model(x)
    model.train()
    assert detections.boxes.shape == (2, 200, 4) and detections.scores.shape == (2, 200)
    assert detections.labels.shape == (2, 200) and detections.num_detections.shape == (2,)
    expected = ssd_postprocess(loc, conf, model.priors)
    for got, want in zip(detections, expected):
        torch.testing.assert_close(got, want)
    assert "postprocess.priors" in model.state_dict()


def test_other_input_size(tiny_ssd300, generator):
    model = tiny_ssd300
    size = (272, 330)
    x = torch.randn(1, 3, *size, generator=generator)
    with torch.no_grad():
        loc, conf = model(x)
    priors = model.priors_for(size)
    sizes = model.feature_sizes(size)
    assert loc.shape == (1, priors.shape[0], 4) and conf.shape == (1, priors.shape[0], 5)
    assert priors.shape[0] == sum(h * w * a for (h, w), a in zip(sizes, model.priors_per_location))
    # the first map's first prior: centre half a grid cell in, side 30 px of this image
    h0, w0 = sizes[0]
    assert priors[0].tolist() == pytest.approx([0.5 / w0, 0.5 / h0, 30 / size[1], 30 / size[0]])
    model.eval()
    with torch.no_grad():
        detections = model(x)
    model.train()
    for got, want in zip(detections, ssd_postprocess(loc, conf, priors)):
        torch.testing.assert_close(got, want)
    # a model built for that size keeps the priors as its buffer
    rectangular = ssd300_vgg16(num_classes=5, width=0.125, image_size=size)
    torch.testing.assert_close(rectangular.priors, priors)
    with pytest.raises(ValueError, match=r"at least \d+"):
        model(torch.randn(1, 3, 200, 300))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, 300, 300))


def test_small_custom_ssd(generator):
    """Configurable maps: one extra block on a 64×64 input gives 8×8, 4×4 and 2×2 prediction maps."""
    model = SSD(num_classes=3, image_size=64, extra_layers=((16, 32, 3, 2, 1),), min_sizes=(8, 20, 40),
                max_sizes=(20, 40, 64), steps=None, aspect_ratios=((2,), (2, 3), (0.4,)), width=0.125)
    assert model.feature_sizes(64) == [(8, 8), (4, 4), (2, 2)]
    assert model.priors_per_location == (4, 6, 4)
    assert model.priors.shape == (64 * 4 + 16 * 6 + 4 * 4, 4)
    assert model.priors[0, :2].tolist() == pytest.approx([1 / 16, 1 / 16])  # steps None: 64 / 8 = 8 px
    x = torch.randn(2, 3, 64, 64, generator=generator)
    loc, conf = model(x)
    assert loc.shape == (2, 368, 4) and conf.shape == (2, 368, 3)
    loss, _ = MultiBoxLoss(3)(loc, conf, model.priors, [torch.tensor([[0.1, 0.2, 0.5, 0.9]])] * 2,
                              [torch.tensor([2])] * 2)
    loss.backward()
    assert model.l2norm.weight.grad is not None
    with pytest.raises(ValueError, match="min_sizes must have one entry per feature map"):
        SSD(num_classes=3, image_size=64, extra_layers=((16, 32, 3, 2, 1),), width=0.125)


def test_empty_batch_and_dtype_conversion():
    model = ssd300_vgg16(num_classes=3, width=0.125)
    with torch.no_grad():
        loc, conf = model(torch.zeros(0, 3, 300, 300))
        assert loc.shape == (0, 8732, 4) and conf.shape == (0, 8732, 3)
        assert model.priors_for((300, 340)).dtype == torch.float32
        model.double().eval()
        assert model.priors.dtype == torch.float64 and model.priors_for((300, 340)).dtype == torch.float64
        detections = model(torch.randn(1, 3, 300, 340, dtype=torch.float64))
        assert detections.boxes.dtype == torch.float64 and detections.boxes.shape == (1, 200, 4)
        assert model(torch.zeros(0, 3, 300, 300, dtype=torch.float64)).num_detections.shape == (0,)


def test_loss_gradients_reach_every_parameter(generator):
    torch.manual_seed(1)
    model = ssd300_vgg16(num_classes=4, width=0.125)
    x = torch.randn(2, 3, 300, 300, generator=generator)
    # one object per map's prior size (30, 60, 111, 162, 213, 264 px): every loc head has positives
    boxes = [torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.05, 0.05, 0.42, 0.42]]),
             torch.tensor([[0.2, 0.2, 0.74, 0.74], [0.1, 0.1, 0.81, 0.81], [0.06, 0.06, 0.94, 0.94]])]
    labels = [torch.tensor([1, 3, 2]), torch.tensor([2, 1, 3])]
    loc, conf = model(x)
    # every prior mined as a negative, so that every map (the 1×1 one too) receives a gradient
    loss, parts = MultiBoxLoss(4, neg_pos_ratio=10000)(loc, conf, model.priors, boxes, labels)
    loss.backward()
    assert torch.isfinite(loss) and parts["loc"] > 0 and parts["conf"] > 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_width_and_weights_errors():
    with pytest.raises(ValueError, match="width"):
        ssd300_vgg16(width=0.25, backbone_weights={})
    with pytest.raises(ValueError, match="width"):
        ssd300_vgg16(width=-1)
    with pytest.raises(ValueError, match="too small"):
        ssd300_vgg16(width=0.125, image_size=100)


# --- torchvision VGG16 weights --------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg16_features_state():
    """torchvision's VGG16 state_dict (randomly initialised) without the 400 MB classifier, plus one
    classifier entry to check that classifier keys are ignored."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    state = torchvision.models.vgg16(weights=None).state_dict()
    return {k: v for k, v in state.items() if k.startswith("features.") or k == "classifier.6.bias"}


def test_loads_torchvision_vgg16(vgg16_features_state, tmp_path):
    state = vgg16_features_state
    model = ssd300_vgg16(backbone_weights=state)
    loaded = model.features.state_dict()
    assert {f"features.{k}" for k in loaded} == {k for k in state if k.startswith("features.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[f"features.{key}"]), key
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    from_path = create_model("ssd300_vgg16", num_classes=3, backbone_weights=str(path))
    assert torch.equal(from_path.features[28].weight, state["features.28.weight"])


def test_mismatched_weights_name_the_keys(vgg16_features_state):
    model = ssd300_vgg16(num_classes=3)
    missing = {k: v for k, v in vgg16_features_state.items() if k != "features.0.weight"}
    with pytest.raises(ValueError, match=r"missing keys \(1\): features\.0\.weight"):
        model.load_backbone_weights(missing)
    bn_like = dict(vgg16_features_state, **{"features.1.running_mean": torch.zeros(64)})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): features\.1\.running_mean"):
        model.load_backbone_weights(bn_like)
    wrong = dict(vgg16_features_state, **{"features.2.weight": torch.zeros(64, 32, 3, 3)})
    message = r"features\.2\.weight: weights \(64, 32, 3, 3\) vs model \(64, 64, 3, 3\)"
    with pytest.raises(ValueError, match=message):
        model.load_backbone_weights(wrong)
    with pytest.raises(ValueError, match="backbone_weights must be a path or a state_dict"):
        model.load_backbone_weights(42)


# --- modules --------------------------------------------------------------------------------------

def test_l2norm_formula_and_gradient(generator):
    norm = L2Norm(6)
    assert torch.all(norm.weight == 20)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6, generator=generator) * 30)
    x = torch.randn(2, 6, 3, 4, generator=generator, dtype=torch.float64)
    x[0, :, 1, 2] = 0  # an all-zero position stays zero
    norm = norm.double()
    y = norm(x)
    length = x.pow(2).sum(dim=1, keepdim=True).sqrt()
    unit = torch.where(length > 0, x / length.clamp(min=1e-300), torch.zeros_like(x))
    expected = unit * norm.weight.view(1, -1, 1, 1)
    torch.testing.assert_close(y, expected)
    assert torch.all(y[0, :, 1, 2] == 0)
    y.sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[N, 6, H, W\]"):
        norm(torch.randn(2, 5, 3, 3))


def test_head_flattening_order(generator):
    """Entry (b, p) of the flattened outputs is prior p: map k, row i, column j, prior a."""
    head = SSDHead([3, 2], [2, 1], num_classes=3)
    maps = [torch.randn(1, 3, 2, 3, generator=generator), torch.randn(1, 2, 1, 2, generator=generator)]
    loc, conf = head(maps)
    assert loc.shape == (1, 2 * 3 * 2 + 2, 4) and conf.shape == (1, 14, 3)
    raw_loc = head.loc[0](maps[0])
    raw_conf = head.conf[1](maps[1])
    i, j, a = 1, 2, 1
    p = (i * 3 + j) * 2 + a
    torch.testing.assert_close(loc[0, p], raw_loc[0, a * 4:(a + 1) * 4, i, j])
    torch.testing.assert_close(conf[0, 12 + 1], raw_conf[0, 0:3, 0, 1])
