"""fastladder.data.SyntheticScenes: deterministic generation, class coverage, the Cityscapes reader and
the manifest."""
import json

import numpy as np
import pytest
import torch

from fastladder.data.cityscapes import Cityscapes
from fastladder.data.synthetic import (DEFAULT_NUM_IMAGES, SYNTHETIC_LABEL_IDS, SyntheticScenes,
                                       render_street_scene)

SMALL = (48, 96)
# road, sidewalk, building, pole, traffic sign, vegetation, sky, person, car
REQUIRED_LABEL_IDS = {7, 8, 11, 17, 20, 21, 23, 24, 26}
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 17: 5, 20: 7, 21: 8, 23: 10, 24: 11, 26: 13}


def split_bytes(root, split):
    files = sorted((root / "leftImg8bit" / split).rglob("*.png"))
    files += sorted((root / "gtFine" / split).rglob("*.png"))
    return [(f.relative_to(root).as_posix(), f.read_bytes()) for f in files]


def test_same_seed_gives_identical_bytes(tmp_path, seed):
    seed = seed % 1000
    first = SyntheticScenes.generate(tmp_path / "a", "train", 3, SMALL, seed, progress=False)
    SyntheticScenes.generate(tmp_path / "b", "train", 3, SMALL, seed, progress=False)
    SyntheticScenes.generate(tmp_path / "c", "train", 3, SMALL, seed + 1, progress=False)
    a, b, c = (split_bytes(tmp_path / name, "train") for name in "abc")
    assert len(a) == 6 and [name for name, _ in a] == [name for name, _ in b]
    assert a == b
    assert [data for _, data in a] != [data for _, data in c]
    assert all(data_a != data_c for (_, data_a), (_, data_c) in zip(a, c))
    assert first[0][0].name == "synthetic_000000_000000_leftImg8bit.png"
    label_folder = tmp_path / "a" / "gtFine" / "train" / "synthetic"
    assert first[2][1] == label_folder / "synthetic_000000_000002_gtFine_labelIds.png"
    # splits draw from their own streams
    SyntheticScenes.generate(tmp_path / "a", "val", 3, SMALL, seed, progress=False)
    assert [data for _, data in split_bytes(tmp_path / "a", "val")][:3] != [data for _, data in a][:3]


def test_scenes_cover_the_classes_and_ignore(seed):
    rng_seeds = np.random.SeedSequence(seed).spawn(6)
    present = set()
    ignore_seen = 0
    for child in rng_seeds:
        image, label = render_street_scene(128, 256, np.random.default_rng(child))
        assert image.shape == (128, 256, 3) and image.dtype == np.uint8
        assert label.shape == (128, 256) and label.dtype == np.uint8
        values = set(np.unique(label).tolist())
        assert values <= REQUIRED_LABEL_IDS | {1, 2}
        assert {7, 8, 11, 23} <= values  # road, sidewalk, building, sky in every scene
        present |= values
        ignore_seen += bool(values & {1, 2})
        # sky on top, road at the bottom centre
        top_rows = label[:10][label[:10] != 2]
        assert np.isin(top_rows, [11, 17, 20, 21, 23]).all()
        # colours vary within a class: textures and noise, not flat fills
        assert image[label == 7].std(axis=0).min() > 3
    assert REQUIRED_LABEL_IDS <= present
    assert ignore_seen >= 1
    assert set(SYNTHETIC_LABEL_IDS) == REQUIRED_LABEL_IDS


def test_classes_are_separable_by_colour(seed):
    """Mean colours of the large classes differ clearly (the scenes must be learnable)."""
    image, label = render_street_scene(128, 256, np.random.default_rng(seed))
    means = {c: image[label == c].astype(float).mean(0) for c in (7, 8, 21, 23) if (label == c).sum() > 50}
    ids = sorted(means)
    for i in ids:
        for j in ids:
            if i < j:
                assert np.abs(means[i] - means[j]).max() > 15, (i, j, means[i], means[j])


def test_read_through_the_cityscapes_loader(tmp_path, seed):
    ds = SyntheticScenes(tmp_path, "val", num_images=4, size=SMALL, seed=seed % 1000)
    assert isinstance(ds, Cityscapes) and len(ds) == 4 and ds.num_classes == 19 and ds.ignore_index == 255
    real = Cityscapes(tmp_path, split="val")
    assert [pair for pair in real.files] == ds.files
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, *SMALL)
        assert label.dtype == torch.int64 and label.shape == SMALL
        assert set(label.unique().tolist()) <= set(TRAIN_IDS.values()) | {255}
        real_image, real_label = real[i]
        assert torch.equal(image, real_image) and torch.equal(label, real_label)
    raw = Cityscapes(tmp_path, split="val", target="labelIds")[0][1]
    mapped = ds[0][1]
    for label_id, train_id in TRAIN_IDS.items():
        assert (mapped[raw == label_id] == train_id).all()
    manifest = json.loads((tmp_path / "synthetic_manifest.json").read_text())
    assert manifest["splits"]["val"]["num_images"] == 4 and manifest["splits"]["val"]["size"] == list(SMALL)
    assert manifest["splits"]["val"]["seed"] == seed % 1000


