"""``fastladder visualize`` and ``fastladder attack``: the analysis tools from the command line.

    fastladder visualize --model ladder_densenet121 --weights ckpt.pt \\
        --objective channel:features.conv0:3 --objective class:0 --out viz/
    fastladder attack --model ladder_densenet121 --weights ckpt.pt --attack dag img1.png img2.png --out adv/

Weights: a training checkpoint records the model, its classes and the normalization it was trained
with; the model is then fed images in [0, 1] through ``fastladder.nn.Normalize`` with that mean and
std, exactly as training normalized them. A plain state_dict needs ``--model`` and ``--num-classes``
(``--model-kwargs`` as JSON when the model is not the registry's default size) and ``--dataset`` or
``--mean/--std`` (RGB, 0–255 scale, as everywhere in fastladder). Checkpoints of DDP or
torch.compile models load as they are.
"""
import difflib
import json
import re
import sys
from pathlib import Path

from fastladder.errors import ArgumentError, DataError

__all__ = ["register", "parse_objective"]

_ATTACKS = ("deepfool", "ddn", "fgsm", "pgd", "dag")


def register(subparsers):
    common = dict(formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    viz = subparsers.add_parser("visualize",
                                help="feature visualisation: images that excite units, channels, classes",
                                description=_VISUALIZE_HELP, **common)
    _model_arguments(viz)
    viz.add_argument("--objective", action="append", default=[], metavar="SPEC",
                     help="what to maximise (repeatable): channel:LAYER:I, unit:LAYER:I[:Y:X], layer:LAYER, "
                          "class:I, segclass:I[:TOP,LEFT,BOTTOM,RIGHT]; LAYER is a module path such as "
                          "features.conv0")
    viz.add_argument("--filters", action="store_true", help="also save the first convolution's filters")
    viz.add_argument("--out", required=True, help="output folder for the PNG grids")
    viz.add_argument("--steps", type=int, default=256)
    viz.add_argument("--size", type=int, default=None,
                     help="image side in pixels (default 128; an SSD: its input size)")
    viz.add_argument("--num-images", type=int, default=4, help="images per objective")
    viz.add_argument("--lr", type=float, default=0.05)
    viz.add_argument("--transforms", default="jitter,scale,rotate,blur",
                     help="comma-separated subset of jitter,scale,rotate,blur, or 'none'")
    viz.add_argument("--no-fourier", action="store_true",
                     help="one parameter per pixel instead of a 1/f spectrum")
    viz.add_argument("--no-decorrelate", action="store_true", help="plain RGB parameters")
    viz.add_argument("--l2", type=float, default=0.0, help="weight of the L2 penalty")
    viz.add_argument("--tv", type=float, default=0.0, help="weight of the total-variation penalty")
    viz.add_argument("--diversity", type=float, default=0.0, help="weight of the diversity term")
    viz.add_argument("--seed", type=int, default=0)
    viz.set_defaults(func=cmd_visualize)

    attack = subparsers.add_parser("attack",
                                   help="adversarial examples for a classifier or a segmentation model",
                                   description=_ATTACK_HELP, **common)
    _model_arguments(attack)
    attack.add_argument("--attack", required=True, choices=_ATTACKS)
    attack.add_argument("images", nargs="+", help="image files (RGB)")
    attack.add_argument("--out", required=True, help="output folder: one figure per image and summary.json")
    attack.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), help="resize the images first")
    attack.add_argument("--labels", type=int, nargs="+",
                        help="true classes of the images (classifiers); default: the clean predictions")
    attack.add_argument("--target-class", type=int,
                        help="targeted attack: every image (pgd/ddn/fgsm) or every pixel not of that class "
                             "(dag)")
    attack.add_argument("--eps", type=float, default=8 / 255, help="fgsm/pgd radius ([0, 1] scale)")
    attack.add_argument("--alpha", type=float, help="pgd step size (default 2.5 eps / steps)")
    attack.add_argument("--norm", choices=("linf", "l2"), default="linf", help="pgd ball")
    attack.add_argument("--random-start", action="store_true", help="pgd random start")
    attack.add_argument("--steps", type=int,
                        help="iterations (deepfool 50, ddn 100, pgd 10; dag: --max-iter)")
    attack.add_argument("--overshoot", type=float, default=0.02, help="deepfool overshoot")
    attack.add_argument("--gamma", type=float, help="ddn norm change (0.05) or dag step (0.5, 0–255 units)")
    attack.add_argument("--max-iter", type=int, default=200, help="dag iterations")
    attack.add_argument("--class-names", help="comma-separated class names for the figures")
    attack.set_defaults(func=cmd_attack)


