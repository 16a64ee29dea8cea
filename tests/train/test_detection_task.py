"""The detection task: SSD trained by the generic Trainer on SyntheticPedestrians, end to end in a few
steps (files, finite AP, exact resume), its loss's handling of ignored boxes, batching and config."""
import csv
import json
import math

import pytest
import torch

from fastladder.models import create_model, read_checkpoint
from fastladder.ops.boxes import box_iou
from fastladder.testing import assert_same_state
from fastladder.train.commands import config_from_args
from fastladder.train.config import TrainConfig
from fastladder.train.detection import DetectionTask, collate_padded, detection_config, input_size
from fastladder.train.loop import train
from fastladder.train.multibox import MultiBoxLoss, priors_to_xyxy

# A reduced SSD for 64×64 inputs: maps 8, 4, 2, 1 (two extra blocks), tall priors for pedestrians.
TINY_SSD = {"width": 0.0625, "extra_layers": [[256, 512, 3, 2, 1], [128, 256, 3, 2, 1]],
            "min_sizes": [12, 24, 40, 56], "max_sizes": [24, 40, 56, 64],
            "aspect_ratios": [[0.5, 0.33]] * 4, "flip": False, "steps": None}
TINY_DATA = {"num_sequences": 2, "frames_per_sequence": 5, "size": [64, 80]}


def tiny_config(out, root, **changes):
    values = dict(dataset="synthetic", root=str(root), dataset_kwargs=TINY_DATA, model_kwargs=TINY_SSD,
                  image_size=[64, 64], out=str(out), steps=4, batch_size=2, val_batch_size=2, workers=0,
                  warmup_steps=2, lr=1e-4, clip_grad_norm=5.0, zoom_out=1.5, log_every=1, eval_every=None,
                  progress=False, seed=5)
    values.update(changes)
    return detection_config(**values)


def test_training_end_to_end_and_exact_resume(tmp_path):
    root = tmp_path / "data"
    straight = train(tiny_config(tmp_path / "straight", root))
    assert straight["step"] == 4 and math.isfinite(straight["loss"])
    metrics = straight["metrics"]
    assert 0.0 <= metrics["ap"] <= 1.0 and math.isfinite(metrics["loss"])
    assert set(metrics["ap_methods"]) == {"voc", "voc07", "coco101", "mot"}
    assert metrics["images"] == 2 and metrics["class_names"] == ["pedestrian"]  # last frame of 2 sequences
    for name in ("log.csv", "curves.png", "last.pt", "best.pt", "metrics.json", "config.json"):
        assert (tmp_path / "straight" / name).is_file(), name
    with open(tmp_path / "straight" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["split"] for row in rows] == ["train"] * 4 + ["val"]   # 8 training frames: one epoch
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["task"] == "det"

    checkpoint = read_checkpoint(straight["checkpoint"])
    meta = checkpoint["meta"]
    assert meta["model_name"] == "ssd300_vgg16" and meta["num_classes"] == 2
    assert meta["model_kwargs"]["image_size"] == [64, 64] and meta["input_size"] == [64, 64]
    assert meta["class_names"] == ["background", "pedestrian"] and meta["dataset"] == "synthetic"
    assert meta["mean"] == [123.675, 116.28, 103.53]
    rebuilt = create_model("ssd300_vgg16", 2, **meta["model_kwargs"])
    rebuilt.load_state_dict(checkpoint["model"])   # the recorded spec rebuilds the trained model

    first = train(tiny_config(tmp_path / "resumed", root, stop_at=3))
    assert first["step"] == 3
    resumed = train(tiny_config(tmp_path / "resumed", root, resume="last"))
    assert resumed["step"] == 4
    a, b = read_checkpoint(straight["checkpoint"]), read_checkpoint(resumed["checkpoint"])
    assert_same_state(a["model"], b["model"], "model")
    assert_same_state(a["optimizer"], b["optimizer"], "optimizer")
    assert a["metrics"]["ap"] == b["metrics"]["ap"]


