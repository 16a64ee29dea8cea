"""fastladder.data.VOCSegmentation and VOCDetection on small files in the VOCdevkit layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastladder.data.voc import VOC_CLASSES, VOC_PALETTE, VOCDetection, VOCSegmentation, voc_colormap

SIZE = (11, 17)  # (H, W), odd and non-square


def pil_rgb(path):
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def write_image(path, generator, size=SIZE):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=generator)
    Image.fromarray(pixels.numpy()).save(path)


def write_palette_label(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8)).convert("P")
    image.putpalette(voc_colormap(256).flatten().tolist())
    image.save(path)


def random_label(generator, size=SIZE):
    values = torch.randint(0, 21, size, generator=generator).numpy()
    values[torch.rand(size, generator=generator).numpy() < 0.1] = 255
    return values


def write_segmentation(devkit, generator, sets):
    """sets: {"train": [ids], "val": [ids]}; returns {id: label values}."""
    voc = devkit / "VOC2012"
    labels = {}
    for image_set, ids in sets.items():
        lists = voc / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            write_image(voc / "JPEGImages" / f"{image_id}.jpg", generator)
            labels[image_id] = random_label(generator)
            write_palette_label(voc / "SegmentationClass" / f"{image_id}.png", labels[image_id])
    return labels


def test_colormap_and_class_table():
    colors = voc_colormap(256)
    assert colors.shape == (256, 3) and colors.dtype == torch.uint8
    assert colors[0].tolist() == [0, 0, 0] and colors[1].tolist() == [128, 0, 0]
    assert colors[2].tolist() == [0, 128, 0] and colors[3].tolist() == [128, 128, 0]
    assert colors[15].tolist() == [192, 128, 128]  # person
    assert colors[20].tolist() == [0, 64, 128]     # tvmonitor
    assert colors[255].tolist() == [224, 224, 192]  # void
    assert torch.equal(VOC_PALETTE, colors[:21])
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"


@pytest.mark.parametrize("root_is_devkit", [True, False])
def test_segmentation_reads_palette_indices(tmp_path, generator, root_is_devkit):
    labels = write_segmentation(tmp_path / "VOCdevkit", generator, {"train": ["2007_000032", "2007_000039"]})
    ds = VOCSegmentation(tmp_path / "VOCdevkit" if root_is_devkit else tmp_path, image_set="train")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.ignore_index == 255 and ds.class_names == VOC_CLASSES
    assert torch.equal(ds.palette, VOC_PALETTE)
    image, label = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, *SIZE)
    assert torch.equal(image, pil_rgb(ds.files[1][0]))
    assert label.dtype == torch.int64 and torch.equal(label, torch.from_numpy(labels["2007_000039"]).long())


def test_segmentation_errors_name_the_file(tmp_path, generator):
    devkit = tmp_path / "VOCdevkit"
    labels = write_segmentation(devkit, generator, {"train": ["a", "b"], "val": ["c"]})
    seg = devkit / "VOC2012" / "SegmentationClass"
    bad = labels["a"].copy()
    bad[0, 0] = 30
    write_palette_label(seg / "a.png", bad)
    with pytest.raises(ValueError, match=r"a\.png.*\[30\]"):
        VOCSegmentation(devkit, image_set="train")[0]
    Image.fromarray(np.zeros((SIZE[0] + 1, SIZE[1], 3), np.uint8)).save(seg / "b.png")
    with pytest.raises(ValueError, match=r"b\.png.*mode 'RGB'"):
        VOCSegmentation(devkit, image_set="train")[1]
    write_palette_label(seg / "b.png", np.zeros((SIZE[0] + 1, SIZE[1])))
    with pytest.raises(ValueError, match=r"b\.jpg is 17x11.*b\.png is 17x12"):
        VOCSegmentation(devkit, image_set="train")[1]
    (seg / "c.png").unlink()
    with pytest.raises(ValueError, match=r"c\.jpg.*c\.png does not exist"):
        VOCSegmentation(devkit, image_set="val")
    with pytest.raises(ValueError, match=r"trainval\.txt does not exist"):
        VOCSegmentation(devkit, image_set="trainval")
    with pytest.raises(ValueError, match="VOC2007"):
        VOCSegmentation(devkit, year="2007")
    with pytest.raises(ValueError, match="sbd_root"):
        VOCSegmentation(devkit, image_set="train_aug")
    with pytest.raises(ValueError, match="sbd_root"):
        VOCSegmentation(devkit, image_set="train", sbd_root=tmp_path)


def write_sbd(sbd, generator, train_ids, val_ids, as_png=()):
    scipy_io = pytest.importorskip("scipy.io")
    dataset = sbd / "dataset"
    (dataset / "cls").mkdir(parents=True)
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (dataset / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    labels = {}
    for image_id in list(train_ids) + list(val_ids):
        labels[image_id] = torch.randint(0, 21, SIZE, generator=generator).numpy().astype(np.uint8)
        if image_id in as_png:
            write_palette_label(dataset / "cls_png" / f"{image_id}.png", labels[image_id])
        else:
            scipy_io.savemat(str(dataset / "cls" / f"{image_id}.mat"), {"GTcls": {
                "Segmentation": labels[image_id], "Boundaries": np.zeros(21, object),
                "CategoriesPresent": np.unique(labels[image_id])}})
        write_image(dataset / "img" / f"{image_id}.jpg", generator)
    return labels


def test_train_aug_merges_sbd_without_voc_val(tmp_path, generator):
    devkit = tmp_path / "VOCdevkit"
    voc_labels = write_segmentation(devkit, generator, {"train": ["t1", "t2"], "val": ["v1", "v2"]})
    # SBD holds a VOC train id (VOC's label wins), VOC val ids (excluded) and new ids (one as PNG)
    sbd_labels = write_sbd(tmp_path / "SBD", generator, train_ids=["s1", "t1", "v1"],
                           val_ids=["s2", "v2", "s3"], as_png=("s3",))
    ds = VOCSegmentation(devkit, image_set="train_aug", sbd_root=tmp_path / "SBD")
    ids = [image.stem for image, _ in ds.files]
    assert ids == ["s1", "s2", "s3", "t1", "t2"]
    by_id = {image.stem: i for i, (image, _) in enumerate(ds.files)}
    assert ds.files[by_id["t1"]][1].parent.name == "SegmentationClass"
    assert ds.files[by_id["s1"]][1].suffix == ".mat" and ds.files[by_id["s3"]][1].suffix == ".png"
    for image_id, expected in [("t1", voc_labels["t1"]), ("s1", sbd_labels["s1"]), ("s2", sbd_labels["s2"]),
                               ("s3", sbd_labels["s3"])]:
        image, label = ds[by_id[image_id]]
        assert image.shape == (3, *SIZE)
        assert torch.equal(label, torch.from_numpy(expected.astype(np.int64)))


def test_sbd_bad_mat_names_file(tmp_path, generator):
    scipy_io = pytest.importorskip("scipy.io")
    devkit = tmp_path / "VOCdevkit"
    write_segmentation(devkit, generator, {"train": ["t1"], "val": ["v1"]})
    write_sbd(tmp_path / "SBD", generator, train_ids=["s1"], val_ids=[])
    scipy_io.savemat(str(tmp_path / "SBD" / "dataset" / "cls" / "s1.mat"), {"other": np.zeros(3)})
    ds = VOCSegmentation(devkit, image_set="train_aug", sbd_root=tmp_path / "SBD")
    with pytest.raises(ValueError, match=r"s1\.mat.*GTcls"):
        ds[0]


ANNOTATION = """<annotation>
  <folder>VOC2007</folder><filename>{id}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>"""
OBJECT = """<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>{difficult}
  <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def write_detection(devkit, year, generator, objects_by_id, image_set="trainval"):
    voc = devkit / f"VOC{year}"
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in objects_by_id))
    for image_id, objects in objects_by_id.items():
        write_image(voc / "JPEGImages" / f"{image_id}.jpg", generator)
        text = "".join(OBJECT.format(name=name, x1=x1, y1=y1, x2=x2, y2=y2,
                                     difficult="" if flag is None else f"<difficult>{flag}</difficult>")
                       for name, (x1, y1, x2, y2), flag in objects)
        xml = ANNOTATION.format(id=image_id, w=SIZE[1], h=SIZE[0], objects=text)
        (voc / "Annotations" / f"{image_id}.xml").write_text(xml)