_VISUALIZE_HELP = """Activation maximisation with Lucid's regularisers (1/f Fourier parameterisation, colour
decorrelation, random jitter / scale / rotation / blur). One PNG grid per objective; the settings
are stored in the PNG's text metadata."""

_ATTACK_HELP = """Adversarial examples: deepfool / ddn (minimal L2), fgsm / pgd (bounded) for classifiers,
dag (Dense Adversary Generation) for segmentation models. Writes a figure per image (original,
adversarial, amplified perturbation, both predictions) and summary.json (success rate, L2 / L∞,
changed pixels)."""


def _model_arguments(parser):
    from fastladder.data.registry import list_datasets
    from fastladder.eval import _common

    _common.add_model_arguments(parser, weights_required=False)
    parser.add_argument("--dataset", choices=sorted(set(list_datasets("seg")) | set(list_datasets("det"))),
                        default=None,
                        help="whose normalization applies when the weights do not record theirs")


def _load_model(args):
    """(model in eval mode on args.device, layer-name prefix, meta): a trained model is wrapped as
    ``Sequential(Normalize(mean, std), model)`` so that it takes images in [0, 1] and normalizes them
    as training did; its layers are then named ``1.<name>``."""
    import torch

    from fastladder.eval import _common
    from fastladder.models import create_model
    from fastladder.nn import Normalize

    if args.weights:
        model, meta = _common.load_model_and_meta(args, task=None)
        mean, std = _common.normalization(args, meta, meta.get("task") or "seg")
    else:
        if not args.model or not args.num_classes:
            raise ArgumentError("without --weights the model is not known: give --model and --num-classes")
        try:
            model = create_model(args.model, num_classes=args.num_classes, **(args.model_kwargs or {}))
        except TypeError as error:
            raise ArgumentError(f"--model-kwargs {args.model_kwargs}: {error}") from error
        print(f"warning: no --weights, {args.model} has random weights", file=sys.stderr)
        meta = {"model_name": args.model, "num_classes": args.num_classes, "dataset": args.dataset,
                "task": "det" if hasattr(model, "priors_for") else "seg"}
        if args.mean is None and args.std is None and args.dataset is None:
            return model.to(args.device).eval(), "", meta
        mean, std = _common.normalization(args, meta, meta["task"])
    # Normalize takes its statistics on the 0–1 scale of its [0, 1] input
    wrapped = torch.nn.Sequential(Normalize([v / 255 for v in mean], [v / 255 for v in std]), model)
    return wrapped.to(args.device).eval(), "1.", meta


def _without_prefix(text: str, prefix: str) -> str:
    """``text`` with the wrapper's layer-name prefix removed from the module names it lists."""
    return re.sub(r"(?<=[\s'\[(])" + re.escape(prefix), "", text) if prefix else text


def check_layers(model, objectives, prefix: str):
    """Every layer an objective names is a module of the model; an unknown name is an
    ArgumentError listing the closest names."""
    names = [name[len(prefix):] for name, _ in model.named_modules() if name.startswith(prefix) and name]
    known = set(names)
    for objective in objectives:
        for layer in objective.layers:
            name = layer[len(prefix):]
            if name not in known:
                close = difflib.get_close_matches(name, names, n=6, cutoff=0.5)
                hint = f"close names: {', '.join(close)}" if close else \
                    f"its modules include: {', '.join(n for n in names if '.' not in n)}"
                raise ArgumentError(f"--objective: {name!r} is not a module of the model; {hint}")


