"""Joint segmentation transforms keep image and label aligned, for any image size."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastladder.data.transforms import (CITYSCAPES_MEAN, CITYSCAPES_STD, IMAGENET_MEAN, ColorJitter,
                                        Compose, Normalize, RandomCrop, RandomHorizontalFlip, RandomScale,
                                        Resize, ToFloat, segmentation_eval_transforms,
                                        segmentation_train_transforms)

# well separated colours: the class of a pixel can be read back from its colour
PALETTE = torch.tensor([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20], [20, 230, 230],
                        [230, 20, 230], [128, 128, 128]], dtype=torch.uint8)
SIZES = [(37, 53), (53, 37), (31, 31), (8, 121)]


def pixel_label(image: torch.Tensor) -> torch.Tensor:
    """A label that is a function of every pixel's colour (for exact geometric checks)."""
    return (image[0].long() * 7 + image[1].long() * 3 + image[2].long()) % 19


def block_pair(height, width, generator, block=9):
    """An image of constant-colour blocks and its label (the block's palette index)."""
    grid_size = (math.ceil(height / block), math.ceil(width / block))
    grid = torch.randint(0, len(PALETTE), grid_size, generator=generator)
    label = grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:height, :width].contiguous()
    return PALETTE[label].permute(2, 0, 1).contiguous(), label


def classify(image: torch.Tensor) -> torch.Tensor:
    """The palette index nearest to every pixel's colour."""
    distance = ((image.float().permute(1, 2, 0)[:, :, None, :] - PALETTE.float()) ** 2).sum(-1)
    return distance.argmin(-1)


