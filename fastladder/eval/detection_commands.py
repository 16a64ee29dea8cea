"""Commands ``fastladder eval det`` and ``fastladder predict --task det`` (SSD detection).

    fastladder eval det --model ssd300_vgg16 --weights runs/ssd/best.pt --dataset mot15 --root MOT15 \\
        [--split val] [--methods voc mot] [--iou 0.5] [--plot pr.png] [--json result.json]
    fastladder predict --task det --weights runs/ssd/best.pt FRAMES_OR_FOLDERS_OR_VIDEO... --out DIR \\
        [--score-thresh 0.3]

Images are resized to the model's input size (``--image-size``, default the one it was trained
at) and normalised with the ImageNet mean and std on the 0–255 scale (``--mean``, ``--std``);
detections are mapped back to the pixels of the original image. Evaluation compares them with the
dataset's ground truth in those pixels; ignored boxes (MOT consider 0, VOC difficult) are the
AP's ignore regions.

``predict`` writes, per image, ``NAME_det.png`` (the image with its boxes and scores drawn), and
for all images ``detections.json`` (0-based pixel ``(x1, y1, x2, y2)`` boxes, scores, labels) and
one MOTChallenge detection file per sequence, ``SEQUENCE.txt``, with rows
``frame,-1,left,top,width,height,score,-1,-1,-1`` in 1-based pixel coordinates (left = x1 + 1).
The sequence of an image is the folder it was found in (relative to the input folder; its last
``img1`` component dropped, as in the MOT layout) or the video's name; its frame number is the
file name's number (``000042.png`` → 42) or, failing that, its 1-based position in the sequence.
"""
import argparse
import json
import math
import os
import re
from typing import Dict, List, Sequence, Tuple

__all__ = ["add_eval_det", "add_predict_det_arguments", "cmd_eval_det", "cmd_predict_det", "DATASETS",
           "mot_rows", "draw_detections"]

DATASETS = ("mot15", "voc", "synthetic")


