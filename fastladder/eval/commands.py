"""Commands ``fastladder eval seg``, ``fastladder eval det`` and ``fastladder predict``.

    fastladder eval seg --model ladder_densenet121 --weights ckpt.pt --dataset cityscapes --root DATA \\
        [--split val] [--scales 0.5 0.75 1 1.5 2] [--flip] [--json result.json]
    fastladder predict --model ladder_densenet121 --weights ckpt.pt IMAGES_OR_FOLDERS_OR_VIDEO... --out DIR
    fastladder predict --task det --weights ssd.pt IMAGES_OR_FOLDERS_OR_VIDEO... --out DIR

Images are normalized as in training: (x − mean) / std per channel on the 0–255 scale (--mean,
--std; the Cityscapes statistics by default for segmentation, ImageNet's for detection). The
detection commands live in fastladder.eval.detection_commands.
"""
import argparse
import json
import math
import os

__all__ = ["register", "cmd_eval_seg", "cmd_predict"]

DATASETS = ("cityscapes", "voc", "camvid", "synthetic")
# The colours of each dataset's classes, in fastladder.data (the synthetic scenes use Cityscapes' train ids).
_PALETTES = {"cityscapes": "CITYSCAPES_PALETTE", "synthetic": "CITYSCAPES_PALETTE", "voc": "VOC_PALETTE",
             "camvid": "CAMVID_PALETTE"}
# Datasets labelled with the 19 Cityscapes train ids: their predictions map to official label ids.
_CITYSCAPES_IDS = ("cityscapes", "synthetic")
OUTPUTS = ("color", "overlay", "labelIds")


