"""Detection AP against straightforward loop implementations of the devkits' rules and pycocotools."""
import math

import numpy as np
import pytest
import torch

from fastladder.eval.detection import average_precision, plot_precision_recall, precision_recall


# ---------------------------------------------------------------------------------------------
# random sets with score ties, duplicate boxes and ignore flags

def random_set(generator, num_images=12, *, with_ignore=True, num_labels=None):
    detections, ground_truth = [], []
    for _ in range(num_images):
        num_gt = int(torch.randint(0, 7, (), generator=generator))
        corner = torch.rand(num_gt, 2, generator=generator) * 80
        size = torch.rand(num_gt, 2, generator=generator) * 40 + 5
        gt_boxes = torch.cat([corner, corner + size], 1)
        if num_gt >= 2 and torch.rand((), generator=generator) < 0.3:
            gt_boxes[1] = gt_boxes[0]   # identical boxes: IoU ties between ground-truth boxes
        ignore = torch.rand(num_gt, generator=generator) < (0.25 if with_ignore else 0.0)
        # detections: jittered copies of the ground truth (some twice) plus clutter
        copies = gt_boxes.repeat(2, 1)[torch.rand(2 * num_gt, generator=generator) < 0.7]
        spread = torch.rand((), generator=generator) * 12
        jitter = (torch.rand(copies.shape, generator=generator) - 0.5) * spread
        num_clutter = int(torch.randint(0, 5, (), generator=generator))
        clutter_corner = torch.rand(num_clutter, 2, generator=generator) * 80
        clutter_size = torch.rand(num_clutter, 2, generator=generator) * 40 + 2
        clutter = torch.cat([clutter_corner, clutter_corner + clutter_size], 1)
        det_boxes = torch.cat([copies + jitter, clutter])
        det_boxes = torch.cat([det_boxes[:, :2], torch.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 0.5)], 1)
        # scores from a few levels: many ties, across and within images
        scores = torch.randint(0, 6, (det_boxes.shape[0],), generator=generator).double() / 5
        det = {"boxes": det_boxes.double(), "scores": scores}
        gt = {"boxes": gt_boxes.double(), "ignore": ignore}
        if num_labels:
            det["labels"] = torch.randint(1, num_labels + 1, (det_boxes.shape[0],), generator=generator)
            gt["labels"] = torch.randint(1, num_labels + 1, (num_gt,), generator=generator)
        detections.append(det)
        ground_truth.append(gt)
    return detections, ground_truth


def pair_overlap(box, other, crowd=False):
    width = min(box[2], other[2]) - max(box[0], other[0])
    height = min(box[3], other[3]) - max(box[1], other[1])
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    area_box = (box[2] - box[0]) * (box[3] - box[1])
    area_other = (other[2] - other[0]) * (other[3] - other[1])
    denominator = area_box if crowd else area_box + area_other - intersection
    return intersection / denominator


def flatten(detections):
    """All detections as (score, image, box) in the devkit's order: score-descending, stable."""
    rows = []
    for image, det in enumerate(detections):
        for box, score in zip(det["boxes"].tolist(), det["scores"].tolist()):
            rows.append((score, image, box))
    return sorted(rows, key=lambda row: -row[0])   # Python's sort is stable


# ---------------------------------------------------------------------------------------------
# the devkits' rules written as plainly as possible

def voc_reference(detections, ground_truth, threshold, eleven_point):
    taken = [[False] * len(gt["boxes"]) for gt in ground_truth]
    num_positives = sum(int((~gt["ignore"]).sum()) for gt in ground_truth)
    true_positives, false_positives = [], []
    for score, image, box in flatten(detections):
        gt_boxes = ground_truth[image]["boxes"].tolist()
        best, best_index = -math.inf, None
        for index, gt_box in enumerate(gt_boxes):
            overlap = pair_overlap(box, gt_box)
            if overlap > best:
                best, best_index = overlap, index
        if best_index is not None and best >= threshold:
            if ground_truth[image]["ignore"][best_index]:
                true_positives.append(0)
                false_positives.append(0)
            elif not taken[image][best_index]:
                taken[image][best_index] = True
                true_positives.append(1)
                false_positives.append(0)
            else:
                true_positives.append(0)
                false_positives.append(1)
        else:
            true_positives.append(0)
            false_positives.append(1)
    tp = np.cumsum(true_positives)
    fp = np.cumsum(false_positives)
    recall = tp / num_positives
    with np.errstate(invalid="ignore"):
        precision = tp / (tp + fp)        # 0/0 where the first detections are ignored: NaN, skipped below
    if eleven_point:
        ap = 0.0
        for k in range(11):
            reached = [p for p, r in zip(precision, recall) if r >= k / 10 and not math.isnan(p)]
            ap += (max(reached) if reached else 0.0) / 11
        return ap
    points_recall = [0.0] + list(recall) + [1.0]
    points_precision = [0.0] + [0.0 if math.isnan(p) else p for p in precision] + [0.0]
    for i in range(len(points_precision) - 2, -1, -1):
        points_precision[i] = max(points_precision[i], points_precision[i + 1])
    ap = 0.0
    for i in range(1, len(points_recall)):
        if points_recall[i] != points_recall[i - 1]:
            ap += (points_recall[i] - points_recall[i - 1]) * points_precision[i]
    return ap


