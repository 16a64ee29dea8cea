"""Commands ``fastladder eval seg``, ``fastladder eval det`` and ``fastladder predict``.

    fastladder eval seg --weights runs/ldn/best.pt --root DATA [--split val] [--scales 0.5 0.75 1 1.5 2]
        [--flip] [--json result.json]
    fastladder predict --weights runs/ldn/best.pt IMAGES_OR_FOLDERS_OR_VIDEO... --out DIR
    fastladder predict --task det --weights runs/ssd/best.pt IMAGES_OR_FOLDERS_OR_VIDEO... --out DIR

A training checkpoint records the model, its classes, the dataset and the normalization it was
trained with: images are normalized the same way, (x − mean) / std per channel on the 0–255 scale,
and the dataset is the checkpoint's unless ``--dataset`` says otherwise. ``--model``,
``--num-classes``, ``--model-kwargs``, ``--mean``, ``--std`` override the checkpoint; a plain
state_dict needs ``--model`` and ``--num-classes`` (and the normalization comes from ``--dataset``
or ``--mean/--std``). The detection commands live in fastladder.eval.detection_commands.
"""
import argparse
import os

from fastladder.data.registry import list_datasets
from fastladder.errors import ArgumentError, DataError
from fastladder.eval import _common, detection_commands

__all__ = ["register", "cmd_eval_seg", "cmd_predict"]

DATASETS = list_datasets("seg")
# Datasets labelled with the 19 Cityscapes train ids: their predictions map to official label ids.
_CITYSCAPES_IDS = ("cityscapes", "synthetic")
OUTPUTS = ("color", "overlay", "labelIds")


def _add_multiscale_arguments(parser):
    group = parser.add_argument_group("segmentation test-time augmentation")
    group.add_argument("--scales", type=float, nargs="+", default=[1.0],
                       help="input scales whose softmax outputs are averaged (default: 1)")
    group.add_argument("--flip", action="store_true", help="also average over horizontally flipped inputs")


