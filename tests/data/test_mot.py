"""MOT15Detection on small folders in the official 2DMOT2015 layout, written into tmp_path."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastladder.data.mot import MOT15Detection, read_sequence_info


def write_sequence(root, name, num_frames, rows, *, size=(24, 32), seqinfo=True, extension=".jpg",
                   generator=None):
    """Writes root/train/name with num_frames random frames, the given gt rows and optionally seqinfo.ini."""
    height, width = size
    sequence_dir = os.path.join(root, "train", name)
    os.makedirs(os.path.join(sequence_dir, "img1"))
    os.makedirs(os.path.join(sequence_dir, "gt"))
    for frame in range(1, num_frames + 1):
        pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(pixels).save(os.path.join(sequence_dir, "img1", f"{frame:06d}{extension}"))
    with open(os.path.join(sequence_dir, "gt", "gt.txt"), "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else ",".join(str(value) for value in row)) + "\n")
    if seqinfo:
        with open(os.path.join(sequence_dir, "seqinfo.ini"), "w") as f:
            f.write(f"[Sequence]\nname={name}\nimDir=img1\nframeRate=30\nseqLength={num_frames}\n"
                    f"imWidth={width}\nimHeight={height}\nimExt={extension}\n")
    return sequence_dir


def gt_row(frame, track, left, top, width, height, consider=1):
    return (frame, track, left, top, width, height, consider, -1, -1, -1)


@pytest.fixture
def mot_root(tmp_path, generator):
    # A: 10 frames with seqinfo.ini, frame 4 without gt; B: 5 PNG frames without seqinfo.ini (MOT15 release)
    rows_a = [gt_row(frame, 1, 3 + frame, 5, 8, 12) for frame in range(1, 11) if frame != 4]
    rows_a.append(gt_row(2, 2, 1, 1, 4.5, 6.25, consider=0))
    rows_a.append(gt_row(9, 3, -2, 10, 5, 7))
    write_sequence(tmp_path, "SEQ-A", 10, rows_a, generator=generator)
    rows_b = [gt_row(frame, 7, 2, 3, 10, 15) for frame in (1, 2, 3, 5)]
    write_sequence(tmp_path, "SEQ-B", 5, rows_b, size=(20, 28), seqinfo=False, extension=".png",
                   generator=generator)
    return tmp_path


def test_splits_frames_and_targets(mot_root):
    train = MOT15Detection(mot_root, "train")
    val = MOT15Detection(mot_root, "val")
    everything = MOT15Detection(mot_root, "all")
    assert train.sequences == ("SEQ-A", "SEQ-B")
    # last 20% of each sequence by frame number: A frames 9-10, B frame 5; frame 4 has no gt in A nor B
    assert [(seq, frame) for seq, frame, _ in train.frames] == \
        [("SEQ-A", f) for f in (1, 2, 3, 5, 6, 7, 8)] + [("SEQ-B", f) for f in (1, 2, 3)]
    assert [(seq, frame) for seq, frame, _ in val.frames] == [("SEQ-A", 9), ("SEQ-A", 10), ("SEQ-B", 5)]
    assert len(everything) == len(train) + len(val)
    assert train.num_classes == 2 and train.class_names == ("background", "pedestrian")
    assert train.frames[0][2].endswith(os.path.join("SEQ-A", "img1", "000001.jpg"))

    image, target = train[1]    # SEQ-A frame 2: one normal box and one consider-0 box
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 32)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    # 1-based (left, top, width, height) -> 0-based xyxy with exclusive right/bottom edges
    assert target["boxes"].tolist() == [[4.0, 4.0, 12.0, 16.0], [0.0, 0.0, 4.5, 6.25]]
    assert target["labels"].tolist() == [1, 1] and target["ignore"].tolist() == [False, True]
    _, target = val[0]          # a box partly outside the image is kept unclipped
    assert target["boxes"][1].tolist() == [-3.0, 9.0, 2.0, 16.0]
    image, _ = val[2]           # SEQ-B: size read from its first frame (no seqinfo.ini)
    assert image.shape == (3, 20, 28)
    assert MOT15Detection(mot_root, "all", sequences=["SEQ-B"]).sequences == ("SEQ-B",)


def test_image_pixels_and_transforms(mot_root):
    dataset = MOT15Detection(mot_root, "val", transforms=lambda image, target: (image.flip(-1), target))
    image, _ = dataset[2]
    reference = np.asarray(Image.open(dataset.frames[2][2]).convert("RGB"))
    assert torch.equal(image, torch.from_numpy(reference.copy()).permute(2, 0, 1).flip(-1))


def test_sequence_info_with_and_without_ini(mot_root):
    info = read_sequence_info(os.path.join(mot_root, "train", "SEQ-A"))
    fields = (info.length, info.width, info.height, info.extension, info.frame_rate)
    assert fields == (10, 32, 24, ".jpg", 30.0)
    info = read_sequence_info(os.path.join(mot_root, "train", "SEQ-B"))
    assert (info.length, info.width, info.height, info.extension) == (5, 28, 20, ".png")


def test_val_fraction_extremes(mot_root):
    assert len(MOT15Detection(mot_root, "val", val_fraction=0.0)) == 0
    assert len(MOT15Detection(mot_root, "train", val_fraction=1.0)) == 0
    # A: frames 1-5 less 4; B: 2.5 val frames round half up to 3, so frames 1-2 train
    assert len(MOT15Detection(mot_root, "train", val_fraction=0.5)) == 4 + 2


@pytest.mark.parametrize("bad_row, message", [
    ("1,1,3,4,5,6,1,-1,-1", "expected 10 comma-separated values"),
    ("1,1,3,x,5,6,1,-1,-1,-1", "non-numeric"),
    ("1,1,3,4,-5,6,1,-1,-1,-1", "negative box size"),
    ("11,1,3,4,5,6,1,-1,-1,-1", "frame 11 is outside 1..10"),
    ("0,1,3,4,5,6,1,-1,-1,-1", "frame 0 is outside"),
])
def test_malformed_gt_row_names_file_and_line(tmp_path, generator, bad_row, message):
    rows = [gt_row(1, 1, 2, 2, 4, 4), gt_row(2, 1, 2, 2, 4, 4), bad_row]
    write_sequence(tmp_path, "BAD", 10, rows, generator=generator)
    gt_path = os.path.join(tmp_path, "train", "BAD", "gt", "gt.txt")
    with pytest.raises(ValueError, match=f"{gt_path}:3: .*{message}"):
        MOT15Detection(tmp_path)


def test_missing_files_name_the_path(tmp_path, generator):
    with pytest.raises(ValueError, match="train: folder not found"):
        MOT15Detection(tmp_path)
    sequence_dir = write_sequence(tmp_path, "S", 3, [gt_row(1, 1, 2, 2, 4, 4), gt_row(3, 1, 2, 2, 4, 4)],
                                  generator=generator)
    os.remove(os.path.join(sequence_dir, "img1", "000003.jpg"))
    with pytest.raises(ValueError, match="000003.jpg: frame 3 has ground truth but no image"):
        MOT15Detection(tmp_path, "all")
    os.remove(os.path.join(sequence_dir, "gt", "gt.txt"))
    with pytest.raises(ValueError, match="gt.txt: ground-truth file not found"):
        MOT15Detection(tmp_path, "all")
    with pytest.raises(ValueError, match=r"sequences \['NOPE'\] not found"):
        MOT15Detection(tmp_path, sequences=["NOPE"])
    with open(os.path.join(sequence_dir, "seqinfo.ini"), "w") as f:
        f.write("[Sequence]\nname=S\nimDir=img1\nseqLength=three\nimWidth=32\nimHeight=24\n")
    with pytest.raises(ValueError, match=r"seqinfo.ini: \[Sequence\] seqLength = 'three'"):
        MOT15Detection(tmp_path, "all")
    with open(os.path.join(sequence_dir, "seqinfo.ini"), "w") as f:
        f.write("[Sequence]\nname=S\nimDir=img1\nimWidth=32\nimHeight=24\n")
    with pytest.raises(ValueError, match="seqinfo.ini: .*lacks the key 'seqLength'"):
        MOT15Detection(tmp_path, "all")
    with pytest.raises(ValueError, match="split"):
        MOT15Detection(tmp_path, "test")