def interior(label: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Pixels whose (2r+1)² neighbourhood holds one label value."""
    padded = label.float()[None, None]
    high = F.max_pool2d(padded, 2 * radius + 1, 1, radius)
    low = -F.max_pool2d(-padded, 2 * radius + 1, 1, radius)
    return (high == low)[0, 0]


def assert_exactly_aligned(image, label, ignore_index=255):
    valid = label != ignore_index
    assert torch.equal(label[valid], pixel_label(image)[valid])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("crop", [(16, 24), (41, 60), (5, 200)])
def test_crop_and_flip_keep_every_pixel_aligned(generator, size, crop):
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)
    label = pixel_label(image)
    transform = Compose([RandomCrop(crop, image_fill=(1, 2, 3), generator=generator),
                         RandomHorizontalFlip(0.5, generator=generator)])
    for _ in range(6):
        out_image, out_label = transform(image, label)
        assert out_image.shape == (3, *crop) and out_image.dtype == torch.uint8
        assert out_label.shape == crop and out_label.dtype == torch.int64
        assert_exactly_aligned(out_image, out_label)
        # the pixels that came from the image: the overlap of the window and the image
        overlap = min(crop[0], size[0]) * min(crop[1], size[1])
        assert (out_label != 255).sum().item() == overlap
        padded = out_label == 255
        assert (out_image[:, padded] == torch.tensor([[1], [2], [3]], dtype=torch.uint8)).all()


def test_crop_covers_every_offset(generator):
    image = torch.arange(5 * 7, dtype=torch.uint8).reshape(1, 5, 7).expand(3, 5, 7).contiguous()
    crop = RandomCrop((3, 4), generator=generator)
    corners = {crop(image, None)[0][0, 0, 0].item() for _ in range(400)}
    assert corners == {row * 7 + col for row in range(3) for col in range(4)}
    pad = RandomCrop((6, 9), image_fill=255, generator=generator)
    origins = set()
    for _ in range(400):
        out, _ = pad(image, torch.zeros(5, 7, dtype=torch.int64))
        origins.add(tuple((out[0] == 0).nonzero()[0].tolist()))  # where image pixel (0, 0) landed
    assert origins == {(row, col) for row in range(2) for col in range(3)}


def test_flip_probability_and_exactness(generator):
    image = torch.randint(0, 256, (3, 9, 14), dtype=torch.uint8, generator=generator)
    label = pixel_label(image)
    assert torch.equal(RandomHorizontalFlip(1.0)(image, label)[0], image.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(image, label)[1], label)
    flips = sum(not torch.equal(RandomHorizontalFlip(0.3, generator=generator)(image, label)[0], image)
                for _ in range(300))
    assert 50 < flips < 130


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_random_scale_keeps_label_on_its_colour(generator, size, interpolation):
    image, label = block_pair(*size, generator)
    transform = RandomScale(0.5, 2.0, interpolation=interpolation, generator=generator)
    for _ in range(5):
        out_image, out_label = transform(image, label)
        height, width = out_label.shape
        scale_h, scale_w = height / size[0], width / size[1]
        assert out_image.shape == (3, height, width) and out_image.dtype == torch.uint8
        assert out_label.dtype == torch.int64
        assert 0.5 - 1 / size[0] <= scale_h <= 2.0 + 1 / size[0] and abs(scale_h - scale_w) < 2 / min(size)
        inside = interior(out_label)
        assert inside.any()
        assert torch.equal(classify(out_image)[inside], out_label[inside])
        assert set(out_label.unique().tolist()) <= set(range(len(PALETTE)))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("target", [20, (45, 23), (9, 128)])
def test_resize_sizes_and_alignment(generator, size, target):
    image, label = block_pair(*size, generator)
    out_image, out_label = Resize(target)(image, label)
    if isinstance(target, int):
        short, long = min(size), max(size)
        expected_long = round(long * target / short)
        expected = (target, expected_long) if size[0] <= size[1] else (expected_long, target)
    else:
        expected = target
    assert out_image.shape == (3, *expected) and out_label.shape == expected
    inside = interior(out_label)
    assert torch.equal(classify(out_image)[inside], out_label[inside])
    # nearest-neighbour labels: every output value comes from the input
    assert set(out_label.unique().tolist()) <= set(label.unique().tolist())


def test_bicubic_stays_in_the_input_range(generator):
    # hard 0/255 edges make bicubic overshoot; the result must stay in 0…255 (uint8) or the input's range
    image = (torch.rand(3, 7, 9, generator=generator) > 0.5).to(torch.uint8) * 255
    out, _ = Resize((40, 31))(image, None)
    assert out.dtype == torch.uint8 and out.min() == 0 and out.max() == 255
    floats = image.float() / 255 * 0.5 + 0.2
    out, _ = Resize((40, 31))(floats, None)
    assert out.dtype == torch.float32 and out.min() >= 0.2 - 1e-6 and out.max() <= 0.7 + 1e-6
    raw = F.interpolate(floats[None], size=(40, 31), mode="bicubic", align_corners=False)
    assert raw.max() > 0.7 + 1e-3  # the clamp is doing something


def test_generator_makes_transforms_reproducible(generator, seed):
    image = torch.randint(0, 256, (3, 23, 35), dtype=torch.uint8, generator=generator)
    label = pixel_label(image)

    def run(gen):
        transform = segmentation_train_transforms((17, 19), generator=gen)
        return [transform(image, label) for _ in range(3)]

    first = run(torch.Generator().manual_seed(seed))
    again = run(torch.Generator().manual_seed(seed))
    for (a_image, a_label), (b_image, b_label) in zip(first, again):
        assert torch.equal(a_image, b_image) and torch.equal(a_label, b_label)
    # resuming from a saved generator state continues the same stream
    gen = torch.Generator().manual_seed(seed)
    transform = segmentation_train_transforms((17, 19), generator=gen)
    transform(image, label)
    state = gen.get_state()
    expected = transform(image, label)
    gen.set_state(state)
    resumed = transform(image, label)
    assert torch.equal(expected[0], resumed[0]) and torch.equal(expected[1], resumed[1])


def test_color_jitter_changes_only_the_image(generator):
    image = torch.randint(0, 256, (3, 12, 15), dtype=torch.uint8, generator=generator)
    label = pixel_label(image)
    out, out_label = ColorJitter(0.4, 0.4, 0.4, generator=generator)(image, label)
    assert out.dtype == torch.uint8 and out.shape == image.shape and out_label is label
    # brightness alone scales every pixel by one factor in [0.6, 1.4]
    dark = (image.float() * 0.5).round().to(torch.uint8)
    out, _ = ColorJitter(brightness=0.4, generator=generator)(dark, label)
    bright = dark > 20
    ratio = out.float()[bright] / dark.float()[bright]
    assert 0.6 - 0.05 <= ratio.min() and ratio.max() <= 1.4 + 0.05 and ratio.max() - ratio.min() < 0.1
    floats, _ = ColorJitter(0.3, 0.3, 0.3, generator=generator)(image.float(), None)
    assert floats.dtype == torch.float32 and floats.min() >= 0 and floats.max() <= 255


def test_normalize_and_to_float(generator):
    image = torch.randint(0, 256, (3, 5, 6), dtype=torch.uint8, generator=generator)
    as_float, label = ToFloat()(image, None)
    assert as_float.dtype == torch.float32 and torch.equal(as_float, image.float()) and label is None
    out, _ = Normalize(CITYSCAPES_MEAN, CITYSCAPES_STD)(image, None)
    mean, std = torch.tensor(CITYSCAPES_MEAN).view(3, 1, 1), torch.tensor(CITYSCAPES_STD).view(3, 1, 1)
    expected = (image.float() - mean) / std
    torch.testing.assert_close(out, expected)
    eval_out, _ = segmentation_eval_transforms()(image, torch.zeros(5, 6, dtype=torch.int64))
    torch.testing.assert_close(eval_out, expected)
    assert IMAGENET_MEAN[0] == pytest.approx(0.485 * 255)


def test_train_preset_pads_with_the_mean_and_ignore(generator):
    image, label = block_pair(9, 11, generator)
    transform = segmentation_train_transforms((40, 50), scale_range=(1.0, 1.0), jitter=None,
                                              generator=generator)
    out, out_label = transform(image, label)
    assert out.shape == (3, 40, 50) and out.dtype == torch.float32 and out_label.shape == (40, 50)
    padded = out_label == 255
    assert padded.sum() == 40 * 50 - 9 * 11
    # the mean colour (rounded to uint8) normalizes to about 0
    assert out[:, padded].abs().max() < 0.5 / min(CITYSCAPES_STD) + 1e-6
    inside = interior(out_label) & ~padded
    restored = out * torch.tensor(CITYSCAPES_STD).view(3, 1, 1) + torch.tensor(CITYSCAPES_MEAN).view(3, 1, 1)
    assert torch.equal(classify(restored)[inside], out_label[inside])


def test_bad_arguments():
    image = torch.zeros(3, 4, 5, dtype=torch.uint8)
    with pytest.raises(ValueError, match="label"):
        RandomCrop(3)(image, torch.zeros(4, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="image"):
        Resize(3)(torch.zeros(4, 5), None)
    with pytest.raises(ValueError, match="min_scale"):
        RandomScale(2.0, 1.0)
    with pytest.raises(ValueError, match="interpolation"):
        RandomScale(0.5, 1.0, interpolation="nearest")
    with pytest.raises(ValueError, match="size"):
        RandomCrop((0, 3))
    with pytest.raises(ValueError, match="image_fill"):
        RandomCrop(3, image_fill=(1, 2))(image, None)
    with pytest.raises(ValueError, match="brightness"):
        ColorJitter(brightness=1.5)
    with pytest.raises(ValueError, match="std"):
        Normalize((1, 2, 3), (1, 0, 1))
    with pytest.raises(ValueError, match="p must"):
        RandomHorizontalFlip(2.0)
