"""The dataset registry, and bad files named by every reader (DataError) in the official layouts."""
import os

import pytest
import torch
from PIL import Image

from fastladder.data import registry, transforms
from fastladder.data import box_transforms
from fastladder.data.camvid import CamVid
from fastladder.data.mot import MOT15Detection
from fastladder.data.voc import VOCDetection, VOCSegmentation
from fastladder.errors import ArgumentError, DataError

SIZE = (24, 32)  # height, width


def _image(path, generator):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (*SIZE, 3), dtype=torch.uint8, generator=generator).numpy()
    Image.fromarray(pixels).save(path, quality=95)


def write_camvid_split(root, split, generator, names=("0001TP_006690.png", "Seq05VD_f00000.png")):
    """root/{split}/*.png RGB images and root/{split}annot/*.png class indices 0…11."""
    for name in names:
        _image(root / split / name, generator)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        label = torch.randint(0, 12, SIZE, dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(label).save(root / f"{split}annot" / name)


def write_voc_segmentation(devkit, generator, ids, image_set="val"):
    voc = devkit / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Segmentation" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in ids))
    for image_id in ids:
        _image(voc / "JPEGImages" / f"{image_id}.jpg", generator)
        values = torch.randint(0, 21, SIZE, dtype=torch.uint8, generator=generator).numpy()
        label = Image.fromarray(values, "L").convert("P")
        (voc / "SegmentationClass").mkdir(exist_ok=True)
        label.save(voc / "SegmentationClass" / f"{image_id}.png")


def write_voc_detection(devkit, generator, objects_by_id, image_set):
    """VOC2007 JPEGs, Annotations/*.xml with (name, difficult) objects, ImageSets/Main/{image_set}.txt."""
    voc = devkit / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (voc / "Annotations").mkdir(exist_ok=True)
    (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in objects_by_id))
    for image_id, objects in objects_by_id.items():
        _image(voc / "JPEGImages" / f"{image_id}.jpg", generator)
        xml = "".join(f"<object><name>{name}</name><difficult>{flag}</difficult><bndbox><xmin>2</xmin>"
                      f"<ymin>3</ymin><xmax>20</xmax><ymax>15</ymax></bndbox></object>"
                      for name, flag in objects)
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{SIZE[1]}</width><height>{SIZE[0]}</height></size>{xml}</annotation>")


def write_mot_sequence(root, name, generator, rows, frames=2):
    """root/train/{name}/{img1/00000N.jpg, gt/gt.txt, seqinfo.ini}: the 2DMOT2015 layout."""
    sequence = root / "train" / name
    for frame in range(1, frames + 1):
        _image(sequence / "img1" / f"{frame:06d}.jpg", generator)
    (sequence / "gt").mkdir()
    (sequence / "gt" / "gt.txt").write_text("".join(f"{row}\n" for row in rows))
    (sequence / "seqinfo.ini").write_text(f"[Sequence]\nname={name}\nimDir=img1\nframeRate=30\n"
                                          f"seqLength={frames}\nimWidth={SIZE[1]}\nimHeight={SIZE[0]}\n"
                                          f"imExt=.jpg\n")
    return str(sequence)


def test_registry_describes_every_dataset():
    assert registry.list_datasets("seg") == ("cityscapes", "voc", "camvid", "synthetic")
    assert registry.list_datasets("det") == ("mot15", "voc", "synthetic")
    for task in registry.TASKS:
        for name in registry.list_datasets(task):
            info = registry.dataset_info(task, name)
            assert info.palette.shape == (info.num_classes, 3) and info.palette.dtype == torch.uint8
            assert len(info.mean) == len(info.std) == 3 and all(1 < s < 255 for s in info.std)
            assert info.train_split in info.splits and info.val_split in info.splits
            assert info.ignore_index == 255
    assert registry.dataset_info("seg", "cityscapes").num_classes == 19
    assert registry.dataset_info("seg", "camvid").mean == registry.IMAGENET_MEAN
    assert registry.dataset_info("det", "voc").class_names[0] == "background"
    assert registry.dataset_info("det", "mot15").num_classes == 2
    # one definition: the transforms' defaults are the registry's constants
    assert transforms.IMAGENET_MEAN is registry.IMAGENET_MEAN is box_transforms.IMAGENET_MEAN
    assert transforms.CITYSCAPES_STD is registry.CITYSCAPES_STD
    with pytest.raises(ArgumentError, match=r"dataset must be one of \('mot15', 'voc', 'synthetic'\)"):
        registry.dataset_info("det", "camvid")
    with pytest.raises(ArgumentError, match="task must be one of"):
        registry.list_datasets("classification")


