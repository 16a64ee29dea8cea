"""SyntheticPedestrians: deterministic files in the MOT15 layout, read back by MOT15Detection."""
import json
import os

import pytest
import torch

from fastladder.data.mot import MOT15Detection
from fastladder.data.synthetic_detection import (MANIFEST_NAME, SyntheticPedestrians,
                                                 generate_synthetic_pedestrians)

SMALL = dict(num_sequences=2, frames_per_sequence=6, size=(72, 96), progress=False)


def read_tree(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_same_seed_gives_identical_files(tmp_path, seed):
    generate_synthetic_pedestrians(tmp_path / "a", seed=seed, **SMALL)
    generate_synthetic_pedestrians(tmp_path / "b", seed=seed, **SMALL)
    first, second = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert sorted(first) == sorted(second)
    assert os.path.join("train", "SYN-01", "img1", "000006.png") in first
    assert all(first[name] == second[name] for name in first)
    generate_synthetic_pedestrians(tmp_path / "c", seed=seed + 1, **SMALL)
    other = read_tree(tmp_path / "c")
    assert other[os.path.join("train", "SYN-01", "img1", "000001.png")] != \
        first[os.path.join("train", "SYN-01", "img1", "000001.png")]


def test_read_through_mot15_loader(tmp_path, seed):
    train = SyntheticPedestrians(tmp_path, "train", seed=seed, num_sequences=2, frames_per_sequence=10,
                                 size=(96, 128), progress=False)
    val = SyntheticPedestrians(tmp_path, "val", seed=seed, num_sequences=2, frames_per_sequence=10,
                               size=(96, 128), progress=False)
    assert isinstance(train, MOT15Detection) and train.sequences == ("SYN-01", "SYN-02")
    assert len(train) + len(val) == len(MOT15Detection(tmp_path, "all")) <= 20
    assert {frame for _, frame, _ in val.frames} <= {9, 10}   # the last 20% of every sequence
    assert train.sequence_info["SYN-01"].extension == ".png"
    total, ignored = 0, 0
    for index in range(len(train)):
        image, target = train[index]
        assert image.shape == (3, 96, 128) and image.dtype == torch.uint8
        boxes = target["boxes"]
        assert (target["labels"] == 1).all()
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert (heights >= 0.1 * 96 - 1).all() and (heights <= 0.65 * 96).all()
        # upright figures: tight boxes are 0.3 to 0.6 as wide as they are tall (looser for figures of a
        # dozen pixels, whose width is three or four whole pixels)
        aspect = widths / heights
        large = heights >= 20
        assert ((aspect[large] > 0.28) & (aspect[large] < 0.6)).all(), aspect[large].tolist()
        assert ((aspect > 0.2) & (aspect < 0.7)).all(), aspect.tolist()
        # every annotated box touches the image
        assert ((boxes[:, 2] > 0) & (boxes[:, 0] < 128) & (boxes[:, 3] > 0) & (boxes[:, 1] < 96)).all()
        total += len(boxes)
        ignored += int(target["ignore"].sum())
    assert total >= 2 * len(train) and ignored < total
    # the images hold more than a flat background: pedestrians differ from their surroundings
    image, target = train[0]
    assert image.float().std() > 10


def test_manifest_regenerates_on_new_parameters_and_keeps_matching_sets(tmp_path):
    assert generate_synthetic_pedestrians(tmp_path, **SMALL)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["complete"] and manifest["parameters"]["frames_per_sequence"] == 6
    image_path = tmp_path / "train" / "SYN-01" / "img1" / "000001.png"
    stamp = image_path.stat().st_mtime_ns
    assert not generate_synthetic_pedestrians(tmp_path, **SMALL)      # same parameters: kept as is
    assert image_path.stat().st_mtime_ns == stamp
    changed = dict(SMALL, frames_per_sequence=4, num_sequences=1)
    assert generate_synthetic_pedestrians(tmp_path, **changed)       # new parameters: generated anew
    assert sorted(os.listdir(tmp_path / "train")) == ["SYN-01"]
    assert len(os.listdir(tmp_path / "train" / "SYN-01" / "img1")) == 4
    # an interrupted generation (manifest not complete) is redone
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["complete"] = False
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert generate_synthetic_pedestrians(tmp_path, **changed)


def test_refuses_foreign_data_and_bad_parameters(tmp_path):
    os.makedirs(tmp_path / "train" / "MOT-SEQ")
    with pytest.raises(ValueError, match="SyntheticPedestrians did not generate"):
        generate_synthetic_pedestrians(tmp_path, **SMALL)
    assert os.path.isdir(tmp_path / "train" / "MOT-SEQ")
    with pytest.raises(ValueError, match="num_sequences"):
        generate_synthetic_pedestrians(tmp_path / "x", num_sequences=0)
    with pytest.raises(ValueError, match="size"):
        generate_synthetic_pedestrians(tmp_path / "x", size=(16, 300))


def _small_ssd(width=16):
    """A reduced-width SSD300 (VGG-like, batch norm) from torchvision's SSD building blocks."""
    from torch import nn
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    def convs(channels_in, channels_out, count):
        layers = []
        for index in range(count):
            layers += [nn.Conv2d(channels_in if index == 0 else channels_out, channels_out, 3, padding=1),
                       nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True)]
        return layers

    def extra(channels_in, channels_out, stride, padding):
        return nn.Sequential(nn.Conv2d(channels_in, channels_out // 2, 1), nn.ReLU(inplace=True),
                             nn.Conv2d(channels_out // 2, channels_out, 3, stride=stride, padding=padding),
                             nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True))

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            c = [width, 2 * width, 4 * width, 8 * width]
            self.to_38 = nn.Sequential(*convs(3, c[0], 2), nn.MaxPool2d(2),
                                       *convs(c[0], c[1], 2), nn.MaxPool2d(2),
                                       *convs(c[1], c[2], 3), nn.MaxPool2d(2, ceil_mode=True),
                                       *convs(c[2], c[3], 3))
            self.to_19 = nn.Sequential(nn.MaxPool2d(2), *convs(c[3], c[3], 3))
            self.extras = nn.ModuleList([extra(c[3], c[3], 2, 1), extra(c[3], c[2], 2, 1),
                                         extra(c[2], c[2], 1, 0), extra(c[2], c[2], 1, 0)])

        def forward(self, x):
            maps = [self.to_38(x)]
            maps.append(self.to_19(maps[-1]))
            for layer in self.extras:
                maps.append(layer(maps[-1]))
            return {str(index): feature for index, feature in enumerate(maps)}

    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]], min_ratio=0.1, max_ratio=0.9)
    return SSD(Backbone(), anchors, (300, 300), num_classes=2, image_mean=[0.485, 0.456, 0.406],
               image_std=[0.229, 0.224, 0.225])


