"""Metrics and PNG figures of the analysis tools (attacks and feature visualisation)."""
import json
import math
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import torch

__all__ = ["make_grid", "to_uint8", "save_png", "read_png_metadata", "save_image_grid", "flipped_fraction",
           "attack_summary", "amplified_perturbation", "save_attack_figure"]

PathLike = Union[str, Path]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Floating images in [0, 1] (values outside are clipped) → uint8 in [0, 255]; uint8 passes through."""
    if images.dtype == torch.uint8:
        return images.cpu()
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def make_grid(images: torch.Tensor, *, nrow: Optional[int] = None, padding: int = 2,
              pad_value: float = 1.0) -> torch.Tensor:
    """Tiles images [K, 3, H, W] (floating in [0, 1], or uint8) into one uint8 Tensor[3, H', W'],
    ``nrow`` per row (default ceil(sqrt(K))), ``padding`` pixels of ``pad_value`` around each."""
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [K, 3, H, W] batch, got shape {tuple(images.shape)}")
    images = to_uint8(images)
    k, _, h, w = images.shape
    columns = nrow or math.ceil(math.sqrt(k))
    rows = math.ceil(k / columns)
    grid = torch.full((3, rows * (h + padding) + padding, columns * (w + padding) + padding),
                      int(round(pad_value * 255)), dtype=torch.uint8)
    for index in range(k):
        row, column = divmod(index, columns)
        top, left = padding + row * (h + padding), padding + column * (w + padding)
        grid[:, top:top + h, left:left + w] = images[index]
    return grid


def save_png(path: PathLike, image: torch.Tensor, metadata: Optional[Mapping[str, object]] = None) -> Path:
    """Writes a uint8 (or [0, 1] floating) image [3, H, W] as PNG; each ``metadata`` item becomes a
    PNG text chunk (strings as they are, anything else as JSON)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), value if isinstance(value, str) else json.dumps(value, default=str))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image).permute(1, 2, 0).contiguous().numpy()).save(path, pnginfo=info)
    return path


def read_png_metadata(path: PathLike) -> Dict[str, str]:
    """The PNG text chunks of a file, as written by :func:`save_png`."""
    from PIL import Image
    with Image.open(path) as image:
        return dict(image.text)


def save_image_grid(path: PathLike, images: torch.Tensor, metadata: Optional[Mapping[str, object]] = None, *,
                    nrow: Optional[int] = None, padding: int = 2) -> Path:
    """:func:`make_grid` then :func:`save_png`."""
    return save_png(path, make_grid(images, nrow=nrow, padding=padding), metadata)