def test_transforms_and_defaults(tmp_path):
    assert DEFAULT_NUM_IMAGES["train"] == 300 and DEFAULT_NUM_IMAGES["val"] == 60
    ds = SyntheticScenes(tmp_path, "test", num_images=2, size=SMALL,
                         transforms=lambda image, label: (image.float() / 255, label + 1))
    image, label = ds[1]
    assert image.dtype == torch.float32 and (label == 256).all()  # Cityscapes test labels are all ignore


def test_manifest_reuse_and_regeneration(tmp_path):
    SyntheticScenes(tmp_path, "train", num_images=3, size=SMALL, seed=5)
    first = tmp_path / "leftImg8bit" / "train" / "synthetic" / "synthetic_000000_000000_leftImg8bit.png"
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()
    # same parameters: reused, not rewritten
    SyntheticScenes(tmp_path, "train", num_images=3, size=SMALL, seed=5)
    assert first.stat().st_mtime_ns == stamp
    # another seed: regenerated, with a warning, and recorded
    with pytest.warns(UserWarning, match="regenerating"):
        ds = SyntheticScenes(tmp_path, "train", num_images=3, size=SMALL, seed=6)
    assert first.read_bytes() != content and len(ds) == 3
    assert json.loads((tmp_path / "synthetic_manifest.json").read_text())["splits"]["train"]["seed"] == 6
    # fewer images: stale files do not linger
    with pytest.warns(UserWarning, match="regenerating"):
        ds = SyntheticScenes(tmp_path, "train", num_images=2, size=SMALL, seed=6)
    assert len(ds) == 2 and len(list(first.parent.iterdir())) == 2
    # another size
    with pytest.warns(UserWarning, match="regenerating"):
        ds = SyntheticScenes(tmp_path, "train", num_images=2, size=(40, 64), seed=6)
    assert ds[0][0].shape == (3, 40, 64)
    # a deleted file (an interrupted copy): regenerated
    first.unlink()
    with pytest.warns(UserWarning, match="missing"):
        ds = SyntheticScenes(tmp_path, "train", num_images=2, size=(40, 64), seed=6)
    assert first.is_file() and len(ds) == 2
    # other splits keep their record
    SyntheticScenes(tmp_path, "val", num_images=1, size=SMALL, seed=6)
    splits = json.loads((tmp_path / "synthetic_manifest.json").read_text())["splits"]
    assert set(splits) == {"train", "val"} and splits["train"]["size"] == [40, 64]


def test_refuses_foreign_data_and_bad_arguments(tmp_path):
    city = tmp_path / "leftImg8bit" / "train" / "aachen"
    city.mkdir(parents=True)
    with pytest.raises(ValueError, match="aachen.*root of its own"):
        SyntheticScenes(tmp_path, "train", num_images=1, size=SMALL)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes(tmp_path / "other", "extra")
    with pytest.raises(ValueError, match="size"):
        SyntheticScenes(tmp_path / "other", "val", size=(16, 64))
    with pytest.raises(ValueError, match="num_images"):
        SyntheticScenes(tmp_path / "other", "val", num_images=0)
    (tmp_path / "other" / "synthetic_manifest.json").write_text("not json")
    with pytest.raises(ValueError, match="synthetic_manifest.json"):
        SyntheticScenes(tmp_path / "other", "val", num_images=1, size=SMALL)


@pytest.mark.slow
def test_default_splits_generate(tmp_path):
    train = SyntheticScenes(tmp_path)
    val = SyntheticScenes(tmp_path, "val")
    assert len(train) == 300 and len(val) == 60 and train[299][0].shape == (3, 128, 256)


@pytest.mark.slow
def test_a_small_ladder_densenet_learns_the_scenes(tmp_path, seed):
    """The scenes are learnable: a small LDN, 300 Adam steps of 8 crops, reaches val mIoU ≥ 0.80."""
    from fastladder.data.transforms import Normalize
    from fastladder.eval import confusion_matrix, mean_iou
    from fastladder.models.ladder_densenet import LadderDenseNet
    from fastladder.train.losses import ladder_loss

    def tensors(split, count):
        ds = SyntheticScenes(tmp_path, split, num_images=count, transforms=Normalize())
        images, labels = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(images), torch.stack(labels)

    train_images, train_labels = tensors("train", 120)
    val_images, val_labels = tensors("val", 24)
    model = LadderDenseNet(19, growth_rate=12, block_config=(2, 3, 4, 4), num_init_features=32,
                           context_channels=64, upsample_channels=48)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    steps = 300
    for step in range(steps):
        batch = torch.randint(0, len(train_images), (8,))
        images, labels = train_images[batch], train_labels[batch]
        if step % 2:
            images, labels = images.flip(-1), labels.flip(-1)
        model.train()
        loss = ladder_loss(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * (1 - (step + 1) / steps) ** 0.9
    model.eval()
    with torch.no_grad():
        confusion = sum(confusion_matrix(model(val_images[i:i + 8]).argmax(1), val_labels[i:i + 8], 19)
                        for i in range(0, len(val_images), 8))
    result = mean_iou(confusion)
    assert result["miou"] >= 0.80, result["iou"]
