"""Commands ``fastladder eval det`` and ``fastladder predict --task det`` (SSD detection).

    fastladder eval det --model ssd300_vgg16 --weights runs/ssd/best.pt --dataset mot15 --root MOT15 \\
        [--split val] [--methods voc mot] [--iou 0.5] [--plot pr.png] [--json result.json]
    fastladder predict --task det --weights runs/ssd/best.pt FRAMES_OR_FOLDERS_OR_VIDEO... --out DIR \\
        [--score-thresh 0.3]

Images are resized to the model's input size and normalised as in training: the checkpoint
records both (``--image-size``, ``--mean``, ``--std`` on the 0–255 scale override them);
detections are mapped back to the pixels of the original image. Evaluation compares them with the
dataset's ground truth in those pixels; ignored boxes (MOT consider 0, VOC difficult) are the
AP's ignore regions. The precision-recall curve is drawn only where ``--plot`` says.

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
import os
import re
from typing import Dict, List, Tuple

from fastladder.data.registry import list_datasets
from fastladder.errors import ArgumentError, DataError
from fastladder.eval import _common

__all__ = ["add_eval_det", "add_predict_det_arguments", "cmd_eval_det", "predict_det", "DATASETS",
           "mot_rows", "draw_detections"]

DATASETS = list_datasets("det")


def add_eval_det(eval_tasks):
    """Adds ``det`` to the ``fastladder eval`` group (``eval_tasks``: its sub-parsers action)."""
    from fastladder.eval.detection import AP_METHODS

    det = eval_tasks.add_parser(
        "det", help="detection: Average Precision (VOC, VOC07, COCO 101-point, MOT definitions), PR curve",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_model_arguments(det)
    _add_image_size(det)
    det.add_argument("--dataset", choices=DATASETS, default=None,
                     help="default: the one the checkpoint was trained on")
    det.add_argument("--root", default=None, help="the dataset's root folder (its official layout)")
    det.add_argument("--split", default="val", help="mot15 / synthetic: train, val or all; voc: an image set")
    det.add_argument("--year", default="2007", help="voc: the VOC year (default 2007)")
    det.add_argument("--dataset-kwargs", type=_common.json_object, default=None, metavar="JSON",
                     help="extra dataset arguments as JSON (e.g. '{\"val_fraction\": 0.2}')")
    det.add_argument("--methods", nargs="+", choices=AP_METHODS, default=list(AP_METHODS),
                     help="AP definitions to report (default: all)")
    det.add_argument("--iou", type=float, default=0.5, help="IoU of a true positive (default 0.5)")
    det.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    det.add_argument("--batch-size", type=int, default=8)
    det.add_argument("--workers", type=int, default=2, help="data loading processes (0: in this process)")
    det.add_argument("--plot", default=None, metavar="PNG", help="also draw the precision-recall curves here")
    det.add_argument("--json", default=None, help="also write the results to this JSON file")
    det.add_argument("--no-progress", action="store_true", help="no progress bar")
    det.set_defaults(func=cmd_eval_det)


def _add_image_size(parser):
    parser.add_argument("--image-size", type=int, nargs="+", default=None, metavar="SIDE",
                        help="network input: SIDE or H W (default: the checkpoint's, else the model's)")


def add_predict_det_arguments(parser):
    """The detection options of ``fastladder predict`` (used with ``--task det``)."""
    group = parser.add_argument_group("detection (--task det)")
    _add_image_size(group)
    group.add_argument("--score-thresh", type=float, default=0.3,
                       help="keep detections scoring at least this (default 0.3; the AP uses all)")
    group.add_argument("--class-names", nargs="+", default=None,
                       help="names of classes 1, 2, … for the drawings and the JSON (default: the "
                            "checkpoint's, else numbers)")


# --- shared pieces --------------------------------------------------------------------------------

def _input_size(args, meta) -> Tuple[int, int]:
    size = args.image_size
    if size is None:
        return tuple(int(v) for v in meta["input_size"])
    if len(size) not in (1, 2) or min(size) <= 0:
        raise ArgumentError(f"--image-size must be SIDE or H W with positive sizes, got {size}")
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _load_detector(args, loaded=None):
    """(SSD in eval mode on args.device, meta, (h, w) input size, mean, std); ``loaded``: the
    (model, meta) already read from args.weights."""
    import torch

    model, meta = loaded or _common.load_model_and_meta(args, task="det")
    for attribute in ("image_size", "priors_for"):
        if not hasattr(model, attribute):
            raise ArgumentError(f"--weights {args.weights}: the model ({type(model).__name__}) is not an SSD "
                                f"detector (it has no {attribute})")
    if getattr(args, "dataset", None) is not None and args.dataset not in DATASETS:
        raise ArgumentError(f"--dataset {args.dataset} is a segmentation dataset; this is a detector")
    mean, std = _common.normalization(args, meta, "det")
    return model.to(torch.device(args.device)).eval(), meta, _input_size(args, meta), mean, std


def _foreground_names(meta, dataset=None):
    """Names of classes 1, 2, … (class 0 is the background), or None."""
    names = meta.get("class_names") or list(getattr(dataset, "class_names", None) or [])
    if names and len(names) == (meta.get("num_classes") or 0) and names[0] in ("background",
                                                                                "__background__"):
        names = names[1:]
    return list(names) or None


# --- eval det -------------------------------------------------------------------------------------

def cmd_eval_det(args) -> int:
    import torch

    from fastladder.eval.detection import plot_precision_recall
    from fastladder.eval.evaluate import DetectionEvalSet, collate_detection_eval, evaluate_detector

    if not 0 < args.iou <= 1:
        raise ArgumentError(f"--iou must be in (0, 1], got {args.iou}")
    if args.batch_size <= 0:
        raise ArgumentError(f"--batch-size must be positive, got {args.batch_size}")
    _common.check_limit(args.limit)
    model, meta, size, mean, std = _load_detector(args)
    dataset_name = _common.dataset_name(args, meta)
    if dataset_name is None:
        raise ArgumentError(f"--weights {args.weights} does not record its dataset: give --dataset")
    kwargs = dict(args.dataset_kwargs or {})
    if dataset_name == "voc":
        kwargs.setdefault("year", args.year)
    dataset = _common.open_eval_dataset("det", dataset_name, args.root, args.split, **kwargs)
    device = torch.device(args.device)
    data = DetectionEvalSet(dataset, size, mean, std)
    if args.limit is not None:
        data = torch.utils.data.Subset(data, range(min(args.limit, len(data))))
    if len(data) == 0:
        raise DataError(f"--root {args.root}: {dataset_name} split {args.split!r} holds no images")
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=False,
                                         num_workers=args.workers, collate_fn=collate_detection_eval,
                                         pin_memory=device.type == "cuda")
    result = evaluate_detector(model, loader, device=device, methods=args.methods, iou_threshold=args.iou,
                               progress=not args.no_progress)
    names = _foreground_names(meta, dataset) or []

    def class_name(label):
        return names[label - 1] if 0 < label <= len(names) else f"class {label}"

    print(f"\n{meta['model_name']} ({args.weights}) on {dataset_name} {args.split}: {result['images']} "
          f"images, {result['detections']} detections, IoU {args.iou:g}\n")
    print(f"{'class':<20}" + "".join(f"{method:>10}" for method in args.methods))
    for index, label in enumerate(result["classes"]):
        print(f"{class_name(label):<20}" + "".join(f"{result['ap_per_class'][m][index]:>10.4f}"
                                                   for m in args.methods))
    print(f"{'mean AP':<20}" + "".join(f"{result['ap'][m]:>10.4f}" for m in args.methods))
    if args.plot:
        curves = {f"{class_name(label)} (AP {result['ap_per_class'][args.methods[0]][index]:.3f})": pair
                  for index, (label, pair) in enumerate(result["curves"].items())}
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        plot_precision_recall(curves, args.plot, title=f"{dataset_name} {args.split}, {args.methods[0]} "
                                                        f"matching, IoU {args.iou:g}")
        print(f"\nwrote {args.plot}")
    if args.json:
        to_json = _common.to_json
        _common.write_json(args.json, dict(
            model=meta["model_name"], weights=args.weights, dataset=dataset_name, split=args.split,
            num_images=result["images"], detections=result["detections"], iou=args.iou,
            image_size=list(size), mean=mean, std=std,
            ap={m: to_json(v) for m, v in result["ap"].items()},
            ap_per_class={m: {class_name(label): to_json(v) for label, v in zip(result["classes"], values)}
                          for m, values in result["ap_per_class"].items()}))
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


def predict_det(args, sources, model, meta) -> int:
    """``fastladder predict`` of a detector (``--task det``, or an SSD checkpoint) on the collected
    input sources."""
    import torch
    from tqdm import tqdm

    from fastladder.eval._images import count_frames, iterate_frames, save_png
    from fastladder.eval.evaluate import detect, prepare_detection_input

    if not 0 <= args.score_thresh <= 1:
        raise ArgumentError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    model, meta, size, mean, std = _load_detector(args, (model, meta))
    class_names = args.class_names or _foreground_names(meta)
    device = next(model.parameters()).device
    counts = [count_frames(source) for source in sources]
    total = None if any(count is None for count in counts) else sum(counts)
    records, sequences, counters, failures = [], {}, {}, []
    os.makedirs(args.out, exist_ok=True)
    with torch.no_grad(), tqdm(total=total, desc="predict det", unit="img", disable=args.no_progress) as bar:
        for source in sources:
            for name, image in _common.frames_or_report(source, iterate_frames, failures):
                x = prepare_detection_input(image, size, mean, std).unsqueeze(0).to(device)
                (boxes, scores, labels), = detect(model, x, [tuple(image.shape[-2:])])
                keep = scores >= args.score_thresh
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
                save_png(draw_detections(image, boxes, scores, labels, class_names),
                         os.path.join(args.out, f"{name}_det.png"))
                sequence, frame = _sequence_and_frame(source, name, counters)
                sequences.setdefault(sequence, []).extend(mot_rows(frame, boxes, scores))
                record = {"image": name, "source": str(source.path), "sequence": sequence, "frame": frame,
                          "height": int(image.shape[-2]), "width": int(image.shape[-1]),
                          "boxes": [[round(v, 2) for v in box] for box in boxes.tolist()],
                          "scores": [round(v, 5) for v in scores.tolist()], "labels": labels.tolist()}
                if class_names:
                    record["classes"] = [class_names[int(i) - 1] if 0 < int(i) <= len(class_names)
                                         else str(int(i)) for i in labels.tolist()]
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
    _common.raise_for_failures(failures, len(records))
    return 0
