"""`fastladder eval det` and `fastladder predict --task det` on a tiny SSD and tiny synthetic frames."""
import json

import pytest
import torch
from PIL import Image

from fastladder import cli
from fastladder.data.synthetic_detection import SyntheticPedestrians
from fastladder.eval.detection_commands import draw_detections, mot_rows
from fastladder.eval.evaluate import DetectionEvalSet, collate_detection_eval, evaluate_detector
from fastladder.models import create_model
from fastladder.ops.boxes import Detections

TINY_SSD = {"width": 0.0625, "extra_layers": [[256, 512, 3, 2, 1], [128, 256, 3, 2, 1]],
            "min_sizes": [12, 24, 40, 56], "max_sizes": [24, 40, 56, 64],
            "aspect_ratios": [[0.5, 0.33]] * 4, "flip": False, "steps": None, "image_size": [64, 64]}
TINY_DATA = {"num_sequences": 2, "frames_per_sequence": 5, "size": [64, 80], "progress": False}
COMMON = ["--device", "cpu", "--no-progress"]


def tiny_checkpoint(path):
    model = create_model("ssd300_vgg16", 2, **TINY_SSD)
    torch.save({"model": model.state_dict(), "model_name": "ssd300_vgg16", "model_kwargs": dict(TINY_SSD),
                "num_classes": 2, "step": 7}, path)
    return path


