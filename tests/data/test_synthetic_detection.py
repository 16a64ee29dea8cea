"""SyntheticPedestrians: deterministic files in the MOT15 layout, read back by MOT15Detection."""
import json
import os

import pytest
import torch

from fastladder.data.mot import MOT15Detection
from fastladder.data.synthetic_detection import (MANIFEST_NAME, SyntheticPedestrians,
                                                 generate_synthetic_pedestrians)

SMALL = dict(num_sequences=2, frames_per_sequence=6, size=(72, 96), progress=False)


def read_tree(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_same_seed_gives_identical_files(tmp_path, seed):
    generate_synthetic_pedestrians(tmp_path / "a", seed=seed, **SMALL)
    generate_synthetic_pedestrians(tmp_path / "b", seed=seed, **SMALL)
    first, second = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert sorted(first) == sorted(second)
    assert os.path.join("train", "SYN-01", "img1", "000006.png") in first
    assert all(first[name] == second[name] for name in first)
    generate_synthetic_pedestrians(tmp_path / "c", seed=seed + 1, **SMALL)
    other = read_tree(tmp_path / "c")
    assert other[os.path.join("train", "SYN-01", "img1", "000001.png")] != \
        first[os.path.join("train", "SYN-01", "img1", "000001.png")]


def test_read_through_mot15_loader(tmp_path, seed):
    train = SyntheticPedestrians(tmp_path, "train", seed=seed, num_sequences=2, frames_per_sequence=10,
                                 size=(96, 128), progress=False)
    val = SyntheticPedestrians(tmp_path, "val", seed=seed, num_sequences=2, frames_per_sequence=10,
                               size=(96, 128), progress=False)
    assert isinstance(train, MOT15Detection) and train.sequences == ("SYN-01", "SYN-02")
    assert len(train) + len(val) == len(MOT15Detection(tmp_path, "all")) <= 20
    assert {frame for _, frame, _ in val.frames} <= {9, 10}   # the last 20% of every sequence
    assert train.sequence_info["SYN-01"].extension == ".png"
    total, ignored = 0, 0
    for index in range(len(train)):
        image, target = train[index]
        assert image.shape == (3, 96, 128) and image.dtype == torch.uint8
        boxes = target["boxes"]
        assert (target["labels"] == 1).all()
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert (heights >= 0.1 * 96 - 1).all() and (heights <= 0.65 * 96).all()
        # upright figures: tight boxes are 0.3 to 0.6 as wide as they are tall (looser for figures of a
        # dozen pixels, whose width is three or four whole pixels)
        aspect = widths / heights
        large = heights >= 20
        assert ((aspect[large] > 0.28) & (aspect[large] < 0.6)).all(), aspect[large].tolist()
        assert ((aspect > 0.2) & (aspect < 0.7)).all(), aspect.tolist()
        # every annotated box touches the image
        assert ((boxes[:, 2] > 0) & (boxes[:, 0] < 128) & (boxes[:, 3] > 0) & (boxes[:, 1] < 96)).all()
        total += len(boxes)
        ignored += int(target["ignore"].sum())
    assert total >= 2 * len(train) and ignored < total
    # the images hold more than a flat background: pedestrians differ from their surroundings
    image, target = train[0]
    assert image.float().std() > 10


def test_manifest_regenerates_on_new_parameters_and_keeps_matching_sets(tmp_path):
    assert generate_synthetic_pedestrians(tmp_path, **SMALL)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["complete"] and manifest["parameters"]["frames_per_sequence"] == 6
    image_path = tmp_path / "train" / "SYN-01" / "img1" / "000001.png"
    stamp = image_path.stat().st_mtime_ns
    assert not generate_synthetic_pedestrians(tmp_path, **SMALL)      # same parameters: kept as is
    assert image_path.stat().st_mtime_ns == stamp
    changed = dict(SMALL, frames_per_sequence=4, num_sequences=1)
    assert generate_synthetic_pedestrians(tmp_path, **changed)       # new parameters: generated anew
    assert sorted(os.listdir(tmp_path / "train")) == ["SYN-01"]
    assert len(os.listdir(tmp_path / "train" / "SYN-01" / "img1")) == 4
    # an interrupted generation (manifest not complete) is redone
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["complete"] = False
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert generate_synthetic_pedestrians(tmp_path, **changed)


def test_refuses_foreign_data_and_bad_parameters(tmp_path):
    os.makedirs(tmp_path / "train" / "MOT-SEQ")
    with pytest.raises(ValueError, match="SyntheticPedestrians did not generate"):
        generate_synthetic_pedestrians(tmp_path, **SMALL)
    assert os.path.isdir(tmp_path / "train" / "MOT-SEQ")
    with pytest.raises(ValueError, match="num_sequences"):
        generate_synthetic_pedestrians(tmp_path / "x", num_sequences=0)
    with pytest.raises(ValueError, match="size"):
        generate_synthetic_pedestrians(tmp_path / "x", size=(16, 300))


def _learnability_benchmark():
    """benchmarks/bench_ssd_learn.py, the one place where the learnability run is configured."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks", "bench_ssd_learn.py")
    if not os.path.isfile(path):
        pytest.skip("benchmarks/bench_ssd_learn.py is not in this checkout")
    spec = importlib.util.spec_from_file_location("fastladder_bench_ssd_learn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_learnable_by_a_reduced_width_ssd300(tmp_path):
    """The learnability target: fastladder's reduced-width SSD300, trained by ``train`` (task det) as
    benchmarks/bench_ssd_learn.py configures it (about 10 minutes on 2 idle CPU cores), reaches
    AP@0.5 >= 0.7 on val (VOC all-point AP, consider-0 boxes ignored)."""
    bench = _learnability_benchmark()
    report = bench.run(str(tmp_path / "run"), progress=False)
    print(f"AP@0.5 (voc) after {report['steps']} steps: {report['ap']:.3f}, "
          f"{report['wall_minutes']:.1f} min wall, "
          f"{report['cpu_minutes']:.1f} CPU min, load average {report['load_average_after'][0]:.1f}")
    assert report["ap"] >= bench.TARGET_AP
