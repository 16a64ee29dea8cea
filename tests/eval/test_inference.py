"""Multi-scale / flip inference and evaluation over a dataset, against manual computations."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastladder.eval.inference import (evaluate_segmentation, format_iou_table, normalize_image, predict,
                                       predict_logits, scaled_size)
from fastladder.eval.segmentation import confusion_matrix, mean_iou
from fastladder.models import create_model

TINY_LDN = dict(growth_rate=4, block_config=(1, 1, 1, 2), num_init_features=8, context_channels=16,
                upsample_channels=8)


class StridedConvNet(nn.Module):
    """Logits at half resolution (so every run needs the resize back), left-right asymmetric kernels
    (so a flipped input gives different logits)."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, num_classes, 3, padding=1))

    def forward(self, x):
        return self.body(x)


def tiny_ldn(num_classes=5):
    model = create_model("ladder_densenet121", num_classes, **TINY_LDN)
    # non-trivial BatchNorm statistics, so that eval differs from the initial identity-like state
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def manual_probabilities(model, x, scales, flip):
    """The definition, run by hand: resize to round(side·s), run, resize back, softmax, average."""
    size = x.shape[-2:]
    runs = []
    with torch.no_grad():
        for s in scales:
            h, w = (int(math.floor(side * s + 0.5)) for side in size)
            scaled = x if (h, w) == tuple(size) else F.interpolate(x, size=(h, w), mode="bilinear",
                                                                   align_corners=False)
            inputs = [scaled, scaled.flip(-1)] if flip else [scaled]
            for i, inp in enumerate(inputs):
                logits = F.interpolate(model(inp), size=size, mode="bilinear", align_corners=False)
                p = logits.softmax(1)
                runs.append(p.flip(-1) if i == 1 else p)
    return torch.stack(runs).mean(0)


@pytest.mark.parametrize("make_model", [StridedConvNet, tiny_ldn])
def test_single_scale_is_the_softmax_of_the_model(make_model, seed):
    model = make_model().eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        logits = model(x)
        expected = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
    probabilities = predict_logits(model, x)
    assert probabilities.shape == (2, 5, 64, 80) and probabilities.dtype == torch.float32
    torch.testing.assert_close(probabilities, expected)
    assert torch.equal(predict(model, x), expected.argmax(1))


@pytest.mark.parametrize("make_model", [StridedConvNet, tiny_ldn])
def test_flip_averages_the_flipped_run_flipped_back(make_model, seed):
    model = make_model().eval()
    x = torch.randn(1, 3, 64, 72)
    probabilities = predict_logits(model, x, flip=True)
    expected = manual_probabilities(model, x, (1.0,), flip=True)
    torch.testing.assert_close(probabilities, expected)
    # the flipped run matters: the plain single-scale result differs
    assert not torch.allclose(probabilities, predict_logits(model, x), atol=1e-4)


@pytest.mark.parametrize("make_model, size, scales", [
    (StridedConvNet, (40, 56), (0.5, 0.75, 1.0, 1.5, 2.0)),
    (StridedConvNet, (37, 53), (0.5, 0.75, 1.25)),        # odd sides: rounded scaled sizes
    (tiny_ldn, (64, 70), (1.0, 1.25)),                     # LDN needs sides ≥ 61 at every scale
    (tiny_ldn, (67, 71), (1.0, 1.5)),
])
def test_multi_scale_matches_a_manual_loop(make_model, size, scales, seed):
    model = make_model().eval()
    x = torch.randn(2, 3, *size)
    for flip in (False, True):
        probabilities = predict_logits(model, x, scales=scales, flip=flip)
        assert probabilities.shape == (2, 5, *size)
        torch.testing.assert_close(probabilities, manual_probabilities(model, x, scales, flip))
        torch.testing.assert_close(probabilities.sum(1), torch.ones(2, *size))


def test_scaled_size_rounds_half_up_and_keeps_one_pixel():
    assert scaled_size((37, 53), 0.5) == (19, 27)
    assert scaled_size((1024, 2048), 0.75) == (768, 1536)
    assert scaled_size((3, 3), 0.01) == (1, 1)


def test_model_mode_is_restored_and_the_model_runs_in_eval(seed):
    model = StridedConvNet()
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(module.training))
    model.train()
    predict_logits(model, torch.randn(1, 3, 16, 16), scales=(1.0, 0.5))
    assert seen == [False, False] and model.training


def test_tuple_and_dict_outputs_give_their_first_logits(seed):
    base = StridedConvNet().eval()

    class TupleOut(nn.Module):
        def forward(self, x):
            return base(x), None

    class DictOut(nn.Module):
        def forward(self, x):
            return {"out": base(x), "aux": base(x) * 0}

    x = torch.randn(1, 3, 20, 24)
    expected = predict_logits(base, x, scales=(1, 0.5))
    torch.testing.assert_close(predict_logits(TupleOut(), x, scales=(1, 0.5)), expected)
    torch.testing.assert_close(predict_logits(DictOut(), x, scales=(1, 0.5)), expected)