def _task_subparsers(subparsers, name: str, help: str):
    """The sub-command group ``name`` (e.g. ``eval``) of the CLI, made on first use: other modules
    add their own tasks (``eval det`` ...) to the same group."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help)
        parser.add_subparsers(dest=f"{name}_task", metavar="TASK", required=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"the `fastladder {name}` command exists without sub-commands; the modules that add "
                       f"tasks to it must create it with _task_subparsers")


def _add_model_arguments(parser):
    parser.add_argument("--model", default=None,
                        help="registered model name (fastladder.models.list_models()); checkpoints record "
                             "it")
    parser.add_argument("--weights", required=True, help="a training checkpoint or a plain state_dict (.pt)")
    parser.add_argument("--num-classes", type=int, default=None, help="classes of a plain state_dict's model")
    parser.add_argument("--model-kwargs", type=json.loads, default=None, metavar="JSON",
                        help='constructor arguments as JSON, e.g. \'{"growth_rate": 4}\' (they override a '
                             "checkpoint's)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0],
                        help="input scales whose softmax outputs are averaged (default: 1)")
    parser.add_argument("--flip", action="store_true", help="also average over horizontally flipped inputs")
    parser.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="per-channel mean on the 0-255 scale (default: the Cityscapes mean; detection: "
                             "ImageNet's)")
    parser.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="per-channel std on the 0-255 scale (default: the Cityscapes std; detection: "
                             "ImageNet's)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def register(subparsers):
    """Adds ``eval seg``, ``eval det`` and ``predict`` to the fastladder CLI."""
    from fastladder.eval import detection_commands

    eval_tasks = _task_subparsers(subparsers, "eval", "evaluate a trained model on a dataset")
    seg = eval_tasks.add_parser(
        "seg", help="semantic segmentation: per-class IoU, mIoU, pixel accuracy (Cityscapes definitions)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_arguments(seg)
    seg.add_argument("--dataset", choices=DATASETS, default="cityscapes")
    seg.add_argument("--root", default=None, help="the dataset's root folder (its official layout)")
    seg.add_argument("--split", default="val")
    seg.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    seg.add_argument("--workers", type=int, default=2, help="data loading processes (0: in this process)")
    seg.add_argument("--json", default=None, help="also write the results to this JSON file")
    seg.add_argument("--no-progress", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_eval_seg)
    detection_commands.add_eval_det(eval_tasks, _add_model_arguments)

    predict = subparsers.add_parser(
        "predict", help="segment images, image folders or a video (colour, overlay and label-id PNGs), or "
                        "detect objects in them (--task det: drawn boxes, JSON, MOT files)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_arguments(predict)
    predict.add_argument("inputs", nargs="+", help="image files (png/jpg), folders of them, or video files")
    predict.add_argument("--task", choices=("seg", "det"), default="seg",
                         help="seg: semantic segmentation (default); det: SSD detection")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--dataset", choices=DATASETS, default="cityscapes",
                         help="whose palette colours the classes (and, for 19-class Cityscapes models, "
                              "enables the labelIds submission PNGs)")
    predict.add_argument("--outputs", nargs="+", choices=OUTPUTS, default=None,
                         help="which PNGs to write (default: all that apply). Only labelIds gives a folder "
                              "that cityscapesScripts' evaluation can search (it allows one PNG per image)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    detection_commands.add_predict_det_arguments(predict)
    predict.set_defaults(func=cmd_predict)


# --- shared pieces --------------------------------------------------------------------------------

def _normalization(args):
    mean, std = args.mean, args.std
    if mean is None or std is None:
        from fastladder.data.transforms import CITYSCAPES_MEAN, CITYSCAPES_STD
        mean = list(CITYSCAPES_MEAN) if mean is None else mean
        std = list(CITYSCAPES_STD) if std is None else std
    return [float(v) for v in mean], [float(v) for v in std]


def _load(args, num_classes=None):
    from fastladder.eval._weights import load_model

    kwargs = args.model_kwargs or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    return load_model(args.weights, args.model, num_classes, **kwargs)


def _load_for_inference(args, num_classes=None):
    """The model of --weights in its fused inference form (BatchNorms folded, channels_last)."""
    from fastladder.models import optimize_for_inference

    return optimize_for_inference(_load(args, num_classes))


def _data_attribute(name: str, dataset: str):
    import fastladder.data

    value = getattr(fastladder.data, name, None)
    if value is None:
        raise RuntimeError(f"--dataset {dataset}: fastladder.data has no {name} in this installation")
    return value


def _open_dataset(name: str, root, split: str):
    """The dataset (its items: uint8 image [3, H, W], int64 train-id label [H, W], 255 ignored)."""
    if root is None:
        raise ValueError(f"--dataset {name} needs --root: the folder of its official layout (for synthetic: "
                         f"where its generated images are kept)")
    if name != "synthetic" and not os.path.isdir(root):
        raise FileNotFoundError(f"--root {root!r} is not a folder")
    if name == "voc":
        return _data_attribute("VOCSegmentation", name)(root, image_set=split)
    class_name = {"cityscapes": "Cityscapes", "camvid": "CamVid", "synthetic": "SyntheticScenes"}[name]
    return _data_attribute(class_name, name)(root, split)


class _Normalized:
    """A dataset whose images are normalized for the model: (image − mean) / std on the 0–255 scale."""

    def __init__(self, dataset, mean, std):
        self.dataset, self.mean, self.std = dataset, mean, std

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        from fastladder.eval.inference import normalize_image

        image, label = self.dataset[index]
        return normalize_image(image, self.mean, self.std), label


def _palette(dataset: str, num_classes: int):
    """Colours of train ids 0…num_classes−1, uint8 [num_classes, 3]: the dataset's own where it has
    one that covers every class, else the Pascal VOC colour map."""
    from fastladder.data.labels import CITYSCAPES_PALETTE
    from fastladder.data.voc import voc_colormap

    if _PALETTES[dataset] == "CITYSCAPES_PALETTE":
        palette = CITYSCAPES_PALETTE
    else:
        import fastladder.data
        palette = getattr(fastladder.data, _PALETTES[dataset], None)
    if palette is None or palette.shape[0] < num_classes:
        palette = voc_colormap(min(num_classes, 256))
    return palette


def _to_json(value):
    return None if isinstance(value, float) and math.isnan(value) else value


# --- eval seg -------------------------------------------------------------------------------------

def cmd_eval_seg(args) -> int:
    import torch

    from fastladder.eval.inference import evaluate_segmentation, format_iou_table

    mean, std = _normalization(args)
    dataset = _open_dataset(args.dataset, args.root, args.split)
    num_classes = args.num_classes if args.num_classes is not None else int(dataset.num_classes)
    class_names = list(getattr(dataset, "class_names", None) or [f"class {i}" for i in range(num_classes)])
    model = _load_for_inference(args, num_classes)
    data = _Normalized(dataset, mean, std)
    if args.limit is not None:
        if args.limit <= 0:
            raise ValueError(f"--limit must be positive, got {args.limit}")
        data = torch.utils.data.Subset(data, range(min(args.limit, len(data))))
    if len(data) == 0:
        raise ValueError(f"--dataset {args.dataset} split {args.split!r} under {args.root!r} holds no images")
    device = torch.device(args.device)
    loader = torch.utils.data.DataLoader(data, batch_size=1, shuffle=False, num_workers=args.workers,
                                         pin_memory=device.type == "cuda")
    result = evaluate_segmentation(model, loader, num_classes, scales=args.scales, flip=args.flip,
                                   device=device, progress=not args.no_progress)
    scales = ", ".join(f"{s:g}" for s in args.scales)
    print(f"\n{args.model or 'model'} ({args.weights}) on {args.dataset} {args.split}: {len(data)} images, "
          f"scales {scales}{', flip' if args.flip else ''}\n")
    print(format_iou_table(result, class_names))
    if args.json:
        report = dict(model=args.model, weights=args.weights, dataset=args.dataset, split=args.split,
                      num_images=len(data), scales=list(args.scales), flip=args.flip,
                      miou=_to_json(result["miou"]), pixel_accuracy=_to_json(result["pixel_accuracy"]),
                      iou={name: _to_json(v) for name, v in zip(class_names, result["iou"].tolist())},
                      confusion=result["confusion"].tolist())
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


# --- predict --------------------------------------------------------------------------------------

def cmd_predict(args) -> int:
    if getattr(args, "task", "seg") == "det":
        from fastladder.eval.detection_commands import cmd_predict_det
        if args.scales != [1.0] or args.flip:
            raise ValueError("--scales and --flip are for segmentation; detection (--task det) runs one "
                             "scale")
        return cmd_predict_det(args)
    import torch
    from tqdm import tqdm

    from fastladder.data.labels import cityscapes_train_to_label_id, colorize
    from fastladder.eval._images import collect_inputs, count_frames, iterate_frames, overlay, save_png
    from fastladder.eval.inference import normalize_image, predict_logits

    sources = collect_inputs(args.inputs)  # before the model: a bad input fails fast
    mean, std = _normalization(args)
    model = _load_for_inference(args, args.num_classes)
    device = torch.device(args.device)
    model.to(device)
    counts = [count_frames(source) for source in sources]
    total = None if any(count is None for count in counts) else sum(counts)
    wanted = set(args.outputs or OUTPUTS)
    palette, written = None, 0
    with tqdm(total=total, desc="predict", unit="img", disable=args.no_progress) as bar:
        for source in sources:
            for name, image in iterate_frames(source):
                x = normalize_image(image.to(device).unsqueeze(0), mean, std)
                probabilities = predict_logits(model, x, scales=args.scales, flip=args.flip)
                train_ids = probabilities.argmax(1)[0].cpu()
                if palette is None:  # the first image tells the number of classes
                    num_classes = probabilities.shape[1]
                    palette = _palette(args.dataset, num_classes)
                    submission = args.dataset in _CITYSCAPES_IDS and num_classes == 19
                    if not submission and "labelIds" in wanted:
                        if args.outputs and "labelIds" in args.outputs:
                            raise ValueError(f"--outputs labelIds needs a 19-class Cityscapes model "
                                             f"(--dataset {' or '.join(_CITYSCAPES_IDS)}), got {num_classes} "
                                             f"classes and --dataset {args.dataset}")
                        wanted.discard("labelIds")
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
    return 0