def bbgt_reference(detections, ground_truth, threshold):
    """MOT devkit: bbGt evalRes matching (ignore boxes absorb detections) and compRoc's 11 points."""
    counted = []   # (score, is true positive) for detections that are not ignored
    for det, gt in zip(detections, ground_truth):
        order = sorted(range(len(det["scores"])), key=lambda i: -float(det["scores"][i]))
        gt_order = sorted(range(len(gt["boxes"])), key=lambda i: bool(gt["ignore"][i]))
        state = [0 if not gt["ignore"][g] else -1 for g in gt_order]   # 0 free, 1 matched, -1 ignore
        for d in order:
            box = det["boxes"][d].tolist()
            best, best_gt, best_kind = threshold, None, 0
            for position, g in enumerate(gt_order):
                kind = state[position]
                if kind == 1:
                    continue
                if best_kind != 0 and kind == -1:
                    break
                overlap = pair_overlap(box, gt["boxes"][g].tolist(), crowd=(kind == -1))
                if overlap < best:
                    continue
                best, best_gt, best_kind = overlap, position, (1 if kind == 0 else -1)
            if best_kind == 1:
                state[best_gt] = 1
                counted.append((float(det["scores"][d]), 1))
            elif best_kind == 0:
                counted.append((float(det["scores"][d]), 0))
    counted.sort(key=lambda row: -row[0])
    num_positives = sum(int((~gt["ignore"]).sum()) for gt in ground_truth)
    tp = np.cumsum([row[1] for row in counted])
    fp = np.cumsum([1 - row[1] for row in counted])
    recall, precision = tp / num_positives, tp / (tp + fp)
    levels = []
    for k in range(11):
        reaching = [p for p, r in zip(precision, recall) if r >= k / 10]
        levels.append(reaching[0] if reaching else 0.0)
    return float(np.mean(levels))


def pycocotools_ap(detections, ground_truth, threshold):
    COCO = pytest.importorskip("pycocotools.coco").COCO
    COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval
    images, annotations, results = [], [], []
    for image_id, (det, gt) in enumerate(zip(detections, ground_truth), start=1):
        images.append({"id": image_id, "width": 200, "height": 200})
        for box, crowd in zip(gt["boxes"].tolist(), gt["ignore"].tolist()):
            width, height = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [box[0], box[1], width, height], "area": width * height,
                                "iscrowd": int(crowd)})
        for box, score in zip(det["boxes"].tolist(), det["scores"].tolist()):
            results.append({"image_id": image_id, "category_id": 1, "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluator.params.iouThrs = np.array([threshold])
    evaluator.params.areaRng = [[0, 1e10]]
    evaluator.params.areaRngLbl = ["all"]
    evaluator.params.maxDets = [10000]
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, 0, 0, -1]
    return float(np.mean(precision)) if (precision > -1).any() else float("nan")


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["voc07", "voc"])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_voc_matches_loop_reference(generator, method, threshold):
    for _ in range(5):
        detections, ground_truth = random_set(generator)
        expected = voc_reference(detections, ground_truth, threshold, eleven_point=(method == "voc07"))
        ours = average_precision(detections, ground_truth, threshold, method)
        assert ours == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("threshold", [0.5, 0.75])
def test_mot_matches_bbgt_rule(generator, threshold):
    for _ in range(5):
        detections, ground_truth = random_set(generator)
        expected = bbgt_reference(detections, ground_truth, threshold)
        ours = average_precision(detections, ground_truth, threshold, "mot")
        assert ours == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_coco101_matches_pycocotools_with_crowd_ignore(generator, threshold):
    checked = 0
    while checked < 4:
        detections, ground_truth = random_set(generator)
        if sum(len(det["scores"]) for det in detections) == 0:
            continue   # pycocotools' loadRes cannot take an empty result list
        expected = pycocotools_ap(detections, ground_truth, threshold)
        ours = average_precision(detections, ground_truth, threshold, "coco101")
        if math.isnan(expected):
            assert math.isnan(ours)
        else:
            assert ours == pytest.approx(expected, abs=1e-6)
        checked += 1


