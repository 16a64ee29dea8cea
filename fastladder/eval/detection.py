"""Detection Average Precision, as the official evaluators define it.

Four definitions (``method``), each the rule of its official tool:

``"voc07"``  Pascal VOC 2007 devkit, 11-point AP: mean over r in {0, 0.1, ..., 1} of the highest
             precision at recall >= r.
``"voc"``    Pascal VOC 2010+ devkit, all-point AP: area under the monotone precision envelope,
             summed at every recall change.
``"coco101"`` pycocotools' AP at one IoU threshold: monotone envelope sampled at the 101 recall
             points ``numpy.linspace(0, 1, 101)`` (first PR point with recall >= r, 0 beyond the
             last recall).
``"mot"``    MOTChallenge devkit (P. Dollar's bbGt evalRes / compRoc): at r in {0, 0.1, ..., 1}
             the precision of the first PR point with recall >= r (0 if none), no envelope; mean
             of the 11.

Matching (the greedy assignment of detections to ground truth, per image, best score first):

- voc, voc07: each detection takes the ground-truth box of highest IoU (the first on ties)
  among all boxes of its image, taken or not. IoU >= threshold: a true positive if that box is
  free (it is then taken), a false positive if it is already taken, and neither when the box is
  ignored ("difficult"). Otherwise a false positive.
- coco101, mot: each detection takes, among the free non-ignored boxes with IoU >= threshold,
  the one of highest IoU (the last on ties, as both tools' loops do); failing that, it may match
  an ignored box, and is then discarded (neither true nor false positive). An ignored box is a
  "crowd" region: its overlap with a detection is intersection / detection area (the detection
  may be any part of it) and it can absorb any number of detections. pycocotools does this for
  ``iscrowd`` boxes and bbGt (used by the MOT devkit) for ignore boxes. pycocotools clamps the
  threshold to 1 - 1e-10.

Ties in score keep the input order: images in order, detections of an image in their order
(stable sorts, as the devkits and pycocotools sort). Unlike pycocotools, no limit on detections
per image is applied (pycocotools keeps the best ``maxDets`` = 100): pass at most that many to
reproduce its numbers exactly.

Recall points: the devkits write 0:0.1:1 (MATLAB) or ``numpy.arange(0, 1.1, 0.1)``, whose values
can sit one ulp away from k / 10; here they are exactly k / 10, so recall 3/10 reaches the point
0.3. coco101 uses pycocotools' own ``numpy.linspace`` points.

Boxes are ``(x1, y1, x2, y2)`` with areas ``(x2 - x1) * (y2 - y1)`` (no "+1": a box converted
from VOC's 1-based inclusive corners to 0-based exclusive ones has the devkit's area).

Empty cases. Detections but no (non-ignored) ground truth in the whole set give what the
official tools give: coco101 NaN (pycocotools marks the class -1 and leaves it out of its
means; NaN plays that role: ``numpy.nanmean`` over classes reproduces COCO's mean), voc NaN (the
devkit's recall is 0/0), voc07 0 and mot 0 (no PR point reaches any recall level). Without
detections the AP is 0 for every method, except coco101 without ground truth (NaN, as above).
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["average_precision", "precision_recall", "plot_precision_recall", "mean_ap", "AP_METHODS"]

AP_METHODS = ("voc07", "voc", "coco101", "mot")

_TRUE_POSITIVE, _FALSE_POSITIVE, _IGNORED = 1, 0, -1
# pycocotools never lets the threshold reach 1 (a perfect overlap must still match at IoU 1).
_COCO_MAX_THRESHOLD = 1 - 1e-10


class _Image:
    """One image's detections and ground truth of one class as float64/bool numpy arrays."""
    __slots__ = ("det_boxes", "scores", "gt_boxes", "ignore")

    def __init__(self, det_boxes, scores, gt_boxes, ignore):
        self.det_boxes, self.scores, self.gt_boxes, self.ignore = det_boxes, scores, gt_boxes, ignore


