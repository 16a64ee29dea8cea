"""``fastladder train seg`` and ``fastladder train det``: train a segmentation or a detection model.

    fastladder train seg --config ldn121_cityscapes.yaml --out runs/ldn121
    fastladder train seg --dataset synthetic --model ladder_densenet121 \\
        --model-kwargs '{"growth_rate": 8}' --crop-size 128 --steps 200 --out runs/tiny
    fastladder train seg --config ldn121_cityscapes.yaml --out runs/ldn121 --resume     # <out>/last.pt
    fastladder train seg --config base.yaml --config small.yaml --out runs/x --resume auto
    torchrun --nproc_per_node=2 -m fastladder.cli train seg --config ldn121_cityscapes.yaml
    fastladder train det --dataset synthetic --model-kwargs '{"width": 0.25}' --steps 2000 --out runs/ssd
    fastladder train det --dataset voc --root VOCdevkit --backbone-weights imagenet \\
        --set dataset_kwargs='{"year": "2007", "train_image_set": "trainval", "val_image_set": "test"}'

Config files (--config, repeatable) merge in order, later files winning; ``--set KEY=VALUE`` sets
any option of TrainConfig over them, and the flags win over both. A run folder that holds an earlier
run is refused unless --resume (continue it; "auto": continue when it has a last.pt, else start) or
--overwrite (start over). Ctrl-C or SIGTERM saves <out>/last.pt and exits with 130 / 143.
``train det`` starts from SSD's optimization defaults (fastladder.train.config.TASK_DEFAULTS["det"]:
SGD, momentum 0.9, weight decay 5e-4, lr 1e-3 with warmup, step decay at 2/3 and 5/6 of the run).
"""
import argparse
import os
import sys

from fastladder.data.registry import list_datasets
from fastladder.eval._common import json_object
from fastladder.eval.detection import AP_METHODS
from fastladder.train.optim import OPTIMIZERS, SCHEDULES

__all__ = ["register", "config_from_args", "cmd_train_seg", "cmd_train_det"]