def test_eval_det_prints_ap_and_writes_curve_and_json(tmp_path, capsys):
    weights = tiny_checkpoint(tmp_path / "ssd.pt")
    SyntheticPedestrians(tmp_path / "data", "all", **TINY_DATA)  # eval reads a set, never generates one
    report = tmp_path / "out" / "result.json"
    assert cli.main(["eval", "det", "--weights", str(weights), "--dataset", "synthetic", "--root",
                     str(tmp_path / "data"), "--dataset-kwargs", json.dumps(TINY_DATA), "--workers", "0",
                     "--batch-size", "3", "--json", str(report), *COMMON]) == 0
    printed = capsys.readouterr().out
    assert "mean AP" in printed and "pedestrian" in printed
    result = json.loads(report.read_text())
    assert result["num_images"] == 2 and result["model"] == "ssd300_vgg16"
    assert set(result["ap"]) == {"voc07", "voc", "coco101", "mot"}
    assert all(0.0 <= value <= 1.0 for value in result["ap"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "ssd.pt"]  # no plot unless --plot
    plot = tmp_path / "curve.png"
    assert cli.main(["eval", "det", "--weights", str(weights), "--dataset", "synthetic", "--root",
                     str(tmp_path / "data"), "--dataset-kwargs", json.dumps(TINY_DATA), "--workers", "0",
                     "--split", "train", "--methods", "mot", "--iou", "0.3", "--plot", str(plot),
                     *COMMON]) == 0
    assert plot.is_file() and "mot" in capsys.readouterr().out


class _Oracle(torch.nn.Module):
    """Returns the dataset's ground truth (image-relative) as detections, image after image."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset, self.next = dataset, 0

    def forward(self, images):
        rows = []
        for _ in range(images.shape[0]):
            image, target = self.dataset[self.next]
            self.next += 1
            height, width = image.shape[-2:]
            rows.append(target["boxes"] / torch.tensor([width, height, width, height]))
        most = max(1, max(r.shape[0] for r in rows))
        boxes = torch.zeros(len(rows), most, 4)
        scores = torch.zeros(len(rows), most)
        labels = torch.full((len(rows), most), -1)
        for b, r in enumerate(rows):
            boxes[b, :len(r)] = r
            scores[b, :len(r)] = torch.linspace(0.9, 0.5, len(r))
            labels[b, :len(r)] = 1
        return Detections(boxes, scores, labels, torch.tensor([len(r) for r in rows]))


def test_detections_map_back_to_original_pixels(tmp_path):
    # Ground truth given back as image-relative boxes is found exactly (AP 1 by every definition):
    # the relative -> original pixel mapping (and the evaluation at another input size) is right.
    dataset = SyntheticPedestrians(tmp_path, "all", **TINY_DATA)
    boxes = torch.cat([dataset[i][1]["boxes"] for i in range(len(dataset))])
    assert (boxes[:, 2] <= 80).all()   # boxes inside the image: a clipped detection still matches exactly
    loader = torch.utils.data.DataLoader(DetectionEvalSet(dataset, (64, 64), [0.0] * 3, [1.0] * 3),
                                         batch_size=4, collate_fn=collate_detection_eval)
    result = evaluate_detector(_Oracle(dataset), loader, device=torch.device("cpu"),
                               methods=["voc", "voc07", "coco101", "mot"], progress=False)
    assert result["images"] == len(dataset) and result["classes"] == [1]
    assert result["ap"] == {"voc": 1.0, "voc07": 1.0, "coco101": 1.0, "mot": 1.0}


def test_mot_rows_are_one_based_left_top_width_height():
    rows = mot_rows(7, torch.tensor([[0.0, 10.0, 20.0, 50.5]]), torch.tensor([0.875]))
    assert rows == ["7,-1,1.00,11.00,20.00,40.50,0.8750,-1,-1,-1"]
    assert mot_rows(1, torch.zeros(0, 4), torch.zeros(0)) == []


def test_draw_detections_outlines_boxes(generator):
    image = torch.zeros(3, 40, 50, dtype=torch.uint8)
    drawn = draw_detections(image, torch.tensor([[5.0, 20.0, 30.0, 38.0]]), torch.tensor([0.9]),
                            torch.tensor([1]))
    assert drawn.shape == (40, 50, 3) and drawn.dtype == torch.uint8
    assert drawn[37, 15].tolist() == [255, 40, 40] and drawn[30, 15].tolist() == [0, 0, 0]  # edge, inside
    assert drawn[2, 45].tolist() == [0, 0, 0]                                                  # elsewhere
    # boxes thinner than a pixel (detections clipped at the border) are drawn, not an error
    thin = draw_detections(image, torch.tensor([[49.6, 3.0, 50.0, 9.0], [10.0, 39.8, 20.0, 39.9]]),
                           torch.tensor([0.5, 0.4]), torch.tensor([1, 1]))
    assert thin.shape == (40, 50, 3)


def test_predict_det_writes_drawings_json_and_mot_files(tmp_path, generator, capsys):
    weights = tiny_checkpoint(tmp_path / "ssd.pt")
    frames = tmp_path / "in" / "SEQ-A" / "img1"
    frames.mkdir(parents=True)
    for frame in (1, 2, 3):
        array = torch.randint(0, 256, (48, 72, 3), dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(array).save(frames / f"{frame:06d}.png")
    out = tmp_path / "out"
    assert cli.main(["predict", "--task", "det", "--weights", str(weights), str(tmp_path / "in"), "--out",
                     str(out), "--score-thresh", "0", *COMMON]) == 0
    for frame in (1, 2, 3):
        with Image.open(out / "SEQ-A" / "img1" / f"{frame:06d}_det.png") as picture:
            assert picture.size == (72, 48)
    records = json.loads((out / "detections.json").read_text())["images"]
    assert [r["frame"] for r in records] == [1, 2, 3] and {r["sequence"] for r in records} == {"SEQ-A"}
    rows = [line.split(",") for line in (out / "SEQ-A.txt").read_text().splitlines()]
    # an untrained SSD is unsure everywhere: with no score threshold every image has detections
    assert len(rows) == sum(len(r["scores"]) for r in records) > 0
    assert all(len(row) == 10 and row[1] == "-1" and row[7:] == ["-1"] * 3 for row in rows)
    first = records[0]
    x1, y1, x2, y2 = first["boxes"][0]
    left, top, width, height = (float(v) for v in rows[0][2:6])
    assert rows[0][0] == "1"
    assert left == pytest.approx(x1 + 1, abs=0.01) and top == pytest.approx(y1 + 1, abs=0.01)
    assert width == pytest.approx(x2 - x1, abs=0.02) and height == pytest.approx(y2 - y1, abs=0.02)
    # in the original image's pixels (a box clipped at the border may be empty)
    assert 0 <= x1 <= x2 <= 72 and 0 <= y1 <= y2 <= 48

    assert cli.main(["predict", "--task", "det", "--weights", str(weights), str(tmp_path / "in"), "--out",
                     str(out), "--flip", *COMMON]) == 2
    assert "--scales and --flip" in capsys.readouterr().err
    seg = create_model("ladder_densenet121", 3, growth_rate=4, block_config=[1, 1, 1, 2], num_init_features=8,
                       context_channels=16, upsample_channels=8)
    torch.save({"model": seg.state_dict(), "model_name": "ladder_densenet121", "num_classes": 3,
                "model_kwargs": dict(growth_rate=4, block_config=[1, 1, 1, 2], num_init_features=8,
                                     context_channels=16, upsample_channels=8)}, tmp_path / "seg.pt")
    assert cli.main(["predict", "--task", "det", "--weights", str(tmp_path / "seg.pt"), str(tmp_path / "in"),
                     "--out", str(out), *COMMON]) == 2
    assert "holds a seg model" in capsys.readouterr().err