def parse_objective(spec: str, prefix: str = ""):
    """An objective from its command-line form (see ``fastladder visualize --help``); ``prefix`` is
    prepended to layer paths (``"1."`` when the model is wrapped as Sequential(Normalize, model))."""
    from fastladder.analysis import feature_viz

    parts = spec.split(":")
    kind, rest = parts[0], parts[1:]
    try:
        if kind == "channel" and len(rest) == 2:
            return feature_viz.channel(prefix + rest[0], int(rest[1]))
        if kind == "unit" and len(rest) in (2, 4):
            position = [int(v) for v in rest[2:]] or [None, None]
            return feature_viz.unit(prefix + rest[0], int(rest[1]), *position)
        if kind == "layer" and len(rest) == 1:
            return feature_viz.layer(prefix + rest[0])
        if kind == "class" and len(rest) == 1:
            return feature_viz.class_logit(int(rest[0]))
        if kind == "segclass" and len(rest) in (1, 2):
            region = tuple(int(v) for v in rest[1].split(",")) if len(rest) == 2 else None
            if region is not None and len(region) != 4:
                raise ValueError
            return feature_viz.segmentation_class(int(rest[0]), region)
    except ValueError:
        pass
    raise ArgumentError(f"--objective {spec!r}: expected channel:LAYER:I, unit:LAYER:I[:Y:X], layer:LAYER, "
                     "class:I or "
                     f"segclass:I[:TOP,LEFT,BOTTOM,RIGHT]")


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def cmd_visualize(args) -> int:
    import torch
    from fastladder.analysis import feature_viz
    from fastladder.analysis._report import save_image_grid, save_png

    if not args.objective and not args.filters:
        raise ArgumentError("nothing to do: give at least one --objective or --filters")
    model, prefix, _ = _load_model(args)
    objectives = [parse_objective(spec, prefix) for spec in args.objective]
    check_layers(model, objectives, prefix)
    detector = getattr(model[-1] if isinstance(model, torch.nn.Sequential) else model, "image_size", None)
    if args.size is None:
        args.size = max(detector) if detector is not None else 128
    transforms = () if args.transforms in ("none",
                                           "") else tuple(t.strip() for t in args.transforms.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.filters:
        path = save_png(out / "first_layer_filters.png", feature_viz.first_layer_filters(model),
                        {"fastladder": "first_layer_filters", "model": args.model or "",
                         "weights": args.weights or ""})
        print(f"wrote {path}")
    for spec, objective in zip(args.objective, objectives):
        generator = torch.Generator().manual_seed(args.seed)
        settings = dict(objective=spec, steps=args.steps, size=args.size, num_images=args.num_images,
                        lr=args.lr,
                        transforms=list(transforms), fourier=not args.no_fourier,
                        decorrelate=not args.no_decorrelate,
                        l2=args.l2, tv=args.tv, diversity=args.diversity, seed=args.seed)
        try:
            images = feature_viz.visualize(
                model, objective, steps=args.steps, num_images=args.num_images, size=args.size, lr=args.lr,
                transforms=transforms, fourier=not args.no_fourier, decorrelate=not args.no_decorrelate,
                l2=args.l2, tv=args.tv, diversity_weight=args.diversity, generator=generator)
        except ArgumentError as error:  # name the layers as the user does, without the wrapper's prefix
            raise ArgumentError(_without_prefix(str(error), prefix)) from None
        values = feature_viz.objective_values(model, objective, images)
        metadata = {"fastladder": "visualize", "settings": settings, "model": args.model or "",
                    "weights": args.weights or "", "objective_values": values.tolist()}
        path = save_image_grid(out / f"{_file_stem(spec)}.png", images, metadata)
        print(f"wrote {path}  objective {values.mean().item():.4g}")
    return 0


def _read_images(paths, resize):
    import numpy as np
    import torch
    from PIL import Image

    from fastladder.eval._images import read_image

    images = []
    for path in paths:
        image = read_image(path)  # a missing, truncated or foreign file is a DataError naming it
        if resize:
            image = torch.from_numpy(np.asarray(
                Image.fromarray(image.permute(1, 2, 0).numpy()).resize((resize[1], resize[0]), Image.BILINEAR)
            ).copy()).permute(2, 0, 1)
        images.append(image.float() / 255)
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) > 1:
        raise DataError(f"the images differ in size {sorted(sizes)}: give --resize H W")
    return torch.stack(images)