def test_roots_and_building(tmp_path, generator):
    default = registry.dataset_root("seg", "synthetic", None, tmp_path)
    assert default == os.path.join(tmp_path, "synthetic-data")
    assert registry.dataset_root("seg", "camvid", tmp_path / "cv") == str(tmp_path / "cv")
    with pytest.raises(ArgumentError, match="dataset 'cityscapes' needs root"):
        registry.dataset_root("seg", "cityscapes", None, tmp_path)
    write_camvid_split(tmp_path, "val", generator)
    dataset = registry.build_dataset("seg", "camvid", tmp_path, "val")
    assert isinstance(dataset, CamVid) and len(dataset) == 2 and dataset.split == "val"
    with pytest.raises(ArgumentError, match=r"split of dataset 'camvid' must be one of \('train', 'val', "):
        registry.build_dataset("seg", "camvid", tmp_path, "trainval")
    with pytest.raises(ArgumentError, match=r"dataset_kwargs: CamVid does not take \['year'\]"):
        registry.build_dataset("seg", "camvid", tmp_path, "val", year="2007")


def test_voc_detection_marks_difficult_boxes_ignored(tmp_path, generator):
    write_voc_detection(tmp_path / "VOCdevkit", generator, {"000001": [("dog", 0), ("cat", 1)]}, "val")
    dataset = registry.build_dataset("det", "voc", tmp_path, "val", year="2007")
    _, target = dataset[0]
    assert sorted(target) == ["boxes", "ignore", "labels"] and target["ignore"].tolist() == [False, True]


def _truncate(path, keep=100):
    path.write_bytes(path.read_bytes()[:keep])


def test_truncated_and_broken_images_and_labels_are_named(tmp_path, generator):
    write_camvid_split(tmp_path / "camvid", "train", generator)
    camvid = CamVid(tmp_path / "camvid", "train")
    image, label = camvid.files[0]
    _truncate(image)
    with pytest.raises(DataError, match=f"^{image}: cannot read the image"):
        camvid[0]
    camvid.files[0] = (camvid.files[1][0], label)  # a good image, and a label file that is not a PNG
    label.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=f"^{label}: cannot read the label image"):
        camvid[0]

    write_voc_segmentation(tmp_path / "VOCdevkit", generator, ["2008_000001"])
    voc = VOCSegmentation(tmp_path, image_set="val")
    jpeg = voc.files[0][0]
    _truncate(jpeg, 300)  # a truncated JPEG: pillow decodes the header, then runs out of data
    with pytest.raises(DataError, match=f"^{jpeg}: cannot read the image"):
        voc[0]


def test_bad_annotations_are_named(tmp_path, generator):
    write_voc_detection(tmp_path / "VOCdevkit", generator, {"000001": [("dog", 0)]}, "val")
    dataset = VOCDetection(tmp_path, year="2007", image_set="val")
    image, annotation = dataset.files[0]
    annotation.write_text("<annotation><size><width>8</width>")  # cut short
    with pytest.raises(DataError, match=f"^{annotation}: cannot parse the annotation XML"):
        dataset[0]
    _truncate(image, 300)
    with pytest.raises(DataError, match=f"^{image}: cannot read the image"):
        dataset[0]

    sequence = write_mot_sequence(tmp_path / "mot", "SEQ-01", generator, ["1,1,3,4,5,6,1,-1,-1,-1",
                                                                          "2,1,3,4,five,6,1,-1,-1,-1"])
    gt = os.path.join(sequence, "gt", "gt.txt")
    with pytest.raises(DataError, match=f"^{gt}:2: non-numeric value"):
        MOT15Detection(tmp_path / "mot", "all")
    with open(gt, "w") as f:
        f.write("1,1,3,4,5,6,1,-1,-1,-1\n2,1,3,4,5,6,1,-1,-1\n")
    with pytest.raises(DataError, match=f"^{gt}:2: expected 10 comma-separated values"):
        MOT15Detection(tmp_path / "mot", "all")
    with open(gt, "wb") as f:
        f.write(b"1,1,3,4,5,6,1,-1,-1,-1\n\xff\xfe\n")
    with pytest.raises(DataError, match=f"^{gt}: cannot read the ground truth"):
        MOT15Detection(tmp_path / "mot", "all")
    with open(gt, "w") as f:
        f.write("1,1,3,4,5,6,1,-1,-1,-1\n")
    frames = MOT15Detection(tmp_path / "mot", "all")
    frame = frames.frames[0][2]
    with open(frame, "r+b") as f:
        f.truncate(300)
    with pytest.raises(DataError, match=f"^{frame}: cannot read the image"):
        frames[0]