def register(subparsers):
    """Adds ``eval seg``, ``eval det`` and ``predict`` to the fastladder CLI."""
    eval_tasks = _common.task_subparsers(subparsers, "eval", "evaluate a trained model on a dataset")
    seg = eval_tasks.add_parser(
        "seg", help="semantic segmentation: per-class IoU, mIoU, pixel accuracy (Cityscapes definitions)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_model_arguments(seg)
    _add_multiscale_arguments(seg)
    seg.add_argument("--dataset", choices=DATASETS, default=None,
                     help="default: the one the checkpoint was trained on")
    seg.add_argument("--root", default=None, help="the dataset's root folder (its official layout)")
    seg.add_argument("--split", default="val")
    seg.add_argument("--dataset-kwargs", type=_common.json_object, default=None, metavar="JSON",
                     help="extra dataset arguments as JSON, as in training (e.g. '{\"year\": \"2007\"}' for "
                          "voc)")
    seg.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    seg.add_argument("--workers", type=int, default=2, help="data loading processes (0: in this process)")
    seg.add_argument("--json", default=None, help="also write the results to this JSON file")
    seg.add_argument("--no-progress", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_eval_seg)
    detection_commands.add_eval_det(eval_tasks)

    predict = subparsers.add_parser(
        "predict", help="segment images, image folders or a video (colour, overlay and label-id PNGs), or "
                        "detect objects in them (--task det: drawn boxes, JSON, MOT files)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_model_arguments(predict)
    predict.add_argument("inputs", nargs="+", help="image files (png/jpg), folders of them, or video files")
    predict.add_argument("--task", choices=("seg", "det"), default=None,
                         help="seg: semantic segmentation; det: SSD detection (default: the checkpoint's, "
                              "else seg)")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--dataset", choices=sorted(set(DATASETS) | set(detection_commands.DATASETS)),
                         default=None,
                         help="whose palette colours the classes and whose normalization applies when "
                              "the checkpoint does not record them (for 19-class Cityscapes models it "
                              "enables the labelIds submission PNGs; default: the checkpoint's)")
    predict.add_argument("--outputs", nargs="+", choices=OUTPUTS, default=None,
                         help="which PNGs to write (default: all that apply). Only labelIds gives a folder "
                              "that cityscapesScripts' evaluation can search (it allows one PNG per image)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_multiscale_arguments(predict)
    detection_commands.add_predict_det_arguments(predict)
    predict.set_defaults(func=cmd_predict)


# --- shared pieces --------------------------------------------------------------------------------

def _class_names(meta, dataset, num_classes: int):
    names = meta.get("class_names") or list(getattr(dataset, "class_names", None) or [])
    return list(names) if len(names) == num_classes else [f"class {i}" for i in range(num_classes)]


# --- eval seg -------------------------------------------------------------------------------------

def cmd_eval_seg(args) -> int:
    import torch

    from fastladder.data.transforms import segmentation_eval_transforms
    from fastladder.eval.inference import evaluate_segmentation, format_iou_table
    from fastladder.models import optimize_for_inference

    _common.check_limit(args.limit)
    model, meta = _common.load_model_and_meta(args, task="seg")
    model = optimize_for_inference(model)  # the fused inference form, as training's validation runs it
    dataset_name = _common.dataset_name(args, meta)
    if dataset_name is None:
        raise ArgumentError(f"--weights {args.weights} does not record its dataset: give --dataset")
    mean, std = _common.normalization(args, meta, "seg")
    # training's evaluation transforms: normalization at full resolution
    dataset = _common.open_eval_dataset("seg", dataset_name, args.root, args.split,
                                        transforms=segmentation_eval_transforms(mean, std),
                                        **(args.dataset_kwargs or {}))
    num_classes = int(meta["num_classes"])
    if int(dataset.num_classes) != num_classes:
        raise ArgumentError(f"--weights {args.weights} predicts {num_classes} classes, --dataset "
                            f"{dataset_name} has {dataset.num_classes}")
    class_names = _class_names(meta, dataset, num_classes)
    data = dataset
    if args.limit is not None:
        data = torch.utils.data.Subset(data, range(min(args.limit, len(data))))
    if len(data) == 0:
        raise DataError(f"--root {args.root}: {dataset_name} split {args.split!r} holds no images")
    device = torch.device(args.device)
    loader = torch.utils.data.DataLoader(data, batch_size=1, shuffle=False, num_workers=args.workers,
                                         pin_memory=device.type == "cuda")
    result = evaluate_segmentation(model, loader, num_classes, scales=args.scales, flip=args.flip,
                                   device=device, progress=not args.no_progress)
    scales = ", ".join(f"{s:g}" for s in args.scales)
    print(f"\n{meta['model_name']} ({args.weights}) on {dataset_name} {args.split}: {len(data)} images, "
          f"scales {scales}{', flip' if args.flip else ''}\n")
    print(format_iou_table(result, class_names))
    if args.json:
        to_json = _common.to_json
        _common.write_json(args.json, dict(
            model=meta["model_name"], weights=args.weights, dataset=dataset_name, split=args.split,
            num_images=len(data), scales=list(args.scales), flip=args.flip, mean=mean, std=std,
            miou=to_json(result["miou"]), pixel_accuracy=to_json(result["pixel_accuracy"]),
            iou={name: to_json(v) for name, v in zip(class_names, result["iou"].tolist())},
            confusion=result["confusion"].tolist()))
    return 0


# --- predict --------------------------------------------------------------------------------------

def cmd_predict(args) -> int:
    from fastladder.eval._images import collect_inputs

    sources = collect_inputs(args.inputs)  # before the model: a bad input fails fast
    model, meta = _common.load_model_and_meta(args, task=args.task)
    task = args.task or meta.get("task") or "seg"
    if task == "det":
        if args.scales != [1.0] or args.flip:
            raise ArgumentError("--scales and --flip are for segmentation; detection (--task det) runs one "
                                "scale")
        return detection_commands.predict_det(args, sources, model, meta)
    return _predict_seg(args, sources, model, meta)


def _predict_seg(args, sources, model, meta) -> int:
    import torch
    from tqdm import tqdm

    from fastladder.data.labels import cityscapes_train_to_label_id, colorize
    from fastladder.eval._images import count_frames, iterate_frames, overlay, save_png
    from fastladder.eval.inference import normalize_image, predict
    from fastladder.models import optimize_for_inference

    dataset = _common.dataset_name(args, meta)
    if dataset is not None and dataset not in DATASETS:
        raise ArgumentError(f"--dataset {dataset} is a detection dataset; this is a segmentation model")
    mean, std = _common.normalization(args, meta, "seg")
    num_classes = int(meta["num_classes"])
    device = torch.device(args.device)
    model = optimize_for_inference(model).to(device)
    palette = _common.palette("seg", dataset, num_classes)
    wanted = set(args.outputs or OUTPUTS)
    if not (dataset in _CITYSCAPES_IDS and num_classes == 19) and "labelIds" in wanted:
        if args.outputs and "labelIds" in args.outputs:
            raise ArgumentError(f"--outputs labelIds needs a 19-class Cityscapes model (--dataset "
                                f"{' or '.join(_CITYSCAPES_IDS)}), got {num_classes} classes and dataset "
                                f"{dataset}")
        wanted.discard("labelIds")
    counts = [count_frames(source) for source in sources]
    total = None if any(count is None for count in counts) else sum(counts)
    written, failures = 0, []
    with tqdm(total=total, desc="predict", unit="img", disable=args.no_progress) as bar:
        for source in sources:
            for name, image in _common.frames_or_report(source, iterate_frames, failures):
                x = normalize_image(image.to(device).unsqueeze(0), mean, std)
                train_ids = predict(model, x, scales=args.scales, flip=args.flip)[0].cpu()
                base = os.path.join(args.out, name)
                colors = colorize(train_ids, palette)
                if "color" in wanted:
                    save_png(colors, f"{base}_color.png")
                if "overlay" in wanted:
                    save_png(overlay(image, colors), f"{base}_overlay.png")
                if "labelIds" in wanted:
                    save_png(cityscapes_train_to_label_id(train_ids), f"{base}_labelIds.png")
                written += 1
                bar.update(1)
    print(f"wrote {', '.join(sorted(wanted))} PNGs of {written} images to {args.out}")
    _common.raise_for_failures(failures, written)
    return 0
