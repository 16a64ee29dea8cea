"""Image input and output for prediction and pictures: image folders, videos, PNGs, overlays, grids.

Images travel as uint8 tensors: [3, H, W] when read (the model's layout), [H, W, 3] or [H, W] when
written (the PNG's layout).
"""
import os
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from fastladder.errors import ArgumentError, DataError

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "InputSource", "collect_inputs", "iterate_frames",
           "count_frames", "read_image", "save_png", "overlay", "save_grid"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class InputSource(NamedTuple):
    """One input to predict on: an image file, or a video file (each frame one image).

    ``name`` is the output name without suffix, relative to the output folder: the file's stem,
    under the sub-folder it was found in when it came from a folder input.
    """
    path: Path
    kind: str  # "image" or "video"
    name: str


def _require_av(path: Path):
    try:
        import av
    except ImportError:
        raise ArgumentError(f"reading video {path} needs the `av` package (PyAV), which is not "
                           f"installed: pip install av") from None
    return av


def collect_inputs(inputs: Sequence) -> List[InputSource]:
    """Expands image files, folders (their png/jpg files, recursively, sorted) and video files.

    Raises:
        ArgumentError: an input that does not exist, a file that is neither an image nor a video,
            two inputs that would write the same output name, or a video among the inputs while
            PyAV (``av``) is not installed.
        DataError: a folder without images.
    """
    sources = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"input folder {path} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
            for file in found:
                name = file.relative_to(path).with_suffix("").as_posix()
                sources.append(InputSource(file, "image", name))
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                sources.append(InputSource(path, "image", path.stem))
            elif suffix in VIDEO_EXTENSIONS:
                _require_av(path)
                sources.append(InputSource(path, "video", path.stem))
            else:
                raise ArgumentError(f"input {path} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) "
                                    f"nor a video ({', '.join(VIDEO_EXTENSIONS)})")
        else:
            raise ArgumentError(f"input {path}: no such file or folder")
    seen = {}
    for source in sources:
        if source.name in seen:
            raise ArgumentError(f"inputs {seen[source.name]} and {source.path} would both write "
                                f"outputs named {source.name!r}")
        seen[source.name] = source.path
    return sources