def test_detection_boxes_labels_difficult(tmp_path, generator):
    devkit = tmp_path / "VOCdevkit"
    write_detection(devkit, "2007", generator, {
        "000005": [("chair", (3, 2, 10, 9), 0), ("person", (1, 1, 17, 11), 1),
                   ("tvmonitor", (5, 6, 5, 6), None)],
        "000007": []})
    ds = VOCDetection(tmp_path, year="2007", image_set="trainval")
    assert len(ds) == 2 and ds.num_classes == 21
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, *SIZE)
    assert torch.equal(image, pil_rgb(ds.files[0][0]))
    assert target["boxes"].dtype == torch.float32
    # 1-based inclusive → 0-based xyxy: (x1 − 1, y1 − 1, x2, y2); a 1-pixel box has width 1
    assert target["boxes"].tolist() == [[2, 1, 10, 9], [0, 0, 17, 11], [4, 5, 5, 6]]
    assert target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [VOC_CLASSES.index("chair"), 15, 20]
    assert target["ignore"].dtype == torch.bool and target["ignore"].tolist() == [False, True, False]
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert empty["labels"].shape == (0,) and empty["ignore"].shape == (0,)


def test_detection_union_of_years(tmp_path, generator):
    devkit = tmp_path / "VOCdevkit"
    write_detection(devkit, "2007", generator, {"000001": [("dog", (1, 1, 4, 4), 0)]})
    write_detection(devkit, "2012", generator, {"2008_000002": [("cat", (2, 2, 6, 8), 0)],
                                                "2008_000003": [("bus", (2.0, 3.0, 9.0, 10.0), 0)]})
    ds = VOCDetection(devkit, year=["2007", "2012"], image_set="trainval")
    assert len(ds) == 3
    assert [p.parent.parent.name for p, _ in ds.files] == ["VOC2007", "VOC2012", "VOC2012"]
    assert ds[2][1]["boxes"].tolist() == [[1, 2, 9, 10]] and ds[2][1]["labels"].tolist() == [6]
    calls = []
    ds = VOCDetection(devkit, year="2012",
                      transforms=lambda image, target: calls.append(target) or (image, target))
    ds[0]
    assert calls[0]["labels"].tolist() == [VOC_CLASSES.index("cat")]