def flipped_fraction(prediction: torch.Tensor, clean_prediction: torch.Tensor,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fraction of the pixels of ``mask`` (default: all) whose predicted label changed: Tensor[N]
    from label maps [N, H, W]; NaN for an empty mask."""
    if prediction.shape != clean_prediction.shape or prediction.dim() != 3:
        raise ValueError(f"prediction and clean_prediction must be [N, H, W] label maps of one shape, got "
                         f"{tuple(prediction.shape)} and {tuple(clean_prediction.shape)}")
    if mask is None:
        mask = torch.ones_like(prediction, dtype=torch.bool)
    elif mask.shape != prediction.shape:
        raise ValueError(f"mask must be of shape {tuple(prediction.shape)}, got {tuple(mask.shape)}")
    changed = ((prediction != clean_prediction) & mask).flatten(1).sum(1).double()
    return changed / mask.flatten(1).sum(1).double()


def attack_summary(result, *, changed_fraction: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Success rate, per-image and median L2 / L∞ of an :class:`AttackResult` (plus the fraction of
    changed pixels for dense attacks), as plain Python numbers for JSON. The medians are over the
    successful images (NaN when there is none) and over all images."""
    success = result.success.cpu()
    l2, linf = result.l2.double().cpu(), result.linf.double().cpu()

    def median(values, where=None):
        values = values if where is None else values[where]
        return values.median().item() if values.numel() else math.nan

    summary = {
        "num_images": int(success.numel()),
        "success_rate": success.double().mean().item() if success.numel() else math.nan,
        "median_l2": median(l2, success), "median_linf": median(linf, success),
        "median_l2_all": median(l2), "median_linf_all": median(linf),
        "success": success.tolist(), "l2": l2.tolist(), "linf": linf.tolist(),
    }
    if changed_fraction is not None:
        summary["changed_fraction"] = changed_fraction.double().cpu().tolist()
        summary["mean_changed_fraction"] = changed_fraction.double().nanmean().item()
    return summary


def amplified_perturbation(adversarial: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """|adversarial − images| of [N, C, H, W], each image scaled so its largest value is 1 (a zero
    perturbation stays black); the visible form of a perturbation a few grey levels tall."""
    magnitude = (adversarial - images).abs().float()
    peak = magnitude.flatten(1).amax(1).clamp_min(1e-12)
    return magnitude / peak.view(-1, 1, 1, 1)


def _text_image(lines: Sequence[str], height: int, width: int) -> torch.Tensor:
    """White uint8 [3, height, width] with ``lines`` in black (PIL's default font)."""
    from PIL import Image, ImageDraw
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 2
    for line in lines:
        draw.text((2, y), line, fill=(0, 0, 0))
        y += 12
    import numpy as np
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


def save_attack_figure(path: PathLike, images: torch.Tensor, adversarial: torch.Tensor,
                       clean_prediction: torch.Tensor, adversarial_prediction: torch.Tensor, *,
                       class_names: Optional[Sequence[str]] = None, palette: Optional[torch.Tensor] = None,
                       metadata: Optional[Mapping[str, object]] = None, min_size: int = 96) -> Path:
    """One row per image: original, adversarial, amplified perturbation, then both predictions.

    Classification: predictions [N] are class indices, written as text panels (names from
    ``class_names``). Segmentation: predictions [N, H, W] are label maps, coloured with
    :func:`fastladder.data.labels.colorize` (``palette``: [num_classes, 3] uint8, default Cityscapes).
    Small images are enlarged (nearest) to at least ``min_size`` pixels per side.
    """
    if images.shape != adversarial.shape or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError("images and adversarial must be [N, 3, H, W] of one shape, got "
                         f"{tuple(images.shape)} and "
                         f"{tuple(adversarial.shape)}")
    n, _, h, w = images.shape
    factor = max(1, math.ceil(min_size / min(h, w)))
    panels = [images.float().cpu(), adversarial.float().cpu(),
              amplified_perturbation(adversarial, images).cpu()]
    dense = clean_prediction.dim() == 3
    if dense:
        from fastladder.data.labels import CITYSCAPES_PALETTE, colorize
        colours = palette if palette is not None else CITYSCAPES_PALETTE
        for prediction in (clean_prediction, adversarial_prediction):
            panels.append(colorize(prediction.cpu(), colours).permute(0, 3, 1, 2).float() / 255)
    rows = []
    for i in range(n):
        tiles = [to_uint8(p[i]).repeat_interleave(factor, 1).repeat_interleave(factor, 2) for p in panels]
        if not dense:
            def name(c):
                c = int(c)
                return class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
            tiles.append(_text_image([f"clean: {name(clean_prediction[i])}",
                                      f"adversarial: {name(adversarial_prediction[i])}"], h * factor,
                                     max(w * factor, 130)))
        rows.append(tiles)
    width = sum(tile.shape[2] for tile in rows[0]) + 2 * (len(rows[0]) + 1)
    height = n * (h * factor + 2) + 2
    canvas = torch.full((3, height, width), 255, dtype=torch.uint8)
    for r, tiles in enumerate(rows):
        left, top = 2, 2 + r * (h * factor + 2)
        for tile in tiles:
            canvas[:, top:top + tile.shape[1], left:left + tile.shape[2]] = tile
            left += tile.shape[2] + 2
    return save_png(path, canvas, metadata)
