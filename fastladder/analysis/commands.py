"""``fastladder visualize`` and ``fastladder attack``: the analysis tools from the command line.

    fastladder visualize --model ladder_densenet121 --weights ckpt.pt \\
        --objective channel:features.conv0:3 --objective class:0 --out viz/
    fastladder attack --model ladder_densenet121 --weights ckpt.pt --attack dag img1.png img2.png --out adv/

Weights: a checkpoint dict ``{"model": state_dict, "model_name", "model_kwargs", "num_classes"}``
(``--model`` may then be left out) or a plain state_dict (``--model`` and ``--num-classes`` needed,
``--model-kwargs`` as JSON when the model is not the registry's default size).
"""
import json
import re
import sys
from pathlib import Path

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
    viz.add_argument("--size", type=int, default=128, help="image side in pixels")
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
    parser.add_argument("--model", help="registered model name (fastladder.models.list_models())")
    parser.add_argument("--weights", help="checkpoint or state_dict file (default: random weights)")
    parser.add_argument("--num-classes", type=int, help="classes (needed for a plain state_dict)")
    parser.add_argument("--model-kwargs", default=None, help="JSON dict of extra model constructor arguments")
    parser.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="input normalisation mean on the 0–1 scale (the model is wrapped in Normalize)")
    parser.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="input normalisation std (0–1)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _load_model(args):
    """(model in eval mode on args.device, wrapped in Normalize when --mean/--std are given)."""
    import torch
    from fastladder.models import create_model, load_model
    from fastladder.nn import Normalize

    name, num_classes = args.model, args.num_classes
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    if args.weights:
        model = load_model(args.weights, name, num_classes, **kwargs)
    else:
        if not name or not num_classes:
            raise ValueError("the model is not known: give --model and --num-classes (or --weights)")
        model = create_model(name, num_classes=num_classes, **kwargs)
        print(f"warning: no --weights, {name} has random weights", file=sys.stderr)
    if (args.mean is None) != (args.std is None):
        raise ValueError("--mean and --std go together")
    if args.mean is not None:
        model = torch.nn.Sequential(Normalize(args.mean, args.std), model)
        prefix = "1."
    else:
        prefix = ""
    return model.to(args.device).eval(), prefix


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
    raise ValueError(f"--objective {spec!r}: expected channel:LAYER:I, unit:LAYER:I[:Y:X], layer:LAYER, "
                     "class:I or "
                     f"segclass:I[:TOP,LEFT,BOTTOM,RIGHT]")


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def cmd_visualize(args) -> int:
    import torch
    from fastladder.analysis import feature_viz
    from fastladder.analysis._report import save_image_grid, save_png

    if not args.objective and not args.filters:
        raise ValueError("nothing to do: give at least one --objective or --filters")
    model, prefix = _load_model(args)
    objectives = [parse_objective(spec, prefix) for spec in args.objective]
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
        images = feature_viz.visualize(
            model, objective, steps=args.steps, num_images=args.num_images, size=args.size, lr=args.lr,
            transforms=transforms, fourier=not args.no_fourier, decorrelate=not args.no_decorrelate,
            l2=args.l2,
            tv=args.tv, diversity_weight=args.diversity, generator=generator)
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

    images = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if resize:
                image = image.resize((resize[1], resize[0]), Image.BILINEAR)
            images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) > 1:
        raise ValueError(f"the images differ in size {sorted(sizes)}: give --resize H W")
    return torch.stack(images)


def cmd_attack(args) -> int:
    import torch
    from fastladder.analysis import adversarial
    from fastladder.analysis._report import attack_summary, flipped_fraction, save_attack_figure

    model, _ = _load_model(args)
    images = _read_images(args.images, args.resize).to(args.device)
    with torch.no_grad():
        clean = model(images)
        clean = clean[0] if isinstance(clean, (tuple, list)) else clean
    clean_prediction = clean.argmax(1)
    dense = clean.dim() == 4
    if dense != (args.attack == "dag"):
        raise ValueError(f"--attack {args.attack} is for "
                         f"{'segmentation' if args.attack == 'dag' else 'classification'} "
                         f"models; this model's output has shape {tuple(clean.shape)}")
    if args.labels is not None:
        if dense or len(args.labels) != len(args.images):
            raise ValueError(f"--labels takes one class per image for a classifier ({len(args.images)} "
                             "images), got "
                             f"{len(args.labels)} values")
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
    summary.update(attack=args.attack, images=[str(p) for p in args.images], model=args.model or "",
                   weights=args.weights or "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    class_names = args.class_names.split(",") if args.class_names else None
    for i, path in enumerate(args.images):
        figure = save_attack_figure(out / f"{_file_stem(Path(path).stem)}_{args.attack}.png", images[i:i + 1],
                                    result.adversarial[i:i + 1], clean_prediction[i:i + 1],
                                    adversarial_prediction[i:i + 1], class_names=class_names,
                                    metadata={"fastladder": "attack", "attack": args.attack,
                                              "image": str(path),
                                              "success": bool(result.success[i]), "l2": result.l2[i].item(),
                                              "linf": result.linf[i].item()})
        print(f"wrote {figure}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{args.attack}: success rate {summary['success_rate']:.3f}, median L2 {summary['median_l2']:.4g}, "
          f"median Linf {summary['median_linf']:.4g}"
          + (f", changed pixels {summary['mean_changed_fraction']:.3f}" if dense else ""))
    return 0
