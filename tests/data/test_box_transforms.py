"""SSD box transforms keep boxes on the pixels they describe: each box is painted as a filled rectangle of
its own colour on a noisy background, and after the transform every box must still cover its colour."""
import colorsys

import pytest
import torch

from fastladder.data import box_transforms as T

COLOURS = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255],
                        [255, 255, 255], [0, 0, 0]], dtype=torch.float32)


def painted_sample(generator, height=90, width=120):
    """Background noise in [60, 190] and up to 6 disjoint filled boxes (label k has colour COLOURS[k - 1])."""
    image = torch.randint(60, 191, (3, height, width), generator=generator, dtype=torch.uint8)
    boxes = []
    rows, cols = 2, 3
    cell_h, cell_w = height // rows, width // cols
    num_boxes = int(torch.randint(1, rows * cols + 1, (), generator=generator))
    for cell in torch.randperm(rows * cols, generator=generator)[:num_boxes]:
        r, c = divmod(int(cell), cols)
        box_h = int(torch.randint(14, cell_h - 2, (), generator=generator))
        box_w = int(torch.randint(14, cell_w - 2, (), generator=generator))
        top = r * cell_h + int(torch.randint(0, cell_h - box_h, (), generator=generator))
        left = c * cell_w + int(torch.randint(0, cell_w - box_w, (), generator=generator))
        boxes.append([left, top, left + box_w, top + box_h])
    boxes = torch.tensor(boxes, dtype=torch.float32)
    labels = torch.arange(1, len(boxes) + 1)
    for (x1, y1, x2, y2), label in zip(boxes.long().tolist(), labels.tolist()):
        image[:, y1:y2, x1:x2] = COLOURS[label - 1].to(torch.uint8).view(3, 1, 1)
    ignore = torch.rand(len(boxes), generator=generator) < 0.3
    return image, {"boxes": boxes, "labels": labels, "ignore": ignore}


def assert_boxes_carry_their_colour(image, target, margin=1.5, tolerance=12.0):
    image = image.to(torch.float32)
    _, height, width = image.shape
    assert len(target["boxes"]) == len(target["labels"]) == len(target["ignore"])
    for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        inner = (int(x1 + margin + 0.999), int(y1 + margin + 0.999), int(x2 - margin), int(y2 - margin))
        if inner[2] <= inner[0] or inner[3] <= inner[1]:
            continue   # a sliver left by a crop: nothing to look at
        region = image[:, inner[1]:inner[3], inner[0]:inner[2]]
        error = (region - COLOURS[label - 1].view(3, 1, 1)).abs().max().item()
        assert error <= tolerance, f"box {label} at {(x1, y1, x2, y2)} lost its colour (error {error})"


def test_flip(generator):
    image, target = painted_sample(generator)
    flipped, flipped_target = T.RandomHorizontalFlip(p=1.0)(image, target)
    assert_boxes_carry_their_colour(flipped, flipped_target, margin=0, tolerance=0)
    assert torch.equal(flipped.flip(-1), image)
    same, same_target = T.RandomHorizontalFlip(p=0.0)(image, target)
    assert same is image and same_target is target


def test_expand(generator):
    image, target = painted_sample(generator)
    original_boxes = target["boxes"].clone()
    for _ in range(4):
        expanded, expanded_target = T.Expand(mean=(10, 20, 30), p=1.0, generator=generator)(image, target)
        assert expanded.dtype == torch.uint8 and expanded.shape[1] >= image.shape[1]
        assert_boxes_carry_their_colour(expanded, expanded_target, margin=0, tolerance=0)
        # the canvas outside the image is the mean colour
        left, top = (expanded_target["boxes"][0, :2] - target["boxes"][0, :2]).long().tolist()
        outside = torch.ones(expanded.shape[1:], dtype=torch.bool)
        outside[top:top + image.shape[1], left:left + image.shape[2]] = False
        mean = torch.tensor([[10], [20], [30]], dtype=torch.uint8)
        assert torch.equal(expanded[:, outside], mean.expand(-1, int(outside.sum())))
    assert torch.equal(target["boxes"], original_boxes)   # the input target is not modified in place


def test_crop_keeps_centred_boxes_clipped(generator):
    crop = T.MinIoURandomCrop(generator=generator)
    for _ in range(10):
        image, target = painted_sample(generator)
        cropped, cropped_target = crop(image, target)
        assert_boxes_carry_their_colour(cropped, cropped_target, margin=0, tolerance=0)
        assert set(cropped_target["labels"].tolist()) <= set(target["labels"].tolist())
        for label, ignore in zip(cropped_target["labels"].tolist(), cropped_target["ignore"].tolist()):
            assert ignore == bool(target["ignore"][label - 1])