def read_image(path) -> torch.Tensor:
    """An image file as uint8 RGB [3, H, W].

    Raises:
        DataError: the file is missing, truncated or not an image (the message names it).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise DataError(f"{path}: cannot read the image ({reason})") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def count_frames(source: InputSource) -> Optional[int]:
    """How many images a source yields: 1 for an image; the container's frame count for a video
    (None when the container does not record it)."""
    if source.kind == "image":
        return 1
    av = _require_av(source.path)
    try:
        with av.open(str(source.path)) as container:
            frames = container.streams.video[0].frames if container.streams.video else 0
    except (av.FFmpegError, OSError, ValueError):
        return None  # iterate_frames reports it
    return frames or None


def iterate_frames(source: InputSource) -> Iterator[tuple]:
    """Yields (output name, uint8 RGB [3, H, W]) for each image of a source; video frames are named
    ``{stem}_{frame index:06d}`` (0-based) and decoded one at a time."""
    if source.kind == "image":
        yield source.name, read_image(source.path)
        return
    av = _require_av(source.path)
    try:
        with av.open(str(source.path)) as container:
            if not container.streams.video:
                raise DataError(f"{source.path}: holds no video stream")
            for index, frame in enumerate(container.decode(video=0)):
                array = frame.to_ndarray(format="rgb24")
                yield f"{source.name}_{index:06d}", torch.from_numpy(array).permute(2, 0, 1).contiguous()
    except (av.FFmpegError, OSError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{source.path}: cannot read the video ({error})") from error


def _as_hwc(image: torch.Tensor, name: str) -> np.ndarray:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
        kind = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a uint8 tensor, got {kind}")
    if image.dim() == 2:
        image = image.unsqueeze(-1).expand(-1, -1, 3)
    if image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be [H, W, 3] (or [H, W]) uint8, got shape {tuple(image.shape)}")
    return image.cpu().numpy()


def save_png(image: torch.Tensor, path) -> None:
    """Writes uint8 [H, W] (grayscale, e.g. label ids) or [H, W, 3] (RGB) as a PNG; makes the folder."""
    from PIL import Image

    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() not in (2, 3) or (
            image.dim() == 3 and image.shape[-1] != 3):
        is_tensor = isinstance(image, torch.Tensor)
        seen = f"{image.dtype} {tuple(image.shape)}" if is_tensor else type(image).__name__
        raise ValueError(f"save_png({str(path)!r}): image must be uint8 [H, W] or [H, W, 3], got {seen}")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    array = image.cpu().numpy()
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def overlay(image: torch.Tensor, colors: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blends a label colouring over an image: round((1 − alpha)·image + alpha·colors).

    Args:
        image (Tensor[3, H, W] or [H, W, 3] uint8).
        colors (Tensor[H, W, 3] uint8): e.g. :func:`fastladder.data.labels.colorize` of the prediction.
        alpha: weight of the colours, in [0, 1].

    Returns:
        Tensor[H, W, 3] uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if image.dim() == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.permute(1, 2, 0)
    if image.shape != colors.shape or image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"image {tuple(image.shape)} and colors {tuple(colors.shape)} must both be "
                         f"[H, W, 3] (image may also be [3, H, W]) of the same size")
    if image.dtype != torch.uint8 or colors.dtype != torch.uint8:
        raise ValueError(f"image and colors must be uint8, got {image.dtype} and {colors.dtype}")
    blended = image.float() * (1.0 - alpha) + colors.to(image.device).float() * alpha
    return blended.round_().clamp_(0, 255).to(torch.uint8)


def save_grid(rows: Sequence[Sequence[torch.Tensor]], path, titles: Optional[Sequence[str]] = None, *,
              gap: int = 4, background: int = 255) -> None:
    """Writes a picture grid as one PNG, e.g. one row per image: image | ground truth | prediction.

    Every column is as wide as its widest picture and every row as tall as its tallest; smaller
    pictures sit at the top left of their cell. With ``titles``, one line of text names each column.

    Args:
        rows: rows of pictures, each uint8 [H, W, 3] (or [H, W] grayscale); rows may differ in length.
        path: the PNG to write (its folder is made).
        titles: one title per column (at most as many as the longest row).
        gap: pixels between cells and around the grid.
        background: gray level of the gaps, 0–255.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not rows or not any(len(row) for row in rows):
        raise ValueError("save_grid: rows must hold at least one picture")
    pictures = [[_as_hwc(picture, f"rows[{r}][{c}]") for c, picture in enumerate(row)]
                for r, row in enumerate(rows)]
    num_columns = max(len(row) for row in pictures)
    if titles is not None and len(titles) > num_columns:
        raise ValueError(f"save_grid: {len(titles)} titles for a grid of {num_columns} columns")
    widths = [max((row[c].shape[1] for row in pictures if c < len(row)), default=0)
              for c in range(num_columns)]
    heights = [max((picture.shape[0] for picture in row), default=0) for row in pictures]
    font = ImageFont.load_default()
    title_height = 0
    if titles:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        title_height = max(probe.textbbox((0, 0), title, font=font)[3] for title in titles) + gap
    canvas = Image.new("RGB", (sum(widths) + gap * (num_columns + 1),
                               title_height + sum(heights) + gap * (len(pictures) + 1)), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    lefts = [gap + sum(widths[:c]) + gap * c for c in range(num_columns)]
    if titles:
        ink = (0, 0, 0) if background >= 128 else (255, 255, 255)
        for left, title in zip(lefts, titles):
            draw.text((left, gap), title, fill=ink, font=font)
    top = title_height + gap
    for row, height in zip(pictures, heights):
        for left, picture in zip(lefts, row):
            canvas.paste(Image.fromarray(np.ascontiguousarray(picture)), (left, top))
        top += height + gap
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    canvas.save(path)
