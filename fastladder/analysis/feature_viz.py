"""Feature visualisation: first-layer filters and activation maximisation.

Activation maximisation (Erhan et al. 2009; Olah et al. 2017, "Feature Visualization") finds
images that make an *objective* — a channel, a unit, a whole layer, a class logit, a segmentation
class — large, by gradient ascent on the image. Without regularisation the result is a
high-frequency pattern that the model responds to only at that exact pixel alignment; the robust
recipe (Lucid's standard set, reproduced here):

* the image is parameterised in Fourier space, each frequency scaled by 1/frequency, in a
  decorrelated colour space, and squashed into (0, 1) by a sigmoid;
* before every step the image is randomly transformed: padded (constant 0.5), jittered by up to 8
  pixels, scaled by one of 1 + (i − 5)/50 (i = 0…10), rotated by −10…10 degrees, jittered by up
  to 4 pixels, and (an addition of this module) blurred by a Gaussian of random width;
* optional L2 and total-variation penalties, and a diversity term across the K images of a batch.

Objectives name modules by their path in the model (``model.get_submodule(name)``, e.g.
``"features.conv0"``) and read those modules' outputs through forward hooks.
"""
import math
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastladder.errors import ArgumentError

__all__ = ["Objective", "channel", "unit", "layer", "class_logit", "segmentation_class", "diversity",
           "objective_values", "visualize", "random_transform", "objective_robustness", "first_layer_filters",
           "TRANSFORMS", "LUCID_SCALES", "LUCID_ANGLES"]

TRANSFORMS = ("jitter", "scale", "rotate", "blur")
LUCID_SCALES = tuple(1 + (i - 5) / 50 for i in range(11))
LUCID_ANGLES = tuple(float(a) for a in range(-10, 11))
# Lucid's colour correlation of ImageNet images: the square root of the RGB covariance (by SVD);
# its columns are scaled so that the largest has unit norm.
_COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_OUTPUT = "<output>"


# --- objectives ---------------------------------------------------------------------------------