def test_crop_min_iou_rule(generator):
    boxes = torch.tensor([[10.0, 10, 40, 60], [70, 20, 110, 80], [50, 50, 60, 58]])
    height, width = 90, 120
    for min_iou in (0.1, 0.3, 0.5, 0.7, 0.9):
        crop = T.MinIoURandomCrop(min_ious=(min_iou,), generator=generator)
        found = 0
        for _ in range(30):
            sampled = crop.sample(height, width, boxes)
            if sampled is None:
                continue
            found += 1
            (x1, y1, x2, y2), chosen = sampled
            assert chosen == min_iou
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert x2 - x1 >= 0.3 * width - 1 and y2 - y1 >= 0.3 * height - 1
            # aspect within [0.5, 2] before rounding to whole pixels
            assert 0.5 * (x2 - x1 - 1) <= y2 - y1 + 1 and y2 - y1 - 1 <= 2 * (x2 - x1 + 1)
            x_overlap = (boxes[:, 2].clamp(max=x2) - boxes[:, 0].clamp(min=x1)).clamp(min=0)
            y_overlap = (boxes[:, 3].clamp(max=y2) - boxes[:, 1].clamp(min=y1)).clamp(min=0)
            inter = x_overlap * y_overlap
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            iou = inter / (areas + (x2 - x1) * (y2 - y1) - inter)
            assert iou.max() >= min_iou
            centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            assert ((centre_x > x1) & (centre_x < x2) & (centre_y > y1) & (centre_y < y2)).any()
        if min_iou <= 0.5:
            assert found > 0
    assert T.MinIoURandomCrop(min_ious=(None,), generator=generator).sample(height, width, boxes) is None


@pytest.mark.parametrize("size", [(60, 80), (200, 150), 300])
def test_resize(generator, size):
    image, target = painted_sample(generator)
    resized, resized_target = T.Resize(size)(image, target)
    expected = (size, size) if isinstance(size, int) else size
    assert resized.shape == (3, *expected) and resized.dtype == torch.uint8
    assert_boxes_carry_their_colour(resized, resized_target, margin=2.0, tolerance=12.0)
    float_image, _ = T.Resize(size)(image.float(), target)
    assert float_image.dtype == torch.float32


def test_geometric_pipeline_keeps_boxes_consistent(generator):
    pipeline = T.Compose([T.Expand(mean=(0, 0, 0), generator=generator),
                          T.MinIoURandomCrop(generator=generator),
                          T.RandomHorizontalFlip(generator=generator), T.Resize(120)])
    for _ in range(10):
        image, target = painted_sample(generator)
        out, out_target = pipeline(image, target)
        assert out.shape == (3, 120, 120)
        assert_boxes_carry_their_colour(out, out_target, margin=2.5, tolerance=16.0)


def test_photometric_distort(generator):
    image, target = painted_sample(generator)
    distorted, distorted_target = T.PhotometricDistort(p=1.0, generator=generator)(image, target)
    assert distorted.dtype == torch.float32 and distorted.shape == image.shape
    assert distorted.min() >= 0 and distorted.max() <= 255
    assert distorted_target is target
    assert not torch.allclose(distorted, image.float())
    unchanged, _ = T.PhotometricDistort(p=0.0, generator=generator)(image, target)
    assert torch.equal(unchanged, image.float())


def test_hsv_round_trip_and_colorsys(generator):
    rgb = torch.rand(3, 7, 9, generator=generator, dtype=torch.float64)
    rgb[:, 0, 0] = torch.tensor([0.5, 0.5, 0.5])   # grey: hue undefined
    hsv = T._rgb_to_hsv(rgb)
    assert torch.allclose(T._hsv_to_rgb(hsv), rgb, atol=1e-12)
    for y, x in ((0, 0), (1, 2), (3, 4), (6, 8)):
        expected = colorsys.rgb_to_hsv(*rgb[:, y, x].tolist())
        assert hsv[:, y, x].tolist() == pytest.approx(list(expected), abs=1e-12)


def test_train_pipeline_reproducible_and_normalized(seed):
    image, target = painted_sample(torch.Generator().manual_seed(seed))
    first = T.ssd_train_transforms(96, generator=torch.Generator().manual_seed(seed))(image, target)
    second = T.ssd_train_transforms(96, generator=torch.Generator().manual_seed(seed))(image, target)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1]["boxes"], second[1]["boxes"])
    assert first[0].shape == (3, 96, 96) and first[0].dtype == torch.float32
    assert (first[1]["boxes"] >= 0).all() and (first[1]["boxes"] <= 96).all()
    evaluated, eval_target = T.ssd_eval_transforms(96)(image, target)
    mean = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
    resized, _ = T.Resize(96)(image, target)
    assert torch.allclose(evaluated, (resized.float() - mean) / std)
    assert torch.allclose(eval_target["boxes"], target["boxes"] * torch.tensor([96 / 120, 96 / 90] * 2))


def test_collate_and_relative_targets(generator):
    samples = [T.Resize((30, 40))(*painted_sample(generator)) for _ in range(3)]
    images, targets = T.collate_detection(samples)
    assert images.shape == (3, 3, 30, 40) and len(targets) == 3
    relative = T.relative_targets(targets, images.shape[-2:])
    for target, rel in zip(targets, relative):
        assert torch.allclose(rel["boxes"] * torch.tensor([40, 30, 40, 30]), target["boxes"].clamp(min=0))
        assert torch.equal(rel["labels"], target["labels"])
    with pytest.raises(ValueError, match=r"share one shape.*\(3, 30, 40\)"):
        T.collate_detection([samples[0], (torch.zeros(3, 5, 5, dtype=torch.uint8), samples[0][1])])
    with pytest.raises(ValueError, match=r"targets\[0\].*boxes"):
        T.relative_targets([{"boxes": torch.zeros(3)}], (10, 10))
    with pytest.raises(ValueError, match=r"Tensor\[3, H, W\].*\(1, 5, 5\)"):
        T.Resize(10)(torch.zeros(1, 5, 5), {"boxes": torch.zeros(0, 4)})