@pytest.mark.slow
def test_learnable_by_a_reduced_width_ssd300(tmp_path):
    """The learnability target: a reduced-width SSD300 trained for FASTLADDER_LEARN_MINUTES (10) on the
    CPU reaches AP@0.5 >= 0.7 on val (VOC all-point AP, consider-0 boxes ignored). Needs an otherwise
    idle machine: the budget is wall-clock time."""
    import time

    pytest.importorskip("torchvision")
    from fastladder.data.box_transforms import Compose, Expand, MinIoURandomCrop, PhotometricDistort, \
        RandomHorizontalFlip
    from fastladder.eval.detection import average_precision

    minutes = float(os.environ.get("FASTLADDER_LEARN_MINUTES", "10"))
    train = SyntheticPedestrians(tmp_path, "train", progress=False)
    val = SyntheticPedestrians(tmp_path, "val", progress=False)
    augment = Compose([PhotometricDistort(), Expand(mean=(124, 116, 104), max_ratio=2.0), MinIoURandomCrop(),
                       RandomHorizontalFlip()])
    torch.manual_seed(0)
    model = _small_ssd()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    deadline = time.monotonic() + 60 * minutes
    model.train()
    steps = 0
    while time.monotonic() < deadline:
        images, targets = [], []
        for index in torch.randperm(len(train))[:8].tolist():
            image, target = augment(*train[index])
            keep = ~target["ignore"]
            images.append(image.float() / 255)
            targets.append({"boxes": target["boxes"][keep], "labels": target["labels"][keep]})
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        steps += 1
    model.eval()
    detections, ground_truth = [], []
    with torch.no_grad():
        for index in range(len(val)):
            image, target = val[index]
            output = model([image.float() / 255])[0]
            detections.append({"boxes": output["boxes"], "scores": output["scores"]})
            ground_truth.append({"boxes": target["boxes"], "ignore": target["ignore"]})
    ap = average_precision(detections, ground_truth, 0.5, "voc")
    print(f"AP@0.5 (voc) after {minutes} min ({steps} steps of 8 images): {ap:.3f}")
    assert ap >= 0.7