def cmd_attack(args) -> int:
    import torch
    from fastladder.analysis import adversarial
    from fastladder.analysis._report import attack_summary, flipped_fraction, save_attack_figure

    model, _, meta = _load_model(args)
    detector = getattr(model[-1] if isinstance(model, torch.nn.Sequential) else model, "priors_for", None)
    if detector is not None:
        return _attack_detector(args, model, meta)
    images = _read_images(args.images, args.resize).to(args.device)
    with torch.no_grad():
        clean = model(images)
        clean = clean[0] if isinstance(clean, (tuple, list)) else clean
    clean_prediction = clean.argmax(1)
    dense = clean.dim() == 4
    if dense != (args.attack == "dag"):
        raise ArgumentError(f"--attack {args.attack} is for "
                            f"{'segmentation' if args.attack == 'dag' else 'classification'} "
                            f"models; this model's output has shape {tuple(clean.shape)}")
    if args.labels is not None:
        if dense or len(args.labels) != len(args.images):
            raise ArgumentError(f"--labels takes one class per image for a classifier ({len(args.images)} "
                                f"images), got {len(args.labels)} values")
        labels = torch.tensor(args.labels, device=images.device)
    else:
        labels = clean_prediction
    target = None
    if args.target_class is not None:
        target = torch.full_like(labels, args.target_class)
    if args.attack == "deepfool":
        result = adversarial.deepfool(model, images, labels, steps=args.steps or 50, overshoot=args.overshoot)
    elif args.attack == "ddn":
        result = adversarial.ddn(model, images, labels, target_labels=target, steps=args.steps or 100,
                                 gamma=args.gamma or 0.05)
    elif args.attack == "fgsm":
        result = adversarial.fgsm(model, images, labels, eps=args.eps, target_labels=target)
    elif args.attack == "pgd":
        result = adversarial.pgd(model, images, labels, eps=args.eps, alpha=args.alpha,
                                 steps=args.steps or 10,
                                 norm=args.norm, random_start=args.random_start, target_labels=target)
    else:
        mask = None if target is None else labels != args.target_class
        result = adversarial.dag(model, images, labels, target_labels=target, mask=mask,
                                 gamma=args.gamma or 0.5, max_iter=args.max_iter)
    with torch.no_grad():
        adversarial_output = model(result.adversarial)
        adversarial_output = adversarial_output[0] if isinstance(adversarial_output, (tuple, list)) \
            else adversarial_output
    adversarial_prediction = adversarial_output.argmax(1)
    changed = flipped_fraction(adversarial_prediction, clean_prediction) if dense else None
    summary = attack_summary(result, changed_fraction=changed)
    summary.update(attack=args.attack, images=[str(p) for p in args.images],
                   model=meta.get("model_name") or "", weights=args.weights or "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    class_names = args.class_names.split(",") if args.class_names else meta.get("class_names")
    palette = None
    if dense:
        from fastladder.eval._common import palette as dataset_palette
        palette = dataset_palette("seg", meta.get("dataset"), int(clean.shape[1]))
    for i, path in enumerate(args.images):
        figure = save_attack_figure(out / f"{_file_stem(Path(path).stem)}_{args.attack}.png", images[i:i + 1],
                                    result.adversarial[i:i + 1], clean_prediction[i:i + 1],
                                    adversarial_prediction[i:i + 1], class_names=class_names, palette=palette,
                                    metadata={"fastladder": "attack", "attack": args.attack,
                                              "image": str(path),
                                              "success": bool(result.success[i]), "l2": result.l2[i].item(),
                                              "linf": result.linf[i].item()})
        print(f"wrote {figure}")
    _write_summary(out, summary, args.attack, dense)
    return 0


def _write_summary(out: Path, summary, attack: str, dense: bool):
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{attack}: success rate {summary['success_rate']:.3f}, median L2 {summary['median_l2']:.4g}, "
          f"median Linf {summary['median_linf']:.4g}"
          + (f", changed pixels {summary['mean_changed_fraction']:.3f}" if dense else ""))


def _attack_detector(args, model, meta) -> int:
    """``--attack dag`` on an SSD: DAG on its per-prior class scores (ssd_attack), which removes every
    detection, or with ``--target-class`` gives every detection that class. The images are resized
    to the SSD's input size."""
    import torch

    from fastladder.analysis import adversarial
    from fastladder.analysis._report import amplified_perturbation, attack_summary, save_png, to_uint8
    from fastladder.eval.detection_commands import draw_detections

    if args.attack != "dag":
        raise ArgumentError(f"--attack {args.attack} is for classifiers; an SSD detector is attacked with "
                            f"--attack dag (suppress its detections, or --target-class to mislabel them)")
    ssd = model[-1] if isinstance(model, torch.nn.Sequential) else model
    height, width = ssd.image_size
    images = _read_images(args.images, args.resize or (height, width)).to(args.device)
    mode = "suppress" if args.target_class is None else "mislabel"
    result = adversarial.ssd_attack(model, images, mode=mode, target_label=args.target_class,
                                    gamma=args.gamma or 0.5, max_iter=args.max_iter)
    summary = attack_summary(result)
    summary.update(attack=f"dag ({mode})", images=[str(p) for p in args.images],
                   model=meta.get("model_name") or "", weights=args.weights or "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    with torch.no_grad():
        clean, attacked = model(images).to_list(), model(result.adversarial).to_list()
    for i, path in enumerate(args.images):
        tiles = []
        for batch, found in ((images, clean), (result.adversarial, attacked)):
            boxes, scores, labels = found[i]
            picture = draw_detections(to_uint8(batch[i].cpu()), boxes.float().cpu() * scale, scores.cpu(),
                                      labels.cpu())
            tiles.append(picture.permute(2, 0, 1))
        tiles.append(to_uint8(amplified_perturbation(result.adversarial[i:i + 1], images[i:i + 1])[0].cpu()))
        figure = save_png(out / f"{_file_stem(Path(path).stem)}_dag.png", torch.cat(tiles, dim=2),
                          {"fastladder": "attack", "attack": f"dag ({mode})", "image": str(path),
                           "success": bool(result.success[i]), "l2": result.l2[i].item(),
                           "linf": result.linf[i].item()})
        print(f"wrote {figure}")
    _write_summary(out, summary, f"dag ({mode})", False)
    return 0
