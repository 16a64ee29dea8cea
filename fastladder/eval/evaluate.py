"""Evaluation over a dataset, as the ``fastladder eval`` commands run it (the commands only parse
options and print): the preprocessing of each item, the loop, the metrics.

Segmentation: the dataset with training's evaluation transforms feeds
:func:`fastladder.eval.evaluate_segmentation`.
Detection: :class:`DetectionEvalSet` resizes each image to the SSD's input size and normalizes it
(training's evaluation transforms);
:func:`evaluate_detector` maps the detections back to the pixels of the original image and scores
them against the dataset's ground truth there with :func:`fastladder.eval.average_precision`
(ignored boxes — MOT consider 0, VOC difficult — are its ignore regions).
"""
from typing import Dict, List, Sequence, Tuple

import torch

__all__ = ["DetectionEvalSet", "collate_detection_eval", "prepare_detection_input",
           "detect", "evaluate_detector"]


def prepare_detection_input(image: torch.Tensor, size: Sequence[int], mean: Sequence[float],
                            std: Sequence[float]) -> torch.Tensor:
    """uint8 [3, H, W] → normalized float [3, h, w] at the network's input size (h, w), as the SSD
    evaluation transforms of training do."""
    from fastladder.data.box_transforms import ssd_eval_transforms

    normalized, _ = ssd_eval_transforms(tuple(size), mean, std)(image, {"boxes": torch.zeros(0, 4)})
    return normalized


def detect(model, images: torch.Tensor, original_sizes: Sequence[Tuple[int, int]]):
    """Runs an SSD (eval mode) on a batch at its input size. Returns per image ``(boxes [n, 4] pixel
    xyxy of the original image (H, W), scores [n], labels [n])`` on the CPU."""
    output = model(images)
    results = []
    for (boxes, scores, labels), (height, width) in zip(output.to_list(), original_sizes):
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
        results.append(((boxes.float() * scale).cpu(), scores.float().cpu(), labels.cpu()))
    return results


class DetectionEvalSet:
    """Per dataset item: (normalized image at the input size, original (H, W), boxes [n, 4] pixel
    xyxy, labels [n], ignore [n] bool: VOC difficult or MOT consider 0)."""

    def __init__(self, dataset, size: Sequence[int], mean: Sequence[float], std: Sequence[float]):
        self.dataset, self.size, self.mean, self.std = dataset, tuple(size), mean, std

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, target = self.dataset[index]
        boxes = target["boxes"].to(torch.float32)
        ignore = target.get("ignore")
        ignore = torch.zeros(boxes.shape[0], dtype=torch.bool) if ignore is None else \
            torch.as_tensor(ignore, dtype=torch.bool).reshape(-1)
        labels = target.get("labels", torch.ones(boxes.shape[0], dtype=torch.int64))
        height, width = image.shape[-2:]
        return (prepare_detection_input(image, self.size, self.mean, self.std), (int(height), int(width)),
                boxes, labels.to(torch.int64), ignore)


def collate_detection_eval(samples):
    """Batches :class:`DetectionEvalSet` items: (images [N, 3, h, w], sizes, targets)."""
    return (torch.stack([s[0] for s in samples]), [s[1] for s in samples],
            [{"boxes": s[2], "labels": s[3], "ignore": s[4]} for s in samples])


def evaluate_detector(model, loader, *, device, methods: Sequence[str], iou_threshold: float = 0.5,
                      progress: bool = True) -> Dict:
    """Runs ``model`` (an SSD in eval mode) over ``loader`` (batches of :class:`DetectionEvalSet`,
    collated by :func:`collate_detection_eval`).

    Returns ``{"ap": {method: mean AP over the classes present}, "ap_per_class": {method: [AP of
    each class in "classes"]}, "classes": [labels present in detections or ground truth],
    "curves": {label: (precision, recall)} (the first method's matching), "images", "detections"}``.
    """
    from tqdm import tqdm

    from fastladder.eval.detection import average_precision, mean_ap, precision_recall

    detections: List[Dict] = []
    ground_truth: List[Dict] = []
    with torch.no_grad():
        for images, sizes, targets in tqdm(loader, desc="eval det", unit="batch", disable=not progress):
            for (boxes, scores, labels), target in zip(detect(model, images.to(device), sizes), targets):
                detections.append({"boxes": boxes, "scores": scores, "labels": labels})
                ground_truth.append(target)
    classes = sorted({int(v) for entry in detections + ground_truth for v in entry["labels"].tolist()})
    result = {"ap": {}, "ap_per_class": {}, "curves": {}, "classes": classes, "images": len(ground_truth),
              "detections": sum(int(d["boxes"].shape[0]) for d in detections)}
    for method in methods:
        per_class = average_precision(detections, ground_truth, iou_threshold, method)
        values = [float(per_class.get(label, float("nan"))) for label in classes]
        result["ap"][method] = mean_ap(values)
        result["ap_per_class"][method] = values
    for label in classes:
        precision, recall, _ = precision_recall(detections, ground_truth, iou_threshold, method=methods[0],
                                                label=label)
        result["curves"][label] = (precision, recall)
    return result