def test_bad_arguments_are_errors_that_name_them(seed):
    model = StridedConvNet()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="scales"):
        predict_logits(model, x, scales=())
    with pytest.raises(ValueError, match="scales"):
        predict_logits(model, x, scales=(1.0, -0.5))
    with pytest.raises(ValueError, match=r"images must be .*\(3, 16, 16\)"):
        predict_logits(model, x[0])
    with pytest.raises(ValueError, match="uint8"):
        predict_logits(model, torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="num_classes=7 but the model returned 5"):
        predict_logits(model, x, num_classes=7)


def test_normalize_image_is_per_channel_on_the_0_255_scale(generator):
    image = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8, generator=generator)
    mean, std = (75.2, 85.0, 75.1), (46.9, 47.6, 46.5)
    out = normalize_image(image, mean, std)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (image[:, c].float() - mean[c]) / std[c])
    with pytest.raises(ValueError, match="one value per channel"):
        normalize_image(image, mean[:2], std)


class PairDataset:
    """Images of different sizes with labels (some ignored) and a class absent from everything."""

    def __init__(self, generator, sizes=((20, 24), (17, 31), (24, 20)), num_classes=5):
        self.items = []
        for h, w in sizes:
            label = torch.randint(0, num_classes - 1, (h, w), generator=generator)  # class 4 never in labels
            label[torch.rand(h, w, generator=generator) < 0.15] = 255
            self.items.append((torch.randn(3, h, w, generator=generator), label))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_evaluate_segmentation_accumulates_the_confusion_of_each_image(generator):
    model = StridedConvNet().eval()
    dataset = PairDataset(generator)
    expected = sum(confusion_matrix(predict(model, image[None], scales=(1, 0.75), flip=True)[0], label, 5)
                   for image, label in dataset.items)
    result = evaluate_segmentation(model, dataset, 5, scales=(1, 0.75), flip=True, device="cpu",
                                   progress=False)
    assert torch.equal(result["confusion"], expected)
    reference = mean_iou(expected)
    assert result["miou"] == reference["miou"] and result["pixel_accuracy"] == reference["pixel_accuracy"]
    torch.testing.assert_close(result["iou"], reference["iou"], equal_nan=True)
    # batches from a DataLoader give the same counts
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)
    assert torch.equal(evaluate_segmentation(model, loader, 5, scales=(1, 0.75), flip=True,
                                             progress=False)["confusion"], expected)


def test_evaluate_segmentation_rejects_unnormalized_images_and_wrong_labels(generator):
    model = StridedConvNet().eval()
    raw = [(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=generator),
            torch.zeros(8, 8).long())]
    with pytest.raises(ValueError, match="normalized float"):
        evaluate_segmentation(model, raw, 5, progress=False)
    wrong = [(torch.randn(3, 8, 8, generator=generator), torch.zeros(8, 9).long())]
    with pytest.raises(ValueError, match=r"labels of shape \(1, 8, 9\)"):
        evaluate_segmentation(model, wrong, 5, progress=False)
    with pytest.raises(TypeError, match="dataset"):
        evaluate_segmentation(model, object(), 5, progress=False)


def test_iou_table_lists_every_class_and_marks_absent_ones():
    confusion = torch.tensor([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    result = mean_iou(confusion)
    table = format_iou_table(result, ["road", "sidewalk", "train"])
    lines = table.splitlines()
    assert lines[2].split() == ["road", "75.00"]
    assert lines[3].split() == ["sidewalk", "80.00"]
    assert lines[4].split() == ["train", "n/a"]
    assert lines[-2].split() == ["mIoU", "77.50"]
    assert lines[-1].split() == ["pixel", "accuracy", "87.50"]
    with pytest.raises(ValueError, match="2 names for 3 classes"):
        format_iou_table(result, ["road", "sidewalk"])


class _NearTie(nn.Module):
    """Logits whose two classes differ by one float32 ulp at 1e-3: their softmax probabilities round
    to the same value, but class 1 is the larger logit."""

    def forward(self, x):
        low = torch.full_like(x[:, :1], 1e-3)
        return torch.cat([low, torch.nextafter(low, torch.ones_like(low))], dim=1)


def test_one_run_predicts_the_argmax_of_the_logits(generator):
    images = torch.randn(2, 3, 5, 7, generator=generator)
    assert torch.equal(predict_logits(_NearTie(), images)[:, 0], predict_logits(_NearTie(), images)[:, 1])
    assert (predict(_NearTie(), images) == 1).all()   # as training's validation (logits.argmax) says