def mean_ap(values: Sequence[float]) -> float:
    """The mean of the per-class APs that are defined (NaN for a class absent from both detections and
    ground truth is left out, as COCO does); NaN when none is."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")


def average_precision(detections: Sequence[Mapping[str, torch.Tensor]],
                      ground_truth: Sequence[Mapping[str, torch.Tensor]], iou_threshold: float = 0.5,
                      method: str = "voc") -> Union[float, Dict[int, float]]:
    """Average Precision of detections against ground truth over a set of images.

    Args:
        detections: per image a dict {"boxes": Tensor[N, 4] xyxy, "scores": Tensor[N],
            "labels": Tensor[N] integer (optional)}.
        ground_truth: per image (same order and length) a dict {"boxes": Tensor[M, 4] xyxy,
            "ignore": BoolTensor[M] (optional: difficult / not-to-be-considered objects),
            "labels": Tensor[M] integer (optional)}.
        iou_threshold: in (0, 1]; a detection matches at IoU >= threshold.
        method: "voc07", "voc", "coco101" or "mot" (see the module docstring for the exact rules).

    Returns:
        The AP (float) when no dict carries "labels"; otherwise {label: AP} for every label found
        in the detections or the ground truth (then every dict must carry "labels"). Empty cases
        as in the module docstring.
    """
    _check_method(method)
    threshold = _check_threshold(iou_threshold)
    labelled, per_label = _split_by_label(detections, ground_truth)
    results = {label: _average_precision(images, threshold, method) for label, images in per_label.items()}
    if labelled:
        return results
    return results[None]


def precision_recall(detections: Sequence[Mapping[str, torch.Tensor]],
                     ground_truth: Sequence[Mapping[str, torch.Tensor]], iou_threshold: float = 0.5, *,
                     method: str = "voc", label: Optional[int] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The raw precision-recall curve (no envelope), one point per counted detection.

    Args:
        detections, ground_truth, iou_threshold: as in :func:`average_precision`.
        method: which matching rule to use ("voc" and "voc07" share one, "coco101" and "mot" the other).
        label: the class to take when the dicts carry "labels" (required then, refused otherwise).

    Returns:
        (precision, recall, scores): Tensor[K] float64 each, by decreasing score, over the K
        detections that are true or false positives (ignored matches are left out). Recall is
        NaN when there is no non-ignored ground truth.
    """
    _check_method(method)
    threshold = _check_threshold(iou_threshold)
    labelled, per_label = _split_by_label(detections, ground_truth)
    if labelled and label is None:
        raise ValueError("the dicts carry 'labels': pass label= to choose the class of the curve")
    if not labelled and label is not None:
        raise ValueError(f"label={label!r} was given but no dict carries 'labels'")
    key = int(label) if labelled else None
    if key in per_label:
        images = per_label[key]
    else:  # a class absent from both sides: no detections and no ground truth
        images = []
    scores, states, num_positives = _match_all(images, threshold, method)
    precision, recall, scores = _curve(scores, states, num_positives)
    return torch.from_numpy(precision), torch.from_numpy(recall), torch.from_numpy(scores)


def plot_precision_recall(curves: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], path: str, *,
                          title: Optional[str] = None) -> str:
    """Draws precision against recall for each named curve into an image file (PNG by its suffix).

    Args:
        curves: {name: (precision Tensor[K], recall Tensor[K])}, e.g. from :func:`precision_recall`.
        path: the output file; its suffix picks the format (matplotlib).
        title: optional figure title.

    Returns:
        path.
    """
    # Object-oriented matplotlib with the Agg canvas: no pyplot global state, no GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    figure = Figure(figsize=(5.5, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, pair in curves.items():
        if len(pair) != 2:
            raise ValueError(f"curves[{name!r}] must be a (precision, recall) pair, got {len(pair)} items")
        precision = np.asarray(torch.as_tensor(pair[0]).detach().cpu(), dtype=np.float64).reshape(-1)
        recall = np.asarray(torch.as_tensor(pair[1]).detach().cpu(), dtype=np.float64).reshape(-1)
        if precision.shape != recall.shape:
            raise ValueError(f"curves[{name!r}]: precision and recall lengths differ: {precision.shape[0]} "
                             f"and {recall.shape[0]}")
        axes.plot(recall, precision, linewidth=2, label=str(name), drawstyle="steps-post")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------