def add_eval_det(eval_tasks, add_model_arguments):
    """Adds ``det`` to the ``fastladder eval`` group (``eval_tasks``: its sub-parsers action)."""
    from fastladder.eval.detection import AP_METHODS

    det = eval_tasks.add_parser(
        "det", help="detection: Average Precision (VOC, VOC07, COCO 101-point, MOT definitions), PR curve",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(det)
    _add_det_model_arguments(det)
    det.add_argument("--dataset", choices=DATASETS, default="mot15")
    det.add_argument("--root", default=None, help="the dataset's root folder (its official layout)")
    det.add_argument("--split", default="val", help="mot15 / synthetic: train, val or all; voc: an image set")
    det.add_argument("--year", default="2007", help="voc: the VOC year (default 2007)")
    det.add_argument("--dataset-kwargs", type=json.loads, default=None, metavar="JSON",
                     help="extra dataset arguments as JSON (e.g. '{\"val_fraction\": 0.2}')")
    det.add_argument("--methods", nargs="+", choices=AP_METHODS, default=list(AP_METHODS),
                     help="AP definitions to report (default: all)")
    det.add_argument("--iou", type=float, default=0.5, help="IoU of a true positive (default 0.5)")
    det.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    det.add_argument("--batch-size", type=int, default=8)
    det.add_argument("--workers", type=int, default=2, help="data loading processes (0: in this process)")
    det.add_argument("--plot", default=None, metavar="PNG",
                     help="the precision-recall curve (default: pr_<dataset>_<split>.png next to --weights)")
    det.add_argument("--json", default=None, help="also write the results to this JSON file")
    det.add_argument("--no-progress", action="store_true", help="no progress bar")
    det.set_defaults(func=cmd_eval_det)


def _add_det_model_arguments(parser):
    parser.add_argument("--image-size", type=int, nargs="+", default=None, metavar="SIDE",
                        help="network input: SIDE or H W (default: the model's image_size)")


def add_predict_det_arguments(parser):
    """The detection options of ``fastladder predict`` (used with ``--task det``)."""
    group = parser.add_argument_group("detection (--task det)")
    group.add_argument("--image-size", type=int, nargs="+", default=None, metavar="SIDE",
                       help="network input: SIDE or H W (default: the model's image_size)")
    group.add_argument("--score-thresh", type=float, default=0.3,
                       help="keep detections scoring at least this (default 0.3; the AP uses all)")
    group.add_argument("--class-names", nargs="+", default=None,
                       help="names of classes 1, 2, … for the drawings and the JSON (default: numbers)")


# --- shared pieces --------------------------------------------------------------------------------

def _normalization(args) -> Tuple[List[float], List[float]]:
    from fastladder.data.box_transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = list(IMAGENET_MEAN) if args.mean is None else args.mean
    std = list(IMAGENET_STD) if args.std is None else args.std
    return [float(v) for v in mean], [float(v) for v in std]


def _input_size(args, model) -> Tuple[int, int]:
    size = args.image_size
    if size is None:
        return tuple(int(v) for v in model.image_size)
    if len(size) not in (1, 2) or min(size) <= 0:
        raise ValueError(f"--image-size must be SIDE or H W with positive sizes, got {size}")
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _check_detector(model, args):
    for attribute in ("image_size", "priors_for"):
        if not hasattr(model, attribute):
            raise ValueError(f"--weights {args.weights}: the model ({type(model).__name__}) is not an SSD "
                             f"detector (it has no {attribute})")


def _prepare(image, size, mean, std):
    """uint8 [3, H, W] → normalised float [3, h, w] at the network's input size."""
    import torch

    from fastladder.data.box_transforms import Resize, ToFloatNormalize

    empty = {"boxes": torch.zeros(0, 4)}
    resized, _ = Resize(size)(image, empty)
    normalized, _ = ToFloatNormalize(mean, std)(resized, empty)
    return normalized


def _detect(model, images, original_sizes):
    """Per image ``(boxes [n, 4] pixel xyxy of the original image, scores [n], labels [n])``."""
    import torch

    output = model(images)
    results = []
    for (boxes, scores, labels), (height, width) in zip(output.to_list(), original_sizes):
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
        results.append(((boxes.float() * scale).cpu(), scores.float().cpu(), labels.cpu()))
    return results


# --- eval det -------------------------------------------------------------------------------------

class _EvalSet:
    """(normalised image at the input size, original (H, W), boxes, labels, ignore) per dataset item."""

    def __init__(self, dataset, size, mean, std):
        self.dataset, self.size, self.mean, self.std = dataset, size, mean, std

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        import torch

        image, target = self.dataset[index]
        boxes = target["boxes"].to(torch.float32)
        ignore = target.get("ignore", target.get("difficult"))
        ignore = torch.zeros(boxes.shape[0], dtype=torch.bool) if ignore is None else \
            torch.as_tensor(ignore, dtype=torch.bool).reshape(-1)
        labels = target.get("labels", torch.ones(boxes.shape[0], dtype=torch.int64))
        height, width = image.shape[-2:]
        return (_prepare(image, self.size, self.mean, self.std), (int(height), int(width)), boxes,
                labels.to(torch.int64), ignore)


def _collate_eval(samples):
    import torch

    return (torch.stack([s[0] for s in samples]), [s[1] for s in samples],
            [{"boxes": s[2], "labels": s[3], "ignore": s[4]} for s in samples])


def _open_dataset(args):
    if args.root is None:
        raise ValueError(f"--dataset {args.dataset} needs --root: the folder of its official layout (for "
                         f"synthetic: where its generated frames are kept)")
    if args.dataset != "synthetic" and not os.path.isdir(args.root):
        raise FileNotFoundError(f"--root {args.root!r} is not a folder")
    kwargs = dict(args.dataset_kwargs or {})
    if not isinstance(args.dataset_kwargs or {}, dict):
        raise ValueError(f"--dataset-kwargs must be a JSON object, got {args.dataset_kwargs!r}")
    if args.dataset == "mot15":
        from fastladder.data.mot import MOT15Detection
        return MOT15Detection(args.root, args.split, **kwargs)
    if args.dataset == "synthetic":
        from fastladder.data.synthetic_detection import SyntheticPedestrians
        kwargs.setdefault("progress", not args.no_progress)
        return SyntheticPedestrians(args.root, args.split, **kwargs)
    from fastladder.train.detection import _voc_detection_class
    return _voc_detection_class()(args.root, year=args.year, image_set=args.split, **kwargs)


def evaluate_detector(model, loader, *, device, methods: Sequence[str], iou_threshold: float = 0.5,
                      progress: bool = True) -> Dict:
    """Runs ``model`` (an SSD in eval mode) over ``loader`` (batches of :class:`_EvalSet`) and
    returns ``{"ap": {method: mean AP over classes}, "ap_per_class": {method: [AP of class 1 …]},
    "curves": {label: (precision, recall)} (the first method's matching), "images", "detections"}``."""
    import torch
    from tqdm import tqdm

    from fastladder.eval.detection import average_precision, precision_recall

    detections, ground_truth = [], []
    with torch.no_grad():
        for images, sizes, targets in tqdm(loader, desc="eval det", unit="batch", disable=not progress):
            for (boxes, scores, labels), target in zip(_detect(model, images.to(device), sizes), targets):
                detections.append({"boxes": boxes, "scores": scores, "labels": labels})
                ground_truth.append(target)
    classes = sorted({int(v) for entry in detections + ground_truth for v in entry["labels"].tolist()})
    result = {"ap": {}, "ap_per_class": {}, "curves": {}, "classes": classes, "images": len(ground_truth),
              "detections": sum(int(d["boxes"].shape[0]) for d in detections)}
    for method in methods:
        per_class = average_precision(detections, ground_truth, iou_threshold, method)
        values = [float(per_class.get(label, float("nan"))) for label in classes]
        defined = [v for v in values if not math.isnan(v)]
        result["ap"][method] = sum(defined) / len(defined) if defined else float("nan")
        result["ap_per_class"][method] = values
    for label in classes:
        precision, recall, _ = precision_recall(detections, ground_truth, iou_threshold, method=methods[0],
                                                label=label)
        result["curves"][label] = (precision, recall)
    return result


def cmd_eval_det(args) -> int:
    import torch

    from fastladder.eval.commands import _load, _to_json
    from fastladder.eval.detection import plot_precision_recall

    if not 0 < args.iou <= 1:
        raise ValueError(f"--iou must be in (0, 1], got {args.iou}")
    if args.scales != [1.0] or args.flip:
        raise ValueError("--scales and --flip are for segmentation; eval det runs one scale")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    mean, std = _normalization(args)
    dataset = _open_dataset(args)
    num_classes = args.num_classes if args.num_classes is not None else int(dataset.num_classes)
    model = _load(args, num_classes)
    _check_detector(model, args)
    device = torch.device(args.device)
    model.to(device).eval()
    data = _EvalSet(dataset, _input_size(args, model), mean, std)
    if args.limit is not None:
        if args.limit <= 0:
            raise ValueError(f"--limit must be positive, got {args.limit}")
        data = torch.utils.data.Subset(data, range(min(args.limit, len(data))))
    if len(data) == 0:
        raise ValueError(f"--dataset {args.dataset} split {args.split!r} under {args.root!r} holds no images")
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=False,
                                         num_workers=args.workers, collate_fn=_collate_eval,
                                         pin_memory=device.type == "cuda")
    result = evaluate_detector(model, loader, device=device, methods=args.methods, iou_threshold=args.iou,
                               progress=not args.no_progress)
    names = list(getattr(dataset, "class_names", None) or [])

    def class_name(label):
        return names[label] if 0 <= label < len(names) else f"class {label}"

    print(f"\n{args.model or 'model'} ({args.weights}) on {args.dataset} {args.split}: {result['images']} "
          f"images, {result['detections']} detections, IoU {args.iou:g}\n")
    print(f"{'class':<20}" + "".join(f"{method:>10}" for method in args.methods))
    for index, label in enumerate(result["classes"]):
        print(f"{class_name(label):<20}" + "".join(f"{result['ap_per_class'][m][index]:>10.4f}"
                                                   for m in args.methods))
    print(f"{'mean AP':<20}" + "".join(f"{result['ap'][m]:>10.4f}" for m in args.methods))
    plot_path = args.plot or os.path.join(os.path.dirname(os.path.abspath(args.weights)),
                                          f"pr_{args.dataset}_{args.split}.png")
    os.makedirs(os.path.dirname(os.path.abspath(plot_path)), exist_ok=True)
    curves = {f"{class_name(label)} (AP {result['ap_per_class'][args.methods[0]][index]:.3f})": pair
              for index, (label, pair) in enumerate(result["curves"].items())}
    if curves:
        plot_precision_recall(curves, plot_path, title=f"{args.dataset} {args.split}, {args.methods[0]} "
                                                       f"matching, IoU {args.iou:g}")
        print(f"\nwrote {plot_path}")
    if args.json:
        report = dict(model=args.model, weights=args.weights, dataset=args.dataset, split=args.split,
                      num_images=result["images"], detections=result["detections"], iou=args.iou,
                      ap={m: _to_json(v) for m, v in result["ap"].items()},
                      ap_per_class={m: {class_name(label): _to_json(v) for label, v in
                                        zip(result["classes"], values)}
                                    for m, values in result["ap_per_class"].items()})
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


