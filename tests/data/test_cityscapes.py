"""fastladder.data.Cityscapes on small files written in the official layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastladder.data.cityscapes import Cityscapes

# label id → train id, typed from the cityscapesScripts table (independent of fastladder.data.labels)
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
             26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def expected_train_ids(label_ids: np.ndarray) -> np.ndarray:
    out = np.full(label_ids.shape, 255, np.int64)
    for label_id, train_id in TRAIN_IDS.items():
        out[label_ids == label_id] = train_id
    return out


def write_split(root, split, generator, cities=(("bochum", 1), ("aachen", 2)), size=(9, 14), labels=True):
    """Writes random images and label-id PNGs; returns {(city, index): (image, label_ids)}."""
    written = {}
    for city, count in cities:
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            stem = f"{city}_{index:06d}_{19 + index:06d}"
            image = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=generator).numpy()
            label_ids = torch.randint(0, 34, size, dtype=torch.uint8, generator=generator).numpy()
            Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            if labels:
                label_path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
                Image.fromarray(label_ids).save(label_path)
            written[(city, index)] = (image, label_ids)
    return written


def test_reads_images_and_maps_label_ids(tmp_path, generator):
    written = write_split(tmp_path, "train", generator)
    ds = Cityscapes(tmp_path, split="train")
    assert len(ds) == 3 and ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.class_names[0] == "road" and ds.class_names[-1] == "bicycle" and len(ds.class_names) == 19
    assert ds.palette.shape == (19, 3) and ds.palette.dtype == torch.uint8
    assert ds.palette[0].tolist() == [128, 64, 128]
    # sorted: aachen before bochum, frames in order
    assert [p.name for p, _ in ds.files] == ["aachen_000000_000019_leftImg8bit.png",
                                             "aachen_000001_000020_leftImg8bit.png",
                                             "bochum_000000_000019_leftImg8bit.png"]
    assert ds.files[0][1].name == "aachen_000000_000019_gtFine_labelIds.png"
    for i, key in enumerate([("aachen", 0), ("aachen", 1), ("bochum", 0)]):
        image, label = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 9, 14)
        assert label.dtype == torch.int64 and label.shape == (9, 14)
        expected_image, label_ids = written[key]
        assert torch.equal(image, torch.from_numpy(expected_image).permute(2, 0, 1))
        assert torch.equal(label, torch.from_numpy(expected_train_ids(label_ids)))


def test_label_ids_target_returns_raw_ids(tmp_path, generator):
    written = write_split(tmp_path, "val", generator, cities=(("lindau", 2),))
    ds = Cityscapes(tmp_path, split="val", target="labelIds")
    assert ds.num_classes == 34 and ds.class_names[7] == "road" and ds.palette.shape == (34, 3)
    _, label = ds[1]
    assert torch.equal(label, torch.from_numpy(written[("lindau", 1)][1]).long())


def test_test_split_labels_are_all_ignore(tmp_path, generator):
    write_split(tmp_path, "test", generator, cities=(("berlin", 2),), labels=False)
    ds = Cityscapes(tmp_path, split="test")
    image, label = ds[0]
    assert image.shape == (3, 9, 14)
    assert label.shape == (9, 14) and label.dtype == torch.int64 and (label == 255).all()
    assert all(label_path is None for _, label_path in ds.files)


def test_transforms_receive_image_and_label(tmp_path, generator):
    write_split(tmp_path, "train", generator, cities=(("ulm", 1),))
    calls = []

    def transforms(image, label):
        calls.append((image.shape, label.shape))
        return image.float() / 255, label[:4]

    image, label = Cityscapes(tmp_path, transforms=transforms)[0]
    assert calls == [((3, 9, 14), (9, 14))]
    assert image.dtype == torch.float32 and label.shape == (4, 14)


def test_missing_root_and_split(tmp_path, generator):
    with pytest.raises(ValueError, match="does not exist"):
        Cityscapes(tmp_path / "nowhere")
    write_split(tmp_path, "train", generator, cities=(("ulm", 1),))
    with pytest.raises(ValueError, match=r"leftImg8bit.val"):
        Cityscapes(tmp_path, split="val")
    with pytest.raises(ValueError, match="split"):
        Cityscapes(tmp_path, split="training")
    with pytest.raises(ValueError, match="target"):
        Cityscapes(tmp_path, target="colors")


def test_image_without_label_names_both_files(tmp_path, generator):
    write_split(tmp_path, "train", generator, cities=(("ulm", 2),))
    label = tmp_path / "gtFine" / "train" / "ulm" / "ulm_000001_000020_gtFine_labelIds.png"
    label.unlink()
    message = r"ulm_000001_000020_leftImg8bit\.png.*ulm_000001_000020_gtFine_labelIds"
    with pytest.raises(ValueError, match=message):
        Cityscapes(tmp_path)


def test_size_mismatch_names_file_and_sizes(tmp_path, generator):
    write_split(tmp_path, "train", generator, cities=(("ulm", 1),))
    label = tmp_path / "gtFine" / "train" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((8, 14), 7, np.uint8)).save(label)
    ds = Cityscapes(tmp_path)
    with pytest.raises(ValueError, match=r"ulm_000000_000019_leftImg8bit\.png is 14x9.*is 14x8"):
        ds[0]


def test_unknown_label_id_names_file(tmp_path, generator):
    write_split(tmp_path, "train", generator, cities=(("ulm", 1),))
    label = tmp_path / "gtFine" / "train" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png"
    values = np.full((9, 14), 7, np.uint8)
    values[3, 5] = 40
    Image.fromarray(values).save(label)
    with pytest.raises(ValueError, match=r"ulm_000000_000019_gtFine_labelIds\.png.*\[40\]"):
        Cityscapes(tmp_path)[0]


def test_empty_split_and_colour_label(tmp_path, generator):
    (tmp_path / "leftImg8bit" / "train" / "ulm").mkdir(parents=True)
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .*images"):
        Cityscapes(tmp_path)
    write_split(tmp_path, "val", generator, cities=(("ulm", 1),))
    label = tmp_path / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.zeros((9, 14, 3), np.uint8)).save(label)
    with pytest.raises(ValueError, match=r"gtFine_labelIds\.png.*mode 'RGB'"):
        Cityscapes(tmp_path, split="val")[0]