def test_detection_malformed_annotations_name_the_file(tmp_path, generator):
    devkit = tmp_path / "VOCdevkit"
    write_detection(devkit, "2007", generator, {
        "a": [("dog", (1, 1, 4, 4), 0)], "b": [("unicorn", (1, 1, 4, 4), 0)],
        "c": [("dog", (5, 1, 4, 4), 0)], "d": []})
    annotations = devkit / "VOC2007" / "Annotations"
    (annotations / "a.xml").write_text("<annotation><size><width>3</width>")
    (annotations / "d.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    ds = VOCDetection(devkit)
    with pytest.raises(ValueError, match=r"a\.xml: cannot parse"):
        ds[0]
    with pytest.raises(ValueError, match=r"b\.xml.*unicorn"):
        ds[1]
    with pytest.raises(ValueError, match=r"c\.xml.*empty box"):
        ds[2]
    with pytest.raises(ValueError, match=r"d\.xml.*size"):
        ds[3]
    (annotations / "a.xml").unlink()
    with pytest.raises(ValueError, match=r"a\.xml does not exist"):
        VOCDetection(devkit)


def test_voc_colormap_first_colors():
    palette = voc_colormap(21)
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[20].tolist() == [0, 64, 128]
    assert len({tuple(c) for c in voc_colormap(256).tolist()}) == 256
