"""fastladder's segmentation metrics and predictions against the official cityscapesScripts evaluation.

The official pixel-level evaluation (cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling)
reads label-id PNGs. It is driven here through a copy of its module-level ``args`` object, with
every path (the JSON export included) under tmp_path, so nothing is written elsewhere.
"""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from fastladder import cli
from fastladder.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_LABELS, cityscapes_label_to_train_id
from fastladder.eval._images import read_image, save_png
from fastladder.eval.inference import evaluate_segmentation, normalize_image
from fastladder.eval.segmentation import confusion_matrix, mean_iou
from fastladder.models import create_model

EVALUATED = [label for label in CITYSCAPES_LABELS if label.train_id != 255]
IGNORED_IDS = [label.id for label in CITYSCAPES_LABELS if label.train_id == 255]
MEAN, STD = [75.2, 85.0, 75.1], [46.9, 47.6, 46.5]


@pytest.fixture
def official(tmp_path, monkeypatch):
    """The official evaluation module and a fresh copy of its settings, all paths under tmp_path."""
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    monkeypatch.delenv("CITYSCAPES_RESULTS", raising=False)
    monkeypatch.delenv("CITYSCAPES_EXPORT_DIR", raising=False)
    module = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    args = copy.copy(module.args)
    args.cityscapesPath = str(tmp_path)
    args.exportFile = str(tmp_path / "evaluationResults" / "resultPixelLevelSemanticLabeling.json")
    args.groundTruthSearch = str(tmp_path / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")
    args.predictionPath = str(tmp_path / "results")
    args.predictionWalk = None
    args.evalInstLevelScore = False  # the instance-weighted iIoU needs *_instanceIds.png; not compared here
    args.evalPixelAccuracy = False
    args.JSONOutput = True
    args.quiet = True
    args.colorized, args.bold, args.nocol = False, "", ""
    return module, args


def run_official(module, args):
    """The official result dict, each ground truth paired with its prediction by the official search."""
    ground_truth = sorted(Path(args.cityscapesPath).glob("gtFine/val/*/*_gtFine_labelIds.png"))
    predictions = [module.getPrediction(args, str(gt)) for gt in ground_truth]
    result = module.evaluateImgLists([str(p) for p in predictions], [str(gt) for gt in ground_truth], args)
    exported = json.loads(Path(args.exportFile).read_text())
    assert exported["averageScoreClasses"] == pytest.approx(result["averageScoreClasses"], nan_ok=True)
    return result


def assert_same_scores(official_result, ours):
    for label in EVALUATED:
        expected = official_result["classScores"][label.name]
        value = ours["iou"][label.train_id].item()
        if math.isnan(expected):
            assert math.isnan(value), label.name
        else:
            assert value == pytest.approx(expected, abs=1e-6), label.name
    assert ours["miou"] == pytest.approx(official_result["averageScoreClasses"], abs=1e-6)


def test_mean_iou_matches_the_official_pixel_evaluation(official, tmp_path, generator):
    module, args = official
    evaluated_ids = torch.tensor([label.id for label in EVALUATED])
    # train (31) and motorcycle (32): nowhere; rider (25): only in ground truth; bus (28): only predicted
    in_truth = torch.tensor([i for i in evaluated_ids.tolist() if i not in (31, 32, 28)] + IGNORED_IDS)
    in_prediction = torch.tensor([i for i in evaluated_ids.tolist() if i not in (31, 32, 25)])
    ours = torch.zeros(19, 19, dtype=torch.int64)
    for index, (h, w) in enumerate([(40, 56), (33, 47), (48, 32)]):
        city = ("aachen", "bochum")[index % 2]
        stem = f"{city}_{index:06d}_000019"
        truth = in_truth[torch.randint(0, len(in_truth), (h, w), generator=generator)]
        guess = in_prediction[torch.randint(0, len(in_prediction), (h, w), generator=generator)]
        # mostly right where the truth is evaluated, so IoUs spread over (0, 1)
        keep = (torch.rand(h, w, generator=generator) < 0.6) & torch.isin(truth, in_prediction)
        prediction = torch.where(keep, truth, guess)
        save_png(truth.to(torch.uint8), tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png")
        save_png(prediction.to(torch.uint8), tmp_path / "results" / f"{stem}_prediction.png")
        to_train_id = cityscapes_label_to_train_id
        ours += confusion_matrix(to_train_id(prediction), to_train_id(truth), 19)
    result = mean_iou(ours)
    assert math.isnan(result["iou"][CITYSCAPES_CLASSES.index("train")])
    assert result["iou"][CITYSCAPES_CLASSES.index("rider")] == 0.0
    assert result["iou"][CITYSCAPES_CLASSES.index("bus")] == 0.0
    assert_same_scores(run_official(module, args), result)


def write_cityscapes(root, generator, sizes=((64, 80), (72, 64), (64, 64))):
    for index, (h, w) in enumerate(sizes):
        city = ("aachen", "bochum")[index % 2]
        stem = f"{city}_{index:06d}_000019"
        image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator)
        save_png(image, root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
        ids = torch.tensor([label.id for label in EVALUATED] + IGNORED_IDS[:6])
        save_png(ids[torch.randint(0, len(ids), (h, w), generator=generator)].to(torch.uint8),
                 root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png")


class LabelledImages:
    """(normalized image, train-id label) pairs of the layout above."""

    def __init__(self, root):
        self.images = sorted(root.glob("leftImg8bit/val/*/*_leftImg8bit.png"))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        path = self.images[index]
        gt = path.parents[3] / "gtFine" / "val" / path.parent.name / path.name.replace(
            "leftImg8bit.png", "gtFine_labelIds.png")
        with Image.open(gt) as png:
            label = cityscapes_label_to_train_id(torch.from_numpy(np.asarray(png).copy()))
        return normalize_image(read_image(path), MEAN, STD), label


def test_predict_submission_pngs_score_as_evaluate_segmentation(official, tmp_path, generator, seed):
    """`predict --outputs labelIds` writes a folder the official evaluation accepts as is; its scores
    equal those of evaluate_segmentation on the same images."""
    module, args = official
    write_cityscapes(tmp_path, generator)
    model_kwargs = dict(growth_rate=4, block_config=[1, 1, 1, 2], num_init_features=8, context_channels=16,
                        upsample_channels=8)
    model = create_model("ladder_densenet121", 19, **model_kwargs).eval()
    with torch.no_grad():
        for module_ in model.modules():
            if isinstance(module_, nn.Conv2d) and module_.bias is not None:
                module_.bias.uniform_(-1, 1)  # predictions spread over several classes
    torch.save(dict(model=model.state_dict(), model_name="ladder_densenet121", model_kwargs=model_kwargs,
                    num_classes=19), tmp_path / "ckpt.pt")
    assert cli.main(["predict", "--weights", str(tmp_path / "ckpt.pt"), str(tmp_path / "leftImg8bit" / "val"),
                     "--out", str(tmp_path / "results"), "--outputs", "labelIds", "--scales", "1", "1.5",
                     "--device", "cpu", "--no-progress", "--mean", *map(str, MEAN),
                     "--std", *map(str, STD)]) == 0
    official_result = run_official(module, args)
    ours = evaluate_segmentation(model, LabelledImages(tmp_path), 19, scales=(1, 1.5), progress=False)
    assert_same_scores(official_result, ours)
    assert sum(not math.isnan(v) for v in official_result["classScores"].values()) > 3