def _size(text: str):
    """``448`` or ``448x896`` / ``448,896`` (height, width)."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be SIZE or HEIGHTxWIDTH in pixels, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"must be SIZE or HEIGHTxWIDTH with positive sizes, got {text!r}")
    return values * 2 if len(values) == 1 else values


def _size_or_none(text: str):
    return None if text.lower() in ("none", "null") else _size(text)


def _int_list(text: str):
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be step counts like '8000,10000', got {text!r}") from None


def _assignment(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    import yaml
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


# flag -> (TrainConfig field, argparse keyword arguments)
_FLAGS = {
    "--out": ("out", dict(metavar="DIR", help="run folder: log.csv, curves.png, last.pt, best.pt")),
    "--model": ("model", dict(help="a registered model (fastladder.models.list_models())")),
    "--model-kwargs": ("model_kwargs", dict(
        type=json_object, metavar="JSON",
        help="keyword arguments of the model, e.g. '{\"growth_rate\": 8}'")),
    "--backbone-weights": ("backbone_weights", dict(
        metavar="FILE|imagenet", help="torchvision DenseNet state_dict for the backbone, or 'imagenet' for "
                                      "torchvision's (downloaded once into the torch hub cache)")),
    "--dataset": ("dataset", dict(choices=list_datasets("seg"))),
    "--root": ("root", dict(metavar="DIR", help="the dataset's folder (official layout)")),
    "--dataset-kwargs": ("dataset_kwargs", dict(type=json_object, metavar="JSON",
                                                help="extra dataset arguments, e.g. '{\"num_images\": 64}'")),
    "--crop-size": ("crop_size", dict(type=_size, metavar="HxW", help="training crop, e.g. 448 or 448x896")),
    "--batch-size": ("batch_size", dict(type=int, help="images per step and process")),
    "--val-batch-size": ("val_batch_size", dict(type=int)),
    "--epochs": ("epochs", dict(type=int)),
    "--steps": ("steps", dict(type=int, help="length of the run in steps (instead of epochs)")),
    "--optimizer": ("optimizer", dict(choices=OPTIMIZERS)),
    "--lr": ("lr", dict(type=float)),
    "--backbone-lr-divisor": ("backbone_lr_divisor", dict(type=float,
                                                          help="backbone lr = lr / this (paper: 5)")),
    "--weight-decay": ("weight_decay", dict(type=float)),
    "--schedule": ("schedule", dict(choices=SCHEDULES)),
    "--poly-power": ("poly_power", dict(type=float)),
    "--warmup-steps": ("warmup_steps", dict(type=int)),
    "--clip-grad-norm": ("clip_grad_norm", dict(type=float)),
    "--workers": ("workers", dict(type=int, help="data-loading processes")),
    "--seed": ("seed", dict(type=int)),
    "--device": ("device", dict(help="cpu, cuda or cuda:N (default: cuda when available)")),
    "--amp": ("amp", dict(action=argparse.BooleanOptionalAction,
                          help="mixed precision (float16 on CUDA, bfloat16 on CPU)")),
    "--amp-dtype": ("amp_dtype", dict(choices=("float16", "bfloat16"))),
    "--channels-last": ("channels_last", dict(action=argparse.BooleanOptionalAction)),
    "--memory-efficient": ("memory_efficient", dict(action=argparse.BooleanOptionalAction,
                                                    help="recompute dense layers in backward (less memory)")),
    "--sync-bn": ("sync_bn", dict(action=argparse.BooleanOptionalAction)),
    "--eval-every": ("eval_every", dict(type=int, metavar="STEPS", help="default: every epoch")),
    "--checkpoint-every": ("checkpoint_every", dict(type=int, metavar="STEPS")),
    "--log-every": ("log_every", dict(type=int, metavar="STEPS")),
    "--stop-at": ("stop_at", dict(type=int, metavar="STEP", help="end this run at that step (resumable)")),
    "--progress": ("progress", dict(action=argparse.BooleanOptionalAction, help="progress bars")),
}

# `train det`: the detection datasets and options (the segmentation-only ones are left out)
_DET_FLAGS = dict(_FLAGS)
for _flag in ("--crop-size", "--memory-efficient", "--poly-power"):
    del _DET_FLAGS[_flag]
_DET_FLAGS.update({
    "--dataset": ("dataset", dict(choices=list_datasets("det"))),
    "--backbone-weights": ("backbone_weights", dict(
        metavar="FILE|imagenet", help="torchvision VGG16 state_dict for the backbone, or 'imagenet' for "
                                      "torchvision's (downloaded once into the torch hub cache)")),
    "--dataset-kwargs": ("dataset_kwargs", dict(type=json_object, metavar="JSON",
                                                help="extra dataset arguments, e.g. "
                                                     "'{\"num_sequences\": 4}'")),
    "--model-kwargs": ("model_kwargs", dict(
        type=json_object, metavar="JSON",
        help="SSD arguments, e.g. '{\"width\": 0.25, \"aspect_ratios\": [[0.5, 0.33]], ...}'")),
    "--image-size": ("image_size", dict(type=_size_or_none, metavar="HxW",
                                        help="network input, e.g. 300 or 240x320 (default: the model's)")),
    "--zoom-out": ("zoom_out", dict(type=float, metavar="RATIO",
                                    help="max zoom-out (expand) of the augmentation, 1 = off (default 4)")),
    "--neg-pos-ratio": ("neg_pos_ratio", dict(type=float, help="hard negatives per positive (3)")),
    "--match-iou": ("match_iou", dict(type=float, help="prior-to-box matching IoU (0.5)")),
    "--ap-method": ("ap_method", dict(choices=AP_METHODS,
                                      help="AP definition of the main metric (default voc)")),
    "--ap-iou": ("ap_iou", dict(type=float, help="IoU of a true positive (0.5)")),
    "--momentum": ("momentum", dict(type=float)),
    "--milestones": ("milestones", dict(type=_int_list, metavar="STEPS",
                                        help="step schedule: steps at which the lr drops by gamma")),
    "--gamma": ("gamma", dict(type=float, help="step schedule: lr factor at each milestone")),
})


def _add_task_parser(tasks, name: str, help: str, flags, handler):
    parser = tasks.add_parser(name, help=help, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", action="append", default=[],
                        help="a YAML or JSON file of TrainConfig options; repeatable (later files win)")
    parser.add_argument("--resume", nargs="?", const="last", default=argparse.SUPPRESS, metavar="CKPT",
                        help="continue from a checkpoint (without a path: <out>/last.pt; 'auto': "
                             "<out>/last.pt when there is one, else start)")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="start over in a run folder that holds an earlier run (its results are deleted)")
    for flag, (field, kwargs) in flags.items():
        parser.add_argument(flag, dest=field, default=argparse.SUPPRESS, **kwargs)
    parser.add_argument("--set", dest="assignments", action="append", type=_assignment, default=[],
                        metavar="KEY=VALUE", help="any TrainConfig option (value parsed as YAML); repeatable")
    parser.set_defaults(func=handler)


def register(subparsers):
    train = subparsers.add_parser("train",
                                  help="train a model (segmentation: train seg, detection: train det)")
    tasks = train.add_subparsers(dest="task", required=True)
    _add_task_parser(tasks, "seg", "train a segmentation model", _FLAGS, cmd_train_seg)
    _add_task_parser(tasks, "det", "train an SSD detector", _DET_FLAGS, cmd_train_det)


def config_from_args(args, task: str = "seg"):
    """The TrainConfig of a parsed command line: the task's defaults, the config files in order,
    then --set, then the flags. A bad value is blamed on where it came from (the file, "--set" or
    the command line)."""
    from fastladder.train.config import TrainConfig, load_config_file

    layers = [(path, load_config_file(path)) for path in getattr(args, "config", None) or []]
    layers.append(("--set", dict(getattr(args, "assignments", []))))
    fields = set(TrainConfig.field_names())
    flags = {key: value for key, value in vars(args).items() if key in fields and key != "task"}
    layers.append(("command line", {**flags, "task": task}))
    return TrainConfig.from_layers(layers)


def cmd_train_seg(args) -> int:
    return _run(args, "seg")


def cmd_train_det(args) -> int:
    return _run(args, "det")


def _run(args, task: str) -> int:
    from fastladder.errors import FastladderError
    from fastladder.train.loop import TrainingInterrupted, train

    try:
        config = config_from_args(args, task)
        summary = train(config)
    except FastladderError as error:
        print(f"fastladder train {task}: error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as interrupted:
        print(f"fastladder train {task}: {interrupted}", file=sys.stderr)
        return interrupted.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the first step: nothing trained, nothing to save
        print(f"fastladder train {task}: interrupted before training began; nothing was saved",
              file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") != "0":
        return 0
    best = summary["best"]
    print(f"\ntrained {config.model} on {config.dataset}: {summary['step']}/{summary['total_steps']} steps "
          f"in {summary['seconds']:.0f} s")
    if best.get("value") is not None:
        print(f"best {best['metric']}: {best['value']:.4f} at step {best['step']}")
    for label, key in (("best checkpoint", "best_checkpoint"), ("last checkpoint", "checkpoint"),
                       ("log", "log"), ("curves", "curves")):
        if summary.get(key):
            print(f"{label}: {summary[key]}")
    return 0