# input checks and per-class split

def _check_method(method):
    if method not in AP_METHODS:
        raise ValueError(f"method must be one of {AP_METHODS}, got {method!r}")


def _check_threshold(iou_threshold):
    threshold = float(iou_threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    return threshold


def _as_numpy(value, name, dtype):
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}") from error
    return tensor.detach().cpu().numpy().astype(dtype, copy=False)


def _read_boxes(entry, name):
    if "boxes" not in entry:
        raise ValueError(f"{name} has no 'boxes' (keys: {sorted(entry)})")
    boxes = _as_numpy(entry["boxes"], f"{name}['boxes']", np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}['boxes'] must be [N, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{name}['boxes'] holds non-finite coordinates")
    return boxes


def _read_vector(entry, key, name, rows, dtype):
    values = _as_numpy(entry[key], f"{name}[{key!r}]", dtype).reshape(-1)
    if values.shape[0] != rows:
        raise ValueError(f"{name}[{key!r}] must have one entry per box ({rows}), got shape "
                         f"{tuple(np.shape(entry[key]))}")
    return values


def _read_labels(entry, name, rows):
    labels = entry["labels"]
    tensor = torch.as_tensor(labels)
    if tensor.numel() and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
        raise ValueError(f"{name}['labels'] must hold integer class ids, got dtype {tensor.dtype}")
    return _read_vector(entry, "labels", name, rows, np.int64)


def _split_by_label(detections, ground_truth) -> Tuple[bool, Dict[Optional[int], List[_Image]]]:
    """Checks the inputs and groups them by class: {label or None: [_Image per image]}."""
    if isinstance(detections, Mapping) or isinstance(ground_truth, Mapping):
        raise ValueError("detections and ground_truth must be sequences of per-image dicts, got a dict")
    if len(detections) != len(ground_truth):
        raise ValueError(f"detections and ground_truth must have one entry per image, got "
                         f"{len(detections)} and "
                         f"{len(ground_truth)}")
    has_labels = [("labels" in entry) for entry in list(detections) + list(ground_truth)]
    labelled = any(has_labels)
    if labelled and not all(has_labels):
        missing = has_labels.index(False)
        side, index = ("detections", missing) if missing < len(detections) else \
            ("ground_truth", missing - len(detections))
        raise ValueError(f"some dicts carry 'labels' and {side}[{index}] does not: give labels everywhere "
                         f"or nowhere")

    parsed = []
    for index, (det, gt) in enumerate(zip(detections, ground_truth)):
        det_name, gt_name = f"detections[{index}]", f"ground_truth[{index}]"
        for name, entry in ((det_name, det), (gt_name, gt)):
            if not isinstance(entry, Mapping):
                raise ValueError(f"{name} must be a dict, got {type(entry).__name__}")
        det_boxes = _read_boxes(det, det_name)
        if "scores" not in det:
            raise ValueError(f"{det_name} has no 'scores' (keys: {sorted(det)})")
        scores = _read_vector(det, "scores", det_name, det_boxes.shape[0], np.float64)
        if not np.isfinite(scores).all():
            raise ValueError(f"{det_name}['scores'] holds non-finite values")
        gt_boxes = _read_boxes(gt, gt_name)
        if "ignore" in gt and gt["ignore"] is not None:
            ignore_tensor = torch.as_tensor(gt["ignore"])
            if ignore_tensor.numel() and ignore_tensor.dtype != torch.bool:
                raise ValueError(f"{gt_name}['ignore'] must be a bool tensor, got dtype "
                                 f"{ignore_tensor.dtype}")
            ignore = _read_vector(gt, "ignore", gt_name, gt_boxes.shape[0], np.bool_)
        else:
            ignore = np.zeros(gt_boxes.shape[0], np.bool_)
        det_labels = _read_labels(det, det_name, det_boxes.shape[0]) if labelled else None
        gt_labels = _read_labels(gt, gt_name, gt_boxes.shape[0]) if labelled else None
        parsed.append((det_boxes, scores, det_labels, gt_boxes, ignore, gt_labels))

    if not labelled:
        return False, {None: [_Image(*item[:2], *item[3:5]) for item in parsed]}
    all_labels = set()
    for det_boxes, scores, det_labels, gt_boxes, ignore, gt_labels in parsed:
        all_labels.update(det_labels.tolist())
        all_labels.update(gt_labels.tolist())
    per_label = {}
    for label in sorted(all_labels):
        images = []
        for det_boxes, scores, det_labels, gt_boxes, ignore, gt_labels in parsed:
            det_keep, gt_keep = det_labels == label, gt_labels == label
            images.append(_Image(det_boxes[det_keep], scores[det_keep], gt_boxes[gt_keep], ignore[gt_keep]))
        per_label[int(label)] = images
    return True, per_label


# ---------------------------------------------------------------------------------------------
# matching

def _overlaps(det_boxes: np.ndarray, gt_boxes: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """[D, G] IoU; for crowd (ignored) columns intersection / detection area instead. 0 where undefined."""
    top_left = np.maximum(det_boxes[:, None, :2], gt_boxes[None, :, :2])
    bottom_right = np.minimum(det_boxes[:, None, 2:], gt_boxes[None, :, 2:])
    size = np.clip(bottom_right - top_left, 0.0, None)
    intersection = size[..., 0] * size[..., 1]
    det_area = np.prod(np.clip(det_boxes[:, 2:] - det_boxes[:, :2], 0.0, None), axis=1)
    gt_area = np.prod(np.clip(gt_boxes[:, 2:] - gt_boxes[:, :2], 0.0, None), axis=1)
    union = det_area[:, None] + gt_area[None, :] - intersection
    denominator = np.where(crowd[None, :], det_area[:, None], union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, intersection / np.where(denominator > 0, denominator, 1.0), 0.0)


def _match_voc(image: _Image, threshold: float) -> np.ndarray:
    """States (TP 1 / FP 0 / ignored -1) of the image's detections, in decreasing score order."""
    num_detections, num_gt = image.det_boxes.shape[0], image.gt_boxes.shape[0]
    if num_gt == 0:
        return np.full(num_detections, _FALSE_POSITIVE, np.int8)
    overlap = _overlaps(image.det_boxes, image.gt_boxes, np.zeros(num_gt, np.bool_))
    best_gt = overlap.argmax(axis=1)   # the first box of highest IoU, taken or not
    best_overlap = overlap[np.arange(num_detections), best_gt]
    states = np.full(num_detections, _FALSE_POSITIVE, np.int8)
    taken = np.zeros(num_gt, np.bool_)
    for d in np.flatnonzero(best_overlap >= threshold):
        g = best_gt[d]
        if image.ignore[g]:
            states[d] = _IGNORED
        elif not taken[g]:
            taken[g] = True
            states[d] = _TRUE_POSITIVE
    return states


def _match_crowd(image: _Image, threshold: float) -> np.ndarray:
    """States of the image's detections (decreasing score order) under pycocotools / bbGt matching."""
    num_detections = image.det_boxes.shape[0]
    states = np.full(num_detections, _FALSE_POSITIVE, np.int8)
    if image.gt_boxes.shape[0] == 0 or num_detections == 0:
        return states
    regular, crowd = image.gt_boxes[~image.ignore], image.gt_boxes[image.ignore]
    regular_overlap = _overlaps(image.det_boxes, regular, np.zeros(regular.shape[0], np.bool_))
    crowd_overlap = _overlaps(image.det_boxes, crowd, np.ones(crowd.shape[0], np.bool_))
    crowd_hit = (crowd_overlap >= threshold).any(axis=1)
    candidates = regular_overlap >= threshold
    # detections that reach no regular box cannot take one: decided without the greedy loop
    states[crowd_hit] = _IGNORED
    free = np.ones(regular.shape[0], np.bool_)
    for d in np.flatnonzero(candidates.any(axis=1)):
        available = candidates[d] & free
        if available.any():
            values = np.where(available, regular_overlap[d], -1.0)
            # the last box of highest overlap: both tools replace the best match on equal overlap
            g = values.shape[0] - 1 - int(np.argmax(values[::-1]))
            free[g] = False
            states[d] = _TRUE_POSITIVE
    return states


def _match_all(images: Sequence[_Image], threshold: float, method: str):
    """Scores and states of all detections (image-major, decreasing score inside an image) and the
    number of non-ignored ground-truth boxes."""
    if method == "coco101":
        threshold = min(threshold, _COCO_MAX_THRESHOLD)
    match = _match_voc if method in ("voc", "voc07") else _match_crowd
    all_scores, all_states, num_positives = [], [], 0
    for image in images:
        order = np.argsort(-image.scores, kind="stable")
        ordered = _Image(image.det_boxes[order], image.scores[order], image.gt_boxes, image.ignore)
        all_scores.append(ordered.scores)
        all_states.append(match(ordered, threshold))
        num_positives += int((~image.ignore).sum())
    if not all_scores:
        return np.zeros(0), np.zeros(0, np.int8), num_positives
    return np.concatenate(all_scores), np.concatenate(all_states), num_positives


def _curve(scores: np.ndarray, states: np.ndarray, num_positives: int):
    """(precision, recall, scores) over the counted detections by decreasing score (stable)."""
    order = np.argsort(-scores, kind="stable")
    scores, states = scores[order], states[order]
    counted = states != _IGNORED
    scores, states = scores[counted], states[counted]
    true_positives = np.cumsum(states == _TRUE_POSITIVE, dtype=np.float64)
    false_positives = np.cumsum(states == _FALSE_POSITIVE, dtype=np.float64)
    precision = true_positives / np.maximum(true_positives + false_positives, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = true_positives / num_positives if num_positives else np.full(scores.shape[0], np.nan)
    return precision, recall, scores


# ---------------------------------------------------------------------------------------------
# the four AP definitions

def _average_precision(images: Sequence[_Image], threshold: float, method: str) -> float:
    scores, states, num_positives = _match_all(images, threshold, method)
    precision, recall, _ = _curve(scores, states, num_positives)
    if num_positives == 0:
        if method == "coco101":
            return float("nan")
        if method == "voc":   # the devkit's 0/0 recall: NaN when there are detections, 0 otherwise
            return float("nan") if states.shape[0] else 0.0
        return 0.0
    if method == "voc07":
        levels = np.arange(11) / 10.0
        reached = recall[None, :] >= levels[:, None]                      # [11, K]
        best = np.where(reached, precision[None, :], 0.0).max(axis=1, initial=0.0)
        return float(best.mean())
    if method == "voc":
        recall_points = np.concatenate([[0.0], recall, [1.0]])
        envelope = np.concatenate([[0.0], precision, [0.0]])
        envelope = np.maximum.accumulate(envelope[::-1])[::-1]
        changes = np.flatnonzero(recall_points[1:] != recall_points[:-1])
        return float(np.sum((recall_points[changes + 1] - recall_points[changes]) * envelope[changes + 1]))
    if method == "coco101":
        levels = np.linspace(0.0, 1.00, 101, endpoint=True)   # pycocotools' p.recThrs
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        return _sample_first_reaching(recall, envelope, levels)
    # mot: the raw precision, no envelope
    return _sample_first_reaching(recall, precision, np.arange(11) / 10.0)


def _sample_first_reaching(recall: np.ndarray, precision: np.ndarray, levels: np.ndarray) -> float:
    """Mean over the levels of the precision at the first point whose recall >= level (0 if none)."""
    if recall.shape[0] == 0:
        return 0.0
    first = np.searchsorted(recall, levels, side="left")
    sampled = np.where(first < recall.shape[0], precision[np.minimum(first, recall.shape[0] - 1)], 0.0)
    return float(np.mean(sampled))