class Objective:
    """A quantity to maximise, one value per image.

    ``fn(activations, output) -> Tensor[K]``: ``activations`` maps each name of ``layers`` to that
    module's output for the batch of K images, ``output`` is the model's output (its first element
    when it returns a tuple). Objectives combine linearly: ``channel(...) + 0.5 * class_logit(...)``.
    """

    def __init__(self, fn: Callable[[Dict[str, torch.Tensor], torch.Tensor], torch.Tensor],
                 layers: Iterable[str] = (), description: str = "objective"):
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.description = description

    def __call__(self, activations: Dict[str, torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        return self.fn(activations, output)

    def __add__(self, other: "Objective") -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a, o: self(a, o) + other(a, o), self.layers + other.layers,
                         f"{self.description} + {other.description}")

    def __mul__(self, weight: float) -> "Objective":
        if not isinstance(weight, (int, float)):
            return NotImplemented
        return Objective(lambda a, o: weight * self(a, o), self.layers, f"{weight:g} * {self.description}")

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return self * -1.0

    def __sub__(self, other: "Objective") -> "Objective":
        return self + (-other)

    def __repr__(self) -> str:
        return f"Objective({self.description})"


def _feature_map(activations, name, description) -> torch.Tensor:
    value = activations[name]
    if value.dim() != 4:
        raise ValueError(f"{description} needs a [K, C, H, W] feature map from layer {name!r}, got shape "
                         f"{tuple(value.shape)}")
    return value


def _channel_index(value: torch.Tensor, i: int, name: str) -> None:
    if not 0 <= i < value.shape[1]:
        raise ValueError(f"channel {i} is out of range for layer {name!r} with {value.shape[1]} channels "
                         f"(output shape {tuple(value.shape)})")


def channel(layer_name: str, i: int) -> Objective:
    """Mean over the spatial positions of channel ``i`` of the module ``layer_name``'s output [K, C, H, W]."""
    def fn(activations, output):
        value = _feature_map(activations, layer_name, "channel objective")
        _channel_index(value, i, layer_name)
        return value[:, i].mean((1, 2))
    return Objective(fn, [layer_name], f"channel({layer_name}, {i})")


def unit(layer_name: str, i: int, y: Optional[int] = None, x: Optional[int] = None) -> Objective:
    """Channel ``i`` of ``layer_name`` at one position (y, x) of its feature map (default: the centre,
    ``H // 2, W // 2``): a single neuron."""
    def fn(activations, output):
        value = _feature_map(activations, layer_name, "unit objective")
        _channel_index(value, i, layer_name)
        h, w = value.shape[-2:]
        row, column = (h // 2 if y is None else y), (w // 2 if x is None else x)
        if not (0 <= row < h and 0 <= column < w):
            raise ValueError(f"unit position (y={row}, x={column}) is outside layer {layer_name!r}'s {h}×{w} "
                             f"feature map")
        return value[:, i, row, column]
    return Objective(fn, [layer_name], f"unit({layer_name}, {i}, {y}, {x})")


def layer(layer_name: str) -> Objective:
    """Mean square of all of ``layer_name``'s outputs per image (DeepDream's objective)."""
    def fn(activations, output):
        return activations[layer_name].flatten(1).pow(2).mean(1)
    return Objective(fn, [layer_name], f"layer({layer_name})")


def class_logit(i: int) -> Objective:
    """Logit ``i`` of a classifier's output [K, num_classes]."""
    def fn(activations, output):
        if output.dim() != 2 or not 0 <= i < output.shape[1]:
            raise ValueError(f"class_logit({i}) needs classification logits [K, num_classes] with more than "
                             f"{i} "
                             f"classes, the model returned shape {tuple(output.shape)}")
        return output[:, i]
    return Objective(fn, [], f"class_logit({i})")


def segmentation_class(i: int, region: Optional[Union[Tuple[int, int, int, int],
                                                      torch.Tensor]] = None) -> Objective:
    """Mean logit of class ``i`` of a segmentation output [K, num_classes, H, W] over ``region``:
    None (the whole image), a box ``(top, left, bottom, right)`` in output pixels (bottom and right
    exclusive), or a BoolTensor[H, W] mask."""
    def fn(activations, output):
        if output.dim() != 4 or not 0 <= i < output.shape[1]:
            raise ValueError(f"segmentation_class({i}) needs dense logits [K, num_classes, H, W] with more "
                             f"than {i} "
                             f"classes, the model returned shape {tuple(output.shape)}")
        logits = output[:, i]
        if region is None:
            return logits.mean((1, 2))
        if isinstance(region, torch.Tensor):
            if region.shape != logits.shape[-2:] or region.dtype != torch.bool:
                raise ValueError("region must be a bool mask of the output's size "
                                 f"{tuple(logits.shape[-2:])}, got "
                                 f"a {region.dtype} tensor of shape {tuple(region.shape)}")
            if not region.any():
                raise ValueError("region is an empty mask")
            mask = region.to(logits.device, logits.dtype)
            return (logits * mask).sum((1, 2)) / mask.sum()
        top, left, bottom, right = region
        if not (0 <= top < bottom <= logits.shape[-2] and 0 <= left < right <= logits.shape[-1]):
            raise ValueError(f"region (top, left, bottom, right) = {tuple(region)} is empty or outside the "
                             f"{logits.shape[-2]}×{logits.shape[-1]} output")
        return logits[:, top:bottom, left:right].mean((1, 2))
    return Objective(fn, [],
                     f"segmentation_class({i}, "
                     f"region={'mask' if isinstance(region, torch.Tensor) else region})")


def diversity(layer_name: str) -> Objective:
    """Lucid's diversity term: minus the mean cosine similarity between the Gram matrix of this
    image's ``layer_name`` features and those of the other images of the batch (0 for K = 1)."""
    def fn(activations, output):
        value = _feature_map(activations, layer_name, "diversity")
        k = value.shape[0]
        if k < 2:
            return value.new_zeros(k)
        features = value.flatten(2)
        grams = F.normalize((features @ features.transpose(1, 2)).flatten(1), dim=1)
        similarity = grams @ grams.t()
        return -(similarity.sum(1) - similarity.diagonal()) / (k - 1)
    return Objective(fn, [layer_name], f"diversity({layer_name})")


@contextmanager
def _capture(model: nn.Module, names: Sequence[str]):
    activations: Dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                available = [n for n, _ in model.named_modules() if n]
                shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
                raise ValueError(f"layer {name!r} is not a submodule of {type(model).__name__}; its "
                                 "submodules are: "
                                 f"{shown}") from None

            def hook(module, inputs, output, name=name):
                activations[name] = output[0] if isinstance(output, (tuple, list)) else output
            handles.append(module.register_forward_hook(hook))
        yield activations
    finally:
        for handle in handles:
            handle.remove()


def _check_ran(model, activations, names, images):
    """A hooked module that did not run (one the eval forward does not use, e.g. a training-only
    auxiliary head, or one a converted inference model folded away) is an error naming the modules
    that do."""
    missing = [name for name in names if name not in activations]
    if not missing:
        return
    ran = []
    handles = [module.register_forward_hook(lambda *_, name=name: ran.append(name))
               for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    ran = list(dict.fromkeys(ran))
    shown = ", ".join(ran[:40]) + (", ..." if len(ran) > 40 else "")
    raise ArgumentError(f"layer(s) {missing} did not run in {type(model).__name__}'s forward pass (eval "
                        "mode; the forward does not use them), so their outputs cannot be read; "
                        f"modules that run: {shown}")


def _evaluate(model, objective, images):
    with _capture(model, objective.layers) as activations:
        output = model(images)
        output = output[0] if isinstance(output, (tuple, list)) else output
        _check_ran(model, activations, objective.layers, images)
        values = objective(activations, output)
    if values.shape != (images.shape[0],):
        raise ValueError(f"{objective!r} must give one value per image ({images.shape[0]}), got shape "
                         f"{tuple(values.shape)}")
    return values


@contextmanager
def _eval_mode(model: nn.Module):
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def objective_values(model: nn.Module, objective: Objective, images: torch.Tensor) -> torch.Tensor:
    """The objective of each image: images [K, 3, H, W] in [0, 1] → Tensor[K] (eval mode, no grad)."""
    with torch.no_grad(), _eval_mode(model):
        return _evaluate(model, objective, images)


# --- image parameterisation ---------------------------------------------------------------------

class _Image(nn.Module):
    """K images [K, 3, H, W] in (0, 1) from unconstrained parameters."""

    def __init__(self, k, height, width, *, fourier, decorrelate, init_std, generator, device):
        super().__init__()
        self.size, self.fourier, self.decorrelate = (height, width), fourier, decorrelate
        if fourier:
            shape = (k, 3, height, width // 2 + 1, 2)
            fy = torch.fft.fftfreq(height)[:, None]
            fx = torch.fft.rfftfreq(width)[None, :]
            frequency = (fy ** 2 + fx ** 2).sqrt()
            # 1/f: natural images' spectra fall off about so; the floor keeps the DC term finite
            self.register_buffer("spectrum_scale", (1.0 / frequency.clamp_min(1.0 / max(height,
                                                                                        width))).to(device))
        else:
            shape = (k, 3, height, width)
        self.param = nn.Parameter((torch.randn(shape, generator=generator) * init_std).to(device))
        correlation = _COLOR_CORRELATION_SQRT / _COLOR_CORRELATION_SQRT.norm(dim=0).max()
        self.register_buffer("color", correlation.to(device))

    def forward(self) -> torch.Tensor:
        if self.fourier:
            spectrum = torch.view_as_complex(self.param) * self.spectrum_scale
            # orthonormal inverse FFT, then Lucid's /4 keeps the initial image near mid-grey
            image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / 4
        else:
            image = self.param
        if self.decorrelate:
            image = torch.einsum("ij,kjhw->kihw", self.color, image)
        return torch.sigmoid(image)


# --- random transforms --------------------------------------------------------------------------

def _choice(values, k, generator):
    values = torch.as_tensor(values, dtype=torch.float32)
    return values[torch.randint(0, len(values), (k,), generator=generator)]


def random_transform(images: torch.Tensor, transforms: Sequence[str] = TRANSFORMS, *,
                     generator: Optional[torch.Generator] = None, jitter: Tuple[int, int] = (8, 4),
                     scales: Sequence[float] = LUCID_SCALES, angles: Sequence[float] = LUCID_ANGLES,
                     blur_sigma: float = 1.0, pad_value: float = 0.5) -> torch.Tensor:
    """Each image of [K, C, H, W] gets its own random transform (differentiable, same size out).

    Geometry is one affine resampling (bilinear, ``affine_grid``/``grid_sample``), content moved by
    jitter → scale → rotation → jitter about the image centre; uncovered pixels take ``pad_value``
    (Lucid pads with constant 0.5). ``"jitter"``: integer shifts up to ±jitter[0] then ±jitter[1]
    pixels per axis; ``"scale"``: a factor drawn from ``scales``; ``"rotate"``: an angle in degrees
    drawn from ``angles``; ``"blur"``: a Gaussian of standard deviation uniform in [0, blur_sigma]
    pixels. Random numbers come from ``generator`` (CPU) so that a seed reproduces the sequence.
    """
    unknown = set(transforms) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"transforms must be a subset of {TRANSFORMS}, got unknown {sorted(unknown)}")
    k, channels, h, w = images.shape
    device, dtype = images.device, images.dtype
    eye = torch.eye(3).repeat(k, 1, 1)

    def translation(limit):
        shift = torch.randint(-limit, limit + 1, (k, 2), generator=generator).float()
        matrix = eye.clone()
        matrix[:, :2, 2] = shift
        return matrix

    forward = eye.clone()  # content transform in centred pixel coordinates (x, y)
    if "jitter" in transforms:
        forward = translation(jitter[0]) @ forward
    if "scale" in transforms:
        s = _choice(scales, k, generator)
        forward = torch.diag_embed(torch.stack([s, s, torch.ones(k)], 1)) @ forward
    if "rotate" in transforms:
        angle = _choice(angles, k, generator) * math.pi / 180
        rotation = eye.clone()
        rotation[:, 0, 0], rotation[:, 0, 1] = angle.cos(), -angle.sin()
        rotation[:, 1, 0], rotation[:, 1, 1] = angle.sin(), angle.cos()
        forward = rotation @ forward
    if "jitter" in transforms:
        forward = translation(jitter[1]) @ forward
    out = images
    if any(t in transforms for t in ("jitter", "scale", "rotate")):
        # grid_sample maps output to input positions in [-1, 1] units: conjugate the inverse content
        # transform by the pixel ↔ normalised scaling (align_corners=False: W pixels span 2 units)
        to_pixels = torch.diag(torch.tensor([w / 2, h / 2, 1.0]))
        sampling = torch.linalg.inv(to_pixels) @ torch.linalg.inv(forward) @ to_pixels
        grid = F.affine_grid(sampling[:, :2].to(device, dtype), [k, channels, h, w], align_corners=False)
        out = F.grid_sample(out - pad_value, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False) + pad_value
    if "blur" in transforms and blur_sigma > 0:
        sigma = torch.rand(k, generator=generator) * blur_sigma
        radius = max(1, math.ceil(2 * blur_sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).to(device, dtype)          # [K, 2r+1]
        kernel = kernel.repeat_interleave(channels, 0)                              # [K*C, 2r+1]
        flat = F.pad(out.reshape(1, k * channels, h, w), (radius,) * 4, mode="replicate")
        flat = F.conv2d(flat, kernel[:, None, None, :], groups=k * channels)
        flat = F.conv2d(flat, kernel[:, None, :, None], groups=k * channels)
        out = flat.reshape(k, channels, h, w)
    return out


def objective_robustness(model: nn.Module, objective: Objective, images: torch.Tensor, *,
                         num_transforms: int = 16,
                         transforms: Sequence[str] = ("jitter", "scale", "rotate"),
                         generator: Optional[torch.Generator] = None, **transform_kwargs) -> torch.Tensor:
    """How much of its objective value an image keeps under random transforms.

    For each image x of [K, 3, H, W]: ``mean over num_transforms random T of objective(T(x)) /
    objective(x)`` (Tensor[K]); T as in :func:`random_transform`. Meaningful for objective(x) > 0
    (a visualisation's objective is): 1 means fully robust, values near 0 mean the image works
    only at its exact pixel alignment.
    """
    with torch.no_grad(), _eval_mode(model):
        reference = _evaluate(model, objective, images)
        kept = torch.stack([_evaluate(model, objective, random_transform(images, transforms,
                                                                         generator=generator,
                                                                           **transform_kwargs))
                            for _ in range(num_transforms)])
    return kept.mean(0) / reference


# --- activation maximisation --------------------------------------------------------------------

def _total_variation(images: torch.Tensor) -> torch.Tensor:
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean((1, 2, 3))
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean((1, 2, 3))
    return dy + dx


def visualize(model: nn.Module, objective: Objective, *, steps: int = 256, num_images: int = 1,
              size: Union[int, Tuple[int, int]] = 64, lr: float = 0.05,
              transforms: Sequence[str] = ("jitter", "scale", "rotate", "blur"), fourier: bool = True,
              decorrelate: bool = True, l2: float = 0.0, tv: float = 0.0, diversity_weight: float = 0.0,
              diversity_layer: Optional[str] = None, init_std: float = 0.01,
              generator: Optional[torch.Generator] = None, progress: bool = True, jitter: Tuple[int,
                                                                                                int] = (8, 4),
              scales: Sequence[float] = LUCID_SCALES, angles: Sequence[float] = LUCID_ANGLES,
              blur_sigma: float = 1.0, pad_value: float = 0.5) -> torch.Tensor:
    """Images that maximise ``objective``, by gradient ascent (Adam) from random images.

    Args:
        model: takes images [K, 3, H, W] in [0, 1] (wrap it with :class:`fastladder.nn.Normalize`
            if it expects normalised input); run in eval mode, its modes are restored afterwards.
            The images live on the device of its first parameter.
        objective: what to maximise (:func:`channel`, :func:`unit`, :func:`layer`,
            :func:`class_logit`, :func:`segmentation_class`, or a linear combination).
        steps: gradient steps.
        num_images: K, images optimised together (diverse with ``diversity_weight`` > 0).
        size: H (= W) or (H, W) of the images, in pixels.
        lr: Adam's learning rate (Lucid's 0.05).
        transforms: random transforms before each step, a subset of ``("jitter", "scale",
            "rotate", "blur")`` (see :func:`random_transform`); ``()`` for none.
        fourier: 1/frequency-scaled Fourier parameterisation (else one parameter per pixel).
        decorrelate: parameters in a decorrelated colour space.
        l2: weight of the penalty mean((x − 0.5)²) per image.
        tv: weight of the total variation mean|∂x/∂y| + mean|∂x/∂x| per image.
        diversity_weight: weight of :func:`diversity` on ``diversity_layer`` (default: the
            objective's first layer).
        init_std: standard deviation of the random initial parameters.
        generator: CPU generator for the initial image and the transforms (reproducibility).
        progress: show a progress bar.
        jitter, scales, angles, blur_sigma, pad_value: the transforms' ranges.

    Returns:
        Tensor[K, 3, H, W] in [0, 1] on the model's device (detached).
    """
    unknown = set(transforms) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"transforms must be a subset of {TRANSFORMS}, got unknown {sorted(unknown)}")
    if not isinstance(objective, Objective):
        raise ValueError("objective must be an Objective (channel(...), unit(...), ...), got "
                         f"{type(objective).__name__}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if steps < 0 or num_images < 1 or height < 1 or width < 1:
        raise ValueError(f"need steps >= 0, num_images >= 1 and a positive size; got steps={steps}, "
                         f"num_images={num_images}, size={size}")
    full = objective
    if diversity_weight:
        name = diversity_layer or (objective.layers[0] if objective.layers else None)
        if name is None:
            raise ValueError(f"diversity_weight needs a diversity_layer: {objective!r} reads no layer")
        full = objective + diversity_weight * diversity(name)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    image = _Image(num_images, height, width, fourier=fourier, decorrelate=decorrelate, init_std=init_std,
                   generator=generator, device=device)
    optimizer = torch.optim.Adam(image.parameters(), lr=lr)
    from tqdm import tqdm
    with _eval_mode(model), _capture(model, full.layers) as activations:
        bar = tqdm(range(steps), desc=f"visualize {objective.description}", disable=not progress, leave=False)
        for _ in bar:
            x = image()
            if transforms:
                x = random_transform(x, transforms, generator=generator, jitter=jitter, scales=scales,
                                     angles=angles,
                                     blur_sigma=blur_sigma, pad_value=pad_value)
            output = model(x)
            output = output[0] if isinstance(output, (tuple, list)) else output
            _check_ran(model, activations, full.layers, x)
            value = full(activations, output)
            loss = -value.sum()
            if l2:
                loss = loss + l2 * (x - 0.5).pow(2).mean((1, 2, 3)).sum()
            if tv:
                loss = loss + tv * _total_variation(x).sum()
            optimizer.zero_grad(set_to_none=True)
            # only the image's parameters: the model's own .grad fields stay untouched
            (gradient,) = torch.autograd.grad(loss, image.param)
            image.param.grad = gradient
            optimizer.step()
            bar.set_postfix(objective=f"{value.mean().item():.3g}", refresh=False)
    with torch.no_grad():
        return image().detach()


# --- first-layer filters --------------------------------------------------------------------------

def first_layer_filters(model: nn.Module, *, scale: int = 8, padding: int = 1,
                        nrow: Optional[int] = None) -> torch.Tensor:
    """The first convolution's filters as one image: uint8 Tensor[3, H', W'].

    Each filter [3, k, k] (or [1, k, k], shown grey) is min–max normalised on its own to [0, 255],
    enlarged ``scale``× (nearest), and placed in a grid of ``nrow`` filters per row (default
    ceil(sqrt(number of filters))) with ``padding`` pixels of white between.
    """
    from fastladder.analysis._report import make_grid
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")
    weight = conv.weight.detach().float().cpu()
    if weight.shape[1] == 1:
        weight = weight.expand(-1, 3, -1, -1)
    elif weight.shape[1] != 3:
        raise ValueError(f"the first convolution reads {weight.shape[1]} channels (weight shape "
                         f"{tuple(weight.shape)}); "
                         f"only 1- or 3-channel filters can be shown as images")
    low = weight.flatten(1).amin(1)[:, None, None, None]
    high = weight.flatten(1).amax(1)[:, None, None, None]
    normalized = torch.where(high > low, (weight - low) / (high - low).clamp_min(1e-12),
                             torch.full_like(weight, 0.5))
    enlarged = normalized.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    return make_grid(enlarged, nrow=nrow, padding=padding, pad_value=1.0)