# --- predict --task det ---------------------------------------------------------------------------

def mot_rows(frame: int, boxes, scores) -> List[str]:
    """MOTChallenge detection rows ``frame,-1,left,top,width,height,score,-1,-1,-1`` of 0-based pixel
    xyxy boxes (1-based left/top: the pixel grid of the MOT files starts at 1)."""
    rows = []
    for (x1, y1, x2, y2), score in zip(boxes.tolist(), scores.tolist()):
        rows.append(f"{frame},-1,{x1 + 1:.2f},{y1 + 1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.4f},-1,-1,-1")
    return rows


def draw_detections(image, boxes, scores, labels, class_names=None):
    """uint8 [3, H, W] → uint8 [H, W, 3] with every box outlined in its class colour and labelled
    with its score (and class name when there are several classes)."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from fastladder.data.voc import voc_colormap

    picture = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()))
    draw = ImageDraw.Draw(picture)
    palette = voc_colormap(256).tolist()
    line = max(1, round(min(picture.size) / 200))
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        colour = tuple(palette[int(label) % 256]) if int(label) != 1 else (255, 40, 40)
        # (x2, y2) are exclusive; a box under a pixel wide is drawn one pixel wide
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=line)
        name = ""
        if class_names is not None and 0 < int(label) <= len(class_names):
            name = f"{class_names[int(label) - 1]} "
        text = f"{name}{score:.2f}"
        left, top = x1, max(0.0, y1 - 11)
        text_box = draw.textbbox((left, top), text)
        draw.rectangle(text_box, fill=colour)
        draw.text((left, top), text, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(picture).copy())


def _sequence_and_frame(source, name: str, counters: Dict[str, int]) -> Tuple[str, int]:
    """Which MOT sequence file an image belongs to, and its frame number there (see the module doc)."""
    if source.kind == "video":
        sequence = source.name
        frame = int(name.rsplit("_", 1)[1]) + 1
        return sequence, frame
    folder, _, stem = name.rpartition("/")
    parts = [p for p in folder.split("/") if p]
    if parts and parts[-1] == "img1":
        parts = parts[:-1]
    sequence = "/".join(parts) or "detections"
    counters[sequence] = counters.get(sequence, 0) + 1
    number = re.fullmatch(r"\D*(\d+)", stem)
    return sequence, int(number.group(1)) if number else counters[sequence]


def cmd_predict_det(args) -> int:
    import torch
    from tqdm import tqdm

    from fastladder.eval._images import collect_inputs, count_frames, iterate_frames, save_png
    from fastladder.eval.commands import _load

    if not 0 <= args.score_thresh <= 1:
        raise ValueError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    sources = collect_inputs(args.inputs)  # before the model: a bad input fails fast
    mean, std = _normalization(args)
    model = _load(args, args.num_classes)
    _check_detector(model, args)
    device = torch.device(args.device)
    model.to(device).eval()
    size = _input_size(args, model)
    counts = [count_frames(source) for source in sources]
    total = None if any(count is None for count in counts) else sum(counts)
    records, sequences, counters = [], {}, {}
    os.makedirs(args.out, exist_ok=True)
    with torch.no_grad(), tqdm(total=total, desc="predict det", unit="img", disable=args.no_progress) as bar:
        for source in sources:
            for name, image in iterate_frames(source):
                x = _prepare(image, size, mean, std).unsqueeze(0).to(device)
                (boxes, scores, labels), = _detect(model, x, [tuple(image.shape[-2:])])
                keep = scores >= args.score_thresh
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
                save_png(draw_detections(image, boxes, scores, labels, args.class_names),
                         os.path.join(args.out, f"{name}_det.png"))
                sequence, frame = _sequence_and_frame(source, name, counters)
                sequences.setdefault(sequence, []).extend(mot_rows(frame, boxes, scores))
                record = {"image": name, "source": str(source.path), "sequence": sequence, "frame": frame,
                          "height": int(image.shape[-2]), "width": int(image.shape[-1]),
                          "boxes": [[round(v, 2) for v in box] for box in boxes.tolist()],
                          "scores": [round(v, 5) for v in scores.tolist()], "labels": labels.tolist()}
                if args.class_names:
                    record["classes"] = [args.class_names[int(l) - 1] if 0 < int(l) <= len(args.class_names)
                                         else str(int(l)) for l in labels.tolist()]
                records.append(record)
                bar.update(1)
    with open(os.path.join(args.out, "detections.json"), "w") as f:
        json.dump({"score_thresh": args.score_thresh, "image_size": list(size), "images": records}, f,
                  indent=1)
    for sequence, rows in sequences.items():
        path = os.path.join(args.out, f"{sequence}.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("\n".join(rows) + ("\n" if rows else ""))
    found = sum(len(r["scores"]) for r in records)
    print(f"wrote {len(records)} drawings (*_det.png), detections.json and {len(sequences)} MOT file(s) "
          f"({found} detections at score >= {args.score_thresh:g}) to {args.out}")
    return 0