def _task(num_classes=2, match_iou=0.5):
    task = DetectionTask()
    task.num_classes = num_classes
    task.criterion = MultiBoxLoss(num_classes, iou_threshold=match_iou)
    task.match_iou = match_iou
    return task


def test_ignored_boxes_are_neither_positives_nor_negatives(generator):
    model = create_model("ssd300_vgg16", 2, image_size=[64, 64], **TINY_SSD)
    priors = model.priors_for((64, 64))
    num_priors = priors.shape[0]
    task = _task()
    kept = torch.tensor([[4.0, 6.0, 20.0, 50.0]])
    ignored = torch.tensor([[36.0, 10.0, 60.0, 60.0]])
    targets = {"boxes": torch.cat([kept, ignored])[None], "labels": torch.tensor([[1, 1]]),
               "ignore": torch.tensor([[False, True]])}
    loc = torch.randn(1, num_priors, 4, generator=generator, requires_grad=True)
    conf = torch.randn(1, num_priors, 2, generator=generator, requires_grad=True)
    loss, parts = task.loss(loc, conf, priors, targets, 64, 64)
    loss.backward()

    # the priors the ignored box would take (IoU > 0.5), none of which the kept box takes
    def iou(box):
        return box_iou(box / 64, priors_to_xyxy(priors))[0]

    neutral = (iou(ignored[0:1]) > 0.5) & (iou(kept[0:1]) <= 0.5)
    assert neutral.sum() >= 1
    assert torch.all(conf.grad[0, neutral] == 0) and torch.all(loc.grad[0, neutral] == 0)
    # the kept box still trains its prior (the best-overlapping one, matched whatever its IoU)
    assert loc.grad[0, iou(kept[0:1]).argmax()].abs().sum() > 0

    # = the plain MultiBox loss of the kept box alone, with the neutral priors certain background
    masked = conf.detach().clone()
    masked[0, neutral] = torch.tensor([30.0, 0.0])
    expected, _ = MultiBoxLoss(2)(loc.detach(), masked, priors, kept[None] / 64, torch.tensor([[1]]))
    torch.testing.assert_close(loss.detach(), expected)
    # while without the ignored box those priors are ordinary negatives, some of them mined
    alone = {"boxes": kept[None], "labels": torch.tensor([[1]]), "ignore": torch.tensor([[False]])}
    plain, _ = task.loss(loc.detach(), conf.detach(), priors, alone, 64, 64)
    torch.testing.assert_close(plain, MultiBoxLoss(2)(loc.detach(), conf.detach(), priors, kept[None] / 64,
                                                      torch.tensor([[1]]))[0])

    # a box clipped to a line is left out (it could match no prior), not an error
    line = {"boxes": torch.tensor([[[4.0, 6.0, 20.0, 50.0], [30.0, 5.0, 30.0, 40.0]]]),
            "labels": torch.tensor([[1, 1]]), "ignore": torch.tensor([[False, False]])}
    torch.testing.assert_close(task.loss(loc.detach(), conf.detach(), priors, line, 64, 64)[0], plain)

    # an image whose only box is ignored contributes nothing (no positives, no mined negatives)
    only_ignored = {"boxes": ignored[None], "labels": torch.tensor([[1]]), "ignore": torch.tensor([[True]])}
    nothing, parts = task.loss(loc.detach(), conf.detach(), priors, only_ignored, 64, 64)
    assert nothing.item() == 0.0 and parts["loc"].item() == 0.0


def test_collate_pads_ground_truth(generator):
    samples = []
    for count in (3, 0, 1):
        boxes = torch.rand(count, 4, generator=generator) * 20
        boxes[:, 2:] += boxes[:, :2] + 1
        samples.append((torch.randn(3, 16, 16, generator=generator),
                        {"boxes": boxes, "labels": torch.full((count,), 2),
                         "ignore": torch.arange(count) == 0}))
    images, targets = collate_padded(samples)
    assert images.shape == (3, 3, 16, 16)
    assert targets["boxes"].shape == (3, 3, 4) and targets["labels"].shape == (3, 3)
    assert targets["labels"].tolist() == [[2, 2, 2], [-1, -1, -1], [2, -1, -1]]
    assert targets["ignore"].tolist() == [[True, False, False], [False] * 3, [True, False, False]]
    torch.testing.assert_close(targets["boxes"][0], samples[0][1]["boxes"])
    with pytest.raises(ValueError, match="share one shape"):
        collate_padded([samples[0], (torch.zeros(3, 8, 8), samples[1][1])])