def test_voc_difficult_is_neither_true_nor_false_positive():
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
           "ignore": torch.tensor([False, True])}]
    hit_difficult = [{"boxes": torch.tensor([[20.0, 20, 30, 30], [0, 0, 10, 10]]),
                      "scores": torch.tensor([0.9, 0.8])}]
    # the difficult hit at the top does not lower the precision of the true positive after it
    assert average_precision(hit_difficult, gt, method="voc") == pytest.approx(1.0)
    precision, recall, scores = precision_recall(hit_difficult, gt)
    assert precision.tolist() == [1.0] and recall.tolist() == [1.0]
    assert scores.tolist() == pytest.approx([0.8])


def test_crowd_ignore_absorbs_many_detections_and_uses_detection_area():
    # a large ignore region and two detections inside it: IoU with it is small, overlap / detection area is 1
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 0, 150, 100]]),
           "ignore": torch.tensor([False, True])}]
    det = [{"boxes": torch.tensor([[60.0, 10, 70, 30], [100, 50, 110, 70], [0, 0, 10, 10]]),
            "scores": torch.tensor([0.9, 0.8, 0.7])}]
    for method in ("coco101", "mot"):
        assert average_precision(det, gt, method=method) == pytest.approx(1.0)
    # under VOC the same detections are plain false positives (IoU with the region is tiny)
    assert average_precision(det, gt, method="voc") == pytest.approx(1 / 3)


def test_multi_class_returns_one_ap_per_label(generator):
    detections, ground_truth = random_set(generator, num_labels=3)
    detections.append({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "scores": torch.tensor([0.5]),
                       "labels": torch.tensor([7])})   # a class with detections only
    ground_truth.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    result = average_precision(detections, ground_truth, method="voc07")
    assert isinstance(result, dict)
    labels = set()
    for entry in detections + ground_truth:
        labels.update(entry["labels"].tolist())
    assert set(result) == labels

    def only(entries, label):
        return [{key: tensor[entry["labels"] == label] for key, tensor in entry.items() if key != "labels"}
                for entry in entries]

    for label, ap in result.items():
        expected = average_precision(only(detections, label), only(ground_truth, label), method="voc07")
        assert ap == pytest.approx(expected, abs=1e-12)
    assert result[7] == 0.0   # voc07 without ground truth: no recall level is reached


def test_empty_cases():
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10]])}]
    no_det = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}]
    for method in ("voc07", "voc", "coco101", "mot"):
        assert average_precision(no_det, gt, method=method) == 0.0
    no_gt = [{"boxes": torch.zeros(0, 4)}]
    det = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.5])}]
    assert math.isnan(average_precision(det, no_gt, method="coco101"))
    assert math.isnan(average_precision(det, no_gt, method="voc"))
    assert average_precision(det, no_gt, method="voc07") == 0.0
    assert average_precision(det, no_gt, method="mot") == 0.0
    assert average_precision([], [], method="voc") == 0.0
    # only ignored ground truth counts as none
    ignored_gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "ignore": torch.tensor([True])}]
    assert math.isnan(average_precision(det, ignored_gt, method="coco101"))
    # perfect detection
    assert average_precision(det, gt, method="coco101") == pytest.approx(1.0)


def test_bad_input_names_the_entry():
    gt = [{"boxes": torch.zeros(1, 4)}]
    with pytest.raises(ValueError, match="one entry per image"):
        average_precision([], gt)
    with pytest.raises(ValueError, match=r"detections\[0\].*scores"):
        average_precision([{"boxes": torch.zeros(1, 4)}], gt)
    with pytest.raises(ValueError, match=r"detections\[0\]\['boxes'\].*\(2, 3\)"):
        average_precision([{"boxes": torch.zeros(2, 3), "scores": torch.zeros(2)}], gt)
    with pytest.raises(ValueError, match=r"ground_truth\[0\]\['ignore'\]"):
        average_precision([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}],
                          [{"boxes": torch.zeros(1, 4), "ignore": torch.zeros(2, dtype=torch.bool)}])
    with pytest.raises(ValueError, match=r"ground_truth\[0\] does not"):
        labelled = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
        average_precision([labelled], gt)
    with pytest.raises(ValueError, match="method"):
        average_precision([], [], method="coco")
    with pytest.raises(ValueError, match="iou_threshold"):
        average_precision([], [], iou_threshold=0.0)


def test_precision_recall_curve_and_plot(tmp_path, generator):
    detections, ground_truth = random_set(generator, num_images=20, with_ignore=False)
    precision, recall, scores = precision_recall(detections, ground_truth)
    assert precision.shape == recall.shape == scores.shape
    assert (scores[:-1] >= scores[1:]).all() and (recall[:-1] <= recall[1:]).all()
    num_positives = sum(len(gt["boxes"]) for gt in ground_truth)
    assert torch.allclose(recall * num_positives, (precision * torch.arange(1, len(precision) + 1)).round())
    loose = precision_recall(detections, ground_truth, 0.1)
    curves = {"IoU 0.5": (precision, recall), "IoU 0.1": loose[:2]}
    path = plot_precision_recall(curves, str(tmp_path / "pr.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    assert Image.open(path).size[0] > 100