def test_detection_config_defaults_and_validation(tmp_path):
    config = detection_config(steps=1200, out=str(tmp_path))
    assert (config.task, config.model, config.optimizer) == ("det", "ssd300_vgg16", "sgd")
    assert (config.momentum, config.weight_decay, config.backbone_lr_divisor) == (0.9, 5e-4, 1.0)
    assert config.milestones == [800, 1000] and config.schedule == "step"
    assert input_size(config) == (300, 300)
    assert input_size(config.replace(model="ssd512_vgg16")) == (512, 512)
    assert input_size(config.replace(image_size=[240, 320])) == (240, 320)
    assert detection_config(steps=1200, milestones=[5]).milestones == [5]
    assert TrainConfig(image_size=96).image_size == [96, 96]
    for field, value in (("ap_method", "vocc"), ("ap_iou", 0.0), ("match_iou", 1.5), ("zoom_out", 0.5),
                         ("neg_pos_ratio", -1), ("image_size", [0, 3])):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: value})
    with pytest.raises(ValueError, match="dataset must be one of"):
        DetectionTask().build_datasets(detection_config(dataset="cityscapes", root=str(tmp_path)))
    with pytest.raises(ValueError, match="needs root"):
        DetectionTask().build_datasets(detection_config(dataset="mot15"))


def test_train_det_command_line(tmp_path):
    from fastladder.cli import build_parser

    args = build_parser().parse_args(["train", "det", "--dataset", "synthetic", "--steps", "30",
                                      "--image-size", "96x128", "--ap-method", "mot", "--out", str(tmp_path),
                                      "--model-kwargs", '{"width": 0.125}', "--set", "zoom_out=2"])
    config = config_from_args(args, "det")
    assert config.image_size == [96, 128] and config.ap_method == "mot" and config.zoom_out == 2
    assert config.optimizer == "sgd" and config.milestones == [20, 25]
    assert config.model_kwargs == {"width": 0.125}
    spec = DetectionTask().model_spec(config, type("D", (), {"num_classes": 2})())
    assert spec["model_kwargs"] == {"width": 0.125, "image_size": [96, 128]} and spec["num_classes"] == 2
    bad = build_parser().parse_args(["train", "det", "--set", "learning_rate=1"])
    with pytest.raises(ValueError, match="learning_rate"):
        config_from_args(bad, "det")


def _write_voc_detection(devkit, image_sets, generator):
    """A VOC2007 folder in the official layout: JPEGs, Annotations/*.xml (1-based inclusive boxes,
    difficult flags), ImageSets/Main/{set}.txt."""
    from PIL import Image

    voc = devkit / "VOC2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    for image_set, ids in image_sets.items():
        (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            pixels = torch.randint(0, 256, (72, 88, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(voc / "JPEGImages" / f"{image_id}.jpg")
            objects = "".join(
                f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                for name, (x1, y1, x2, y2), difficult in (("person", (10, 8, 30, 60), 0),
                                                          ("car", (40, 30, 80, 60), 1)))
            (voc / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename><size><width>88</width><height>72</height>"
                f"<depth>3</depth></size>{objects}</annotation>")


def test_training_on_voc_detection_layout(tmp_path, generator):
    devkit = tmp_path / "VOCdevkit"
    _write_voc_detection(devkit, {"train": ["000001", "000002"], "val": ["000003"]}, generator)
    result = train(tiny_config(tmp_path / "run", devkit, dataset="voc", dataset_kwargs={}, steps=2))
    assert result["step"] == 2 and math.isfinite(result["loss"])
    assert 0.0 <= result["metrics"]["ap"] <= 1.0 and result["metrics"]["images"] == 1
    # background + the 20 VOC classes
    assert read_checkpoint(result["checkpoint"])["meta"]["num_classes"] == 21
