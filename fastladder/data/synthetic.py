"""The built-in synthetic street scenes: a small Cityscapes-like set that needs no download.

Each scene is a street seen from a car: sky on top, a skyline and building facades (with windows
in perspective) or park vegetation along the horizon, a road trapezoid (asphalt grain, dashed
centre line) with sidewalks (tiles, curbs) on both sides, and occluding objects of varied size and
position painted far to near: trees, poles with traffic signs, cars and persons. Every class has
its own colour range and texture, then a global illumination change (gain, colour cast, a light
gradient) and pixel noise are applied. Ignore pixels: an "ego vehicle" hood at the bottom of some
images (label id 1) and a thin "rectification border" (id 2) at the sides of others.

Classes (Cityscapes label id → train id): road 7 → 0, sidewalk 8 → 1, building 11 → 2, pole 17 → 5,
traffic sign 20 → 7, vegetation 21 → 8, sky 23 → 10, person 24 → 11, car 26 → 13. At the
default 128×256 persons are at least 9 px wide and poles at least 6 px.

The files are written in the Cityscapes layout (city "synthetic") and read back through
:class:`fastladder.data.Cityscapes`, so a model trained on them exercises the real loader:

    root/leftImg8bit/{split}/synthetic/synthetic_000000_{i:06d}_leftImg8bit.png
    root/gtFine/{split}/synthetic/synthetic_000000_{i:06d}_gtFine_labelIds.png
    root/synthetic_manifest.json      per split: image count, size, seed, generator version

Default sizes: train 300 images, val 60, test 60. The same (split, size, seed, count) always gives
byte-identical PNGs (each image has its own random stream, derived from seed, split and index).
"""
import json
import os
import warnings
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from fastladder.errors import ArgumentError, DataError
from fastladder.data.cityscapes import Cityscapes

__all__ = ["SyntheticScenes", "render_street_scene", "SYNTHETIC_LABEL_IDS", "DEFAULT_NUM_IMAGES"]

GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic_manifest.json"
CITY = "synthetic"
DEFAULT_NUM_IMAGES = {"train": 300, "val": 60, "test": 60}

# Cityscapes label ids written by the generator
UNLABELED, EGO_VEHICLE, BORDER = 0, 1, 2
ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN, VEGETATION, SKY, PERSON, CAR = 7, 8, 11, 17, 20, 21, 23, 24, 26
SYNTHETIC_LABEL_IDS = (ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN, VEGETATION, SKY, PERSON, CAR)

# base colours (RGB, 0–255); each object varies around its pick
_BUILDING_COLORS = np.array([(150, 78, 62), (186, 150, 92), (202, 182, 150), (212, 200, 142), (132, 116, 100),
                             (176, 102, 72), (168, 140, 120)], np.float32)
_CAR_COLORS = np.array([(172, 22, 28), (24, 36, 118), (226, 226, 222), (28, 28, 32), (214, 112, 22),
                        (110, 20, 70)], np.float32)
_SHIRT_COLORS = np.array([(200, 30, 150), (230, 120, 20), (120, 40, 170), (20, 150, 160), (210, 40, 40),
                          (240, 240, 240), (250, 200, 30)], np.float32)
_TROUSER_COLORS = np.array([(30, 40, 80), (25, 25, 28), (70, 60, 50), (50, 70, 120)], np.float32)
_SKIN_COLORS = np.array([(240, 200, 170), (200, 150, 110), (140, 95, 65), (90, 60, 40)], np.float32)


# --- noise and geometry helpers --------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Bilinearly interpolated N(0, 1) lattice noise, features of about ``cell`` pixels: [H, W] float32."""
    rows, cols = int(np.ceil(height / cell)) + 2, int(np.ceil(width / cell)) + 2
    lattice = rng.standard_normal((rows, cols)).astype(np.float32)
    y = (np.arange(height, dtype=np.float32) + 0.5) / cell
    x = (np.arange(width, dtype=np.float32) + 0.5) / cell
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = lattice[y0][:, x0] * (1 - fx) + lattice[y0][:, x0 + 1] * fx
    bottom = lattice[y0 + 1][:, x0] * (1 - fx) + lattice[y0 + 1][:, x0 + 1] * fx
    # bilinear blending of independent values shrinks the variance; rescale towards unit variance
    return (top * (1 - fy) + bottom * fy) * 1.5


class _Canvas:
    """The label map and colour image being painted, with the shared noise fields."""

    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.height, self.width = height, width
        self.label = np.zeros((height, width), np.uint8)
        self.image = np.zeros((height, width, 3), np.float32)
        self.ys = np.arange(height, dtype=np.float32)[:, None] + 0.5  # pixel centres
        self.xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
        self.fine = rng.standard_normal((height, width)).astype(np.float32)
        self.medium = _smooth_noise(rng, height, width, max(2.0, width / 100))
        self.coarse = _smooth_noise(rng, height, width, width / 12)
        # foliage brightness: leaf-sized blobs plus speckle, shared by all vegetation
        self.leaf = (0.45 + 0.75 * np.clip(0.5 + 0.35 * self.medium + 0.3 * self.fine, 0, 1))[..., None]

    def window(self, top: float, bottom: float, left: float, right: float):
        """Slices of the pixels whose centres may lie in [top, bottom) × [left, right), or None."""
        y0, y1 = max(0, int(np.floor(top))), min(self.height, int(np.ceil(bottom)))
        x0, x1 = max(0, int(np.floor(left))), min(self.width, int(np.ceil(right)))
        if y0 >= y1 or x0 >= x1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def grid(self, window):
        """Pixel-centre coordinates (ys [h, 1], xs [1, w]) of a window."""
        return self.ys[window[0]], self.xs[:, window[1]]

    def paint(self, window, mask: np.ndarray, label_id: int, color: np.ndarray) -> None:
        """Sets label and colour of the window's pixels under ``mask``; color is [3] or [h, w, 3]."""
        labels, pixels = self.label[window], self.image[window]
        labels[mask] = label_id
        pixels[mask] = np.broadcast_to(color, pixels.shape)[mask]


class _Street:
    """Perspective of a straight street: horizon row, vanishing column and the ground lines through
    the vanishing point, each given by its column at the bottom row. Depth is ``t`` = (y − horizon) /
    (H − horizon): 1 at the bottom row, → 0 at the horizon; an object ``h`` camera heights tall
    standing at depth t spans t·(H − horizon)·h rows."""

    def __init__(self, canvas: _Canvas, rng: np.random.Generator):
        height, width = canvas.height, canvas.width
        self.horizon = height * rng.uniform(0.36, 0.46)
        self.ground = height - self.horizon
        self.vanish_x = width * rng.uniform(0.38, 0.62)
        self.road_left = width * rng.uniform(-0.15, 0.2)
        self.road_right = width * rng.uniform(0.8, 1.15)
        self.side_left = self.road_left - width * rng.uniform(0.25, 0.6)
        self.side_right = self.road_right + width * rng.uniform(0.25, 0.6)

    def line_x(self, bottom_x: float, t):
        """Column of the ground line with bottom column ``bottom_x`` at depth t."""
        return self.vanish_x + (bottom_x - self.vanish_x) * t

    def row(self, t):
        return self.horizon + t * self.ground

    def depth(self, y):
        return (y - self.horizon) / self.ground


# --- scene parts -----------------------------------------------------------------------------------

def _paint_sky(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    top = np.array([rng.uniform(55, 100), rng.uniform(115, 150), rng.uniform(185, 230)], np.float32)
    bottom = np.array([rng.uniform(150, 190), rng.uniform(185, 210), rng.uniform(215, 245)], np.float32)
    blend = np.clip(canvas.ys / street.horizon, 0, 1)[..., None]  # [H, 1, 1]
    color = top * (1 - blend) + bottom * blend
    cloud = np.clip(canvas.coarse * 0.45 + rng.uniform(-0.5, 0.1), 0, 0.6)[..., None]
    color = color * (1 - cloud) + np.array([236, 238, 244], np.float32) * cloud
    whole = (slice(0, canvas.height), slice(0, canvas.width))
    canvas.paint(whole, np.ones((canvas.height, canvas.width), bool), SKY,
                 color + canvas.fine[..., None] * 2.0)


def _foliage_color(canvas: _Canvas, window, rng: np.random.Generator, haze: float = 0.0) -> np.ndarray:
    base = np.array([rng.uniform(35, 85), rng.uniform(90, 145), rng.uniform(15, 55)], np.float32)
    color = base * canvas.leaf[window]
    return color * (1 - haze) + np.array([170, 190, 210], np.float32) * haze


def _paint_skyline(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    """Distant buildings and tree clumps standing on the horizon, slightly hazy."""
    width, height = canvas.width, canvas.height
    x = 0.0
    while x < width:
        block_width = width * rng.uniform(0.04, 0.12)
        top = street.horizon - height * rng.uniform(0.03, 0.17)
        window = canvas.window(top, street.horizon + 1, x, x + block_width)
        x += block_width
        if window is None:
            continue
        ys, xs = canvas.grid(window)
        if rng.random() < 0.7:
            mask = np.broadcast_to(ys >= top, (ys.shape[0], xs.shape[1]))
            color = _BUILDING_COLORS[rng.integers(len(_BUILDING_COLORS))] * rng.uniform(0.85, 1.1)
            color = color * 0.7 + np.array([170, 190, 210], np.float32) * 0.3
            canvas.paint(window, mask, BUILDING, color + 4 * canvas.medium[window][..., None])
        else:
            bumps = top + height * 0.03 * canvas.medium[window]
            mask = ys >= bumps
            canvas.paint(window, mask, VEGETATION, _foliage_color(canvas, window, rng, haze=0.2))


def _paint_ground(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    """Road between the road lines, sidewalks out to the side lines, grass verge beyond them."""
    window = canvas.window(street.horizon, canvas.height, 0, canvas.width)
    if window is None:
        return
    ys, xs = canvas.grid(window)
    t = np.maximum(street.depth(ys), 1e-3)
    road_left, road_right = street.line_x(street.road_left, t), street.line_x(street.road_right, t)
    side_left, side_right = street.line_x(street.side_left, t), street.line_x(street.side_right, t)
    shape = (ys.shape[0], xs.shape[1])
    fine, medium = canvas.fine[window][..., None], canvas.medium[window][..., None]

    verge = np.ones(shape, bool)
    canvas.paint(window, verge, VEGETATION, _foliage_color(canvas, window, rng))

    # sidewalk: tiles in street coordinates (lateral offset per unit depth, distance 1/t)
    sidewalk = (xs >= side_left) & (xs < side_right)
    base = np.array([rng.uniform(140, 175), rng.uniform(125, 155), rng.uniform(140, 170)], np.float32)
    lateral = (xs - street.vanish_x) / (t * canvas.width)
    tile = rng.uniform(0.1, 0.2)
    joints = (np.mod(lateral / tile, 1.0) < 0.08) | (np.mod(1.0 / t / (tile * 3), 1.0) < 0.08)
    color = base * np.where(joints, 0.78, 1.0)[..., None] + 5 * medium + 4 * fine
    curb_width = 0.02 * canvas.width * t
    curb = (np.abs(xs - road_left) < curb_width) | (np.abs(xs - road_right) < curb_width)
    color = np.where(curb[..., None], np.array([205, 205, 200], np.float32) + 4 * fine, color)
    canvas.paint(window, sidewalk, SIDEWALK, color)

    # road: asphalt grain and a dashed centre line
    road = (xs >= road_left) & (xs < road_right)
    grey = rng.uniform(68, 105)
    base = np.array([grey, grey, grey * rng.uniform(1.0, 1.1)], np.float32)
    color = base + 7 * fine + 5 * medium
    centre_bottom = (street.road_left + street.road_right) / 2 + canvas.width * rng.uniform(-0.1, 0.1)
    centre = street.line_x(centre_bottom, t)
    dashes = np.mod(1.0 / t * rng.uniform(0.6, 1.0) + rng.random(), 1.0) < 0.5
    marking = (np.abs(xs - centre) < np.maximum(0.014 * canvas.width * t, 0.4)) & dashes
    color = np.where(marking[..., None], np.array([225, 225, 212], np.float32) + 3 * fine, color)
    canvas.paint(window, road, ROAD, color)


def _paint_facades(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    """Building fronts (and park vegetation) along both sidewalks, as vertical planes in perspective.

    A facade column at depth t spans from its base on the side line up to hy − t·G·(h − 1) for a
    facade h camera heights tall. Along the street the facade is cut into segments in the distance
    coordinate z = 1/t, each with its own colour, height and window grid.
    """
    xs = canvas.xs[0]
    for side_bottom in (street.side_left, street.side_right):
        # depth of each column on this side's facade plane (≤ 0 on the other side of the street)
        t = (xs - street.vanish_x) / (side_bottom - street.vanish_x)
        on_side = t > 1e-3
        z = 1.0 / np.maximum(t, 1e-3)
        edges = [0.0]
        end = rng.uniform(4.0, 12.0)
        while edges[-1] < end:
            edges.append(edges[-1] + rng.uniform(0.5, 2.5))
        segment = np.searchsorted(np.array(edges), z) - 1  # [W], index of the segment of each column
        count = len(edges) - 1
        is_building = rng.random(count) < 0.8
        heights = np.where(is_building, rng.uniform(3.0, 10.0, count), rng.uniform(1.6, 3.5, count))
        present = on_side & (segment < count)
        segment = np.clip(segment, 0, count - 1)
        building_color = _BUILDING_COLORS[rng.integers(len(_BUILDING_COLORS), size=count)]
        building_color = building_color * rng.uniform(0.85, 1.12, (count, 1)).astype(np.float32)
        floor = rng.uniform(1.6, 2.3, count)
        window_spacing = rng.uniform(0.12, 0.3, count)
        phase = rng.random(count)
        columns = np.nonzero(present)[0]
        if columns.size == 0:
            continue
        # work on the facade's bounding window only
        cols = slice(columns[0], columns[-1] + 1)
        t, z, segment, present = t[cols], z[cols], segment[cols], present[cols]
        base_row = street.row(t)
        top_row = street.horizon - t * street.ground * (heights[segment] - 1.0)
        window = canvas.window(top_row.min() - 0.5 * t.max() * street.ground, base_row.max(),
                               cols.start, cols.stop)
        if window is None:
            continue
        ys = canvas.ys[window[0]]
        coarse, medium, fine = canvas.coarse[window], canvas.medium[window], canvas.fine[window]
        # height above the ground in camera heights, for window rows and vegetation tops
        height_above = (base_row[None, :] - ys) / np.maximum(t * street.ground, 1e-3)[None, :]
        facade = present[None, :] & (ys < base_row[None, :])

        color = building_color[segment][None, :, :] + 6 * coarse[..., None] + 5 * medium[..., None]
        floor_phase = np.mod(height_above / floor[segment][None, :], 1.0)
        column_phase = np.mod(z / window_spacing[segment] + phase[segment], 1.0)[None, :]
        windows = ((floor_phase > 0.3) & (floor_phase < 0.78) & (height_above > floor[segment][None, :])
                   & (column_phase > 0.3) & (column_phase < 0.75))
        glass = np.array([48, 58, 74], np.float32) + 14 * coarse[..., None] + 3 * fine[..., None]
        color = np.where(windows[..., None], glass, color)
        building_mask = facade & is_building[segment][None, :] & (ys >= top_row[None, :])
        canvas.paint(window, building_mask, BUILDING, color)

        bumpy_top = top_row[None, :] + 0.25 * t[None, :] * street.ground * medium
        park_mask = facade & ~is_building[segment][None, :] & (ys >= bumpy_top)
        if park_mask.any():
            canvas.paint(window, park_mask, VEGETATION, _foliage_color(canvas, window, rng))


def _paint_tree(canvas: _Canvas, street: _Street, rng: np.random.Generator, t: float, x: float) -> None:
    """A trunk and a crown of 2–4 overlapping discs with ragged edges (all vegetation)."""
    scale = t * street.ground
    ground_row = street.row(t)
    trunk_height = scale * rng.uniform(1.3, 2.2)
    trunk_half = max(0.8, 0.06 * scale)
    window = canvas.window(ground_row - trunk_height, ground_row, x - trunk_half, x + trunk_half)
    if window is not None:
        ys, xs = canvas.grid(window)
        mask = np.broadcast_to(np.abs(xs - x) < trunk_half, (ys.shape[0], xs.shape[1]))
        bark = np.array([rng.uniform(60, 90), rng.uniform(45, 65), rng.uniform(25, 40)], np.float32)
        canvas.paint(window, mask, VEGETATION, bark + 6 * canvas.fine[window][..., None])
    radius = scale * rng.uniform(0.6, 1.0)
    centre_row = ground_row - trunk_height - 0.5 * radius
    window = canvas.window(centre_row - 2 * radius, centre_row + 1.6 * radius, x - 2 * radius, x + 2 * radius)
    if window is None:
        return
    ys, xs = canvas.grid(window)
    mask = np.zeros((ys.shape[0], xs.shape[1]), bool)
    for _ in range(rng.integers(2, 5)):
        cy = centre_row + radius * rng.uniform(-0.5, 0.3)
        cx = x + radius * rng.uniform(-0.6, 0.6)
        r = radius * rng.uniform(0.55, 0.9) * (1 + 0.12 * canvas.medium[window])
        mask |= (ys - cy) ** 2 + (xs - cx) ** 2 < r ** 2
    canvas.paint(window, mask, VEGETATION, _foliage_color(canvas, window, rng))


def _paint_pole(canvas: _Canvas, street: _Street, rng: np.random.Generator, t: float, x: float,
                with_sign: bool) -> None:
    """A metal pole (shaded like a cylinder), optionally carrying a traffic sign near its top."""
    scale = t * street.ground
    ground_row = street.row(t)
    half = 0.5 * (canvas.width / 256) * (6 + 6 * t)
    top_row = ground_row - scale * rng.uniform(2.8, 4.5)
    window = canvas.window(top_row, ground_row, x - half, x + half)
    if window is not None:
        ys, xs = canvas.grid(window)
        across = np.clip((xs - (x - half)) / (2 * half), 0, 1)
        shade = 0.7 + 0.55 * np.sin(np.pi * across)
        base = np.array([105, 114, 126], np.float32) * rng.uniform(0.85, 1.15)
        color = base * shade[..., None] + 3 * canvas.fine[window][..., None]
        mask = np.broadcast_to(np.abs(xs - x) < half, (ys.shape[0], xs.shape[1]))
        canvas.paint(window, mask, POLE, np.broadcast_to(color, mask.shape + (3,)))
    if not with_sign:
        return
    size = max(14 * canvas.width / 256, scale * rng.uniform(0.45, 0.6))
    # mounted about 2–2.6 camera heights up, but never above the image (the pole top often is)
    cy = max(ground_row - scale * rng.uniform(1.9, 2.6), size / 2 + 1)
    cx = x + size * rng.uniform(-0.2, 0.2)
    window = canvas.window(cy - size / 2, cy + size / 2, cx - size / 2, cx + size / 2)
    if window is None:
        return
    ys, xs = canvas.grid(window)
    dy, dx = (ys - cy) / (size / 2), (xs - cx) / (size / 2)
    kind = rng.integers(3)
    if kind == 0:    # blue information board with a white border
        mask = (np.abs(dy) < 1) & (np.abs(dx) < 1)
        inner = (np.abs(dy) < 0.75) & (np.abs(dx) < 0.75)
        color = np.where(inner[..., None], np.array([20, 55, 175], np.float32), np.float32(235))
    elif kind == 1:  # prohibition disc: red rim, white inside
        radius = np.sqrt(dy ** 2 + dx ** 2)
        mask = radius < 1
        color = np.where((radius < 0.7)[..., None], np.float32(240), np.array([200, 20, 30], np.float32))
    else:            # warning diamond: yellow with a black rim
        diamond = np.abs(dy) + np.abs(dx)
        mask = diamond < 1.1
        color = np.where((diamond < 0.85)[..., None], np.array([245, 205, 20], np.float32), np.float32(20))
    color = np.broadcast_to(color, mask.shape + (3,)) + 3 * canvas.fine[window][..., None]
    canvas.paint(window, mask, TRAFFIC_SIGN, color)


def _paint_car(canvas: _Canvas, street: _Street, rng: np.random.Generator, t: float, x: float) -> None:
    """A car seen from behind: body, cabin with a dark rear window, wheels, tail lights."""
    road_width = (street.road_right - street.road_left) * t
    width = road_width * rng.uniform(0.26, 0.33)
    height = width * rng.uniform(0.68, 0.85)
    ground_row = street.row(t)
    top = ground_row - height
    window = canvas.window(top, ground_row, x - width / 2, x + width / 2)
    if window is None:
        return
    ys, xs = canvas.grid(window)
    v = (ys - top) / height          # 0 at the roof, 1 at the ground
    u = (xs - x) / (width / 2)       # −1 … 1 across
    body = (v >= 0.45) & (v < 0.88) & (np.abs(u) < 1 - 0.25 * np.clip(0.52 - v, 0, 1))
    cabin_half = 0.78 - 0.2 * (0.45 - v) / 0.45
    cabin = (v < 0.45) & (np.abs(u) < cabin_half)
    wheels = (v >= 0.75) & (np.abs(u) > 0.55) & (np.abs(u) < 0.95)
    mask = body | cabin | wheels
    paint = _CAR_COLORS[rng.integers(len(_CAR_COLORS))] * rng.uniform(0.85, 1.1)
    shade = (0.8 + 0.3 * (1 - v))[..., None]
    color = np.broadcast_to(paint * shade, mask.shape + (3,)).copy()
    rear_window = cabin & (v > 0.08) & (np.abs(u) < cabin_half - 0.1)
    color[rear_window] = np.array([35, 42, 55], np.float32)
    color[wheels & ~body] = np.float32(22)
    lights = (v >= 0.5) & (v < 0.62) & (np.abs(u) > 0.72) & (np.abs(u) < 0.95)
    color[lights] = np.array([235, 40, 30], np.float32)
    color += 3 * canvas.fine[window][..., None]
    canvas.paint(window, mask, CAR, color)


def _paint_person(canvas: _Canvas, street: _Street, rng: np.random.Generator, t: float, x: float) -> None:
    """A standing or walking person: head, torso with arms, two legs."""
    height = t * street.ground * rng.uniform(1.05, 1.25)
    width = height / rng.uniform(2.5, 2.9)
    ground_row = street.row(t)
    top = ground_row - height
    window = canvas.window(top, ground_row, x - width / 2, x + width / 2)
    if window is None:
        return
    ys, xs = canvas.grid(window)
    v = (ys - top) / height
    u = (xs - x) / (width / 2)
    head = ((v - 0.09) / 0.09) ** 2 + (u / 0.42) ** 2 < 1
    torso = (v >= 0.16) & (v < 0.56) & (np.abs(u) < 0.95 - 0.25 * np.clip(0.25 - v, 0, 1) / 0.09)
    stride = rng.uniform(0.0, 0.25)
    left_leg = (v >= 0.54) & (np.abs(u + 0.42 + stride * (v - 0.54)) < 0.36)
    right_leg = (v >= 0.54) & (np.abs(u - 0.42 - stride * (v - 0.54)) < 0.36)
    mask = head | torso | left_leg | right_leg
    color = np.empty(mask.shape + (3,), np.float32)
    color[...] = _TROUSER_COLORS[rng.integers(len(_TROUSER_COLORS))] * rng.uniform(0.85, 1.15)
    color[torso] = _SHIRT_COLORS[rng.integers(len(_SHIRT_COLORS))] * rng.uniform(0.85, 1.1)
    color[head] = _SKIN_COLORS[rng.integers(len(_SKIN_COLORS))]
    color += 4 * canvas.fine[window][..., None] + 4 * canvas.medium[window][..., None]
    canvas.paint(window, mask, PERSON, color)


def _paint_objects(canvas: _Canvas, street: _Street, rng: np.random.Generator) -> None:
    """Trees, poles (with signs), cars and persons, painted far to near; objects at about the same
    depth overlap in random order."""
    lerp = lambda a, b, f: a + (b - a) * f  # noqa: E731
    objects = []  # (sort depth, painter)
    for side in ("left", "right"):
        road_edge = street.road_left if side == "left" else street.road_right
        side_edge = street.side_left if side == "left" else street.side_right
        for _ in range(rng.integers(0, 3)):
            t = rng.uniform(0.15, 1.2)
            x = street.line_x(lerp(road_edge, side_edge, rng.uniform(0.6, 0.9)), t)
            objects.append((t, lambda t=t, x=x: _paint_tree(canvas, street, rng, t, x)))
    for index in range(rng.integers(1, 4)):
        road_edge, side_edge = ((street.road_left, street.side_left) if rng.random() < 0.5
                                else (street.road_right, street.side_right))
        t = rng.uniform(0.3, 1.1)
        x = street.line_x(lerp(road_edge, side_edge, rng.uniform(0.12, 0.35)), t)
        sign = index == 0 or rng.random() < 0.5
        objects.append((t, lambda t=t, x=x, sign=sign: _paint_pole(canvas, street, rng, t, x, sign)))
    for _ in range(rng.integers(1, 5)):
        t = rng.uniform(0.2, 1.05)
        x = street.line_x(lerp(street.road_left, street.road_right, rng.uniform(0.15, 0.85)), t)
        objects.append((t, lambda t=t, x=x: _paint_car(canvas, street, rng, t, x)))
    for _ in range(rng.integers(1, 6)):
        t = rng.uniform(0.35, 1.1)
        if rng.random() < 0.75:
            road_edge, side_edge = ((street.road_left, street.side_left) if rng.random() < 0.5
                                    else (street.road_right, street.side_right))
            bottom = lerp(road_edge, side_edge, rng.uniform(0.2, 0.8))
        else:  # crossing the road
            bottom = lerp(street.road_left, street.road_right, rng.uniform(0.1, 0.9))
        x = street.line_x(bottom, t)
        objects.append((t, lambda t=t, x=x: _paint_person(canvas, street, rng, t, x)))
    jitter = rng.uniform(-0.06, 0.06, len(objects))
    for order in np.argsort([t for t, _ in objects] + jitter, kind="stable"):
        objects[order][1]()


def _paint_ignore_regions(canvas: _Canvas, rng: np.random.Generator) -> None:
    height, width = canvas.height, canvas.width
    if rng.random() < 0.6:  # ego vehicle: the hood, a curved band at the bottom
        hood_top = height * (1 - rng.uniform(0.06, 0.11)) + height * 0.04 * (2 * canvas.xs / width - 1) ** 2
        mask = np.broadcast_to(canvas.ys >= hood_top, (height, width))
        paint = rng.uniform(20, 70) * np.array([1.0, 1.0, rng.uniform(1.0, 1.2)], np.float32)
        reflection = 1 + 0.35 * np.clip(canvas.coarse, -1, 1)[..., None]
        canvas.paint((slice(0, height), slice(0, width)), mask, EGO_VEHICLE, paint * reflection)
    if rng.random() < 0.5:  # rectification border: a few black columns at both sides
        border = int(rng.integers(1, 4))
        mask = np.zeros((height, width), bool)
        mask[:, :border] = True
        mask[:, width - border:] = True
        canvas.paint((slice(0, height), slice(0, width)), mask, BORDER, np.zeros(3, np.float32))


def render_street_scene(height: int, width: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Draws one synthetic street scene.

    Args:
        height, width: image size in pixels (at least 32 each).
        rng: the numpy random generator that decides everything in the scene.

    Returns:
        (image uint8 [H, W, 3] RGB, label uint8 [H, W] of Cityscapes label ids)
    """
    if height < 32 or width < 32:
        raise ValueError(f"synthetic scenes need at least 32×32 pixels, got height={height}, width={width}")
    canvas = _Canvas(height, width, rng)
    street = _Street(canvas, rng)
    _paint_sky(canvas, street, rng)
    _paint_skyline(canvas, street, rng)
    _paint_ground(canvas, street, rng)
    _paint_facades(canvas, street, rng)
    _paint_objects(canvas, street, rng)
    _paint_ignore_regions(canvas, rng)
    # global illumination: gain, colour cast and a linear light gradient; then sensor noise
    gain = rng.uniform(0.7, 1.25) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    gradient = (1 + rng.uniform(-0.25, 0.25) * (canvas.xs / width - 0.5)
                + rng.uniform(-0.25, 0.25) * (canvas.ys / height - 0.5))
    noise = rng.standard_normal((height, width, 3)).astype(np.float32) * rng.uniform(2.0, 7.0)
    image = canvas.image * gain * gradient[..., None] + noise
    image = np.where((canvas.label == BORDER)[..., None], 0.0, image)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), canvas.label


# --- files -----------------------------------------------------------------------------------------

def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(_split_code(split), index)))


def _paths(root: Path, split: str, index: int) -> Tuple[Path, Path]:
    stem = f"{CITY}_000000_{index:06d}"
    return (root / "leftImg8bit" / split / CITY / f"{stem}_leftImg8bit.png",
            root / "gtFine" / split / CITY / f"{stem}_gtFine_labelIds.png")


def _read_manifest(root: Path) -> Dict:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return {"generator": "fastladder.data.SyntheticScenes", "version": GENERATOR_VERSION, "splits": {}}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("splits"), dict):
            raise ValueError("no 'splits' object")
    except ValueError as error:
        raise DataError(f"{path}: not a synthetic-scenes manifest ({error}); delete it to "
                        f"regenerate") from error
    return manifest


def _write_manifest(root: Path, manifest: Dict) -> None:
    path = root / MANIFEST_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)  # atomic: a reader never sees half a manifest


def _parameters(num_images: int, size: Sequence[int], seed: int) -> Dict:
    return {"num_images": int(num_images), "size": [int(size[0]), int(size[1])], "seed": int(seed),
            "version": GENERATOR_VERSION}


def _check_parameters(split: str, num_images, size, seed) -> Tuple[int, Tuple[int, int], int]:
    if not isinstance(split, str) or split not in DEFAULT_NUM_IMAGES:
        raise ArgumentError(f"split must be one of {tuple(DEFAULT_NUM_IMAGES)}, got {split!r}")
    if not isinstance(num_images, (int, np.integer)) or num_images <= 0:
        raise ArgumentError(f"num_images must be a positive int, got {num_images!r}")
    if len(size) != 2 or any(not isinstance(s, (int, np.integer)) or s < 32 for s in size):
        raise ArgumentError(f"size must be (height, width) ints of at least 32, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ArgumentError(f"seed must be a non-negative int, got {seed!r}")
    return int(num_images), (int(size[0]), int(size[1])), int(seed)


def _split_folders(root: Path, split: str) -> Tuple[Path, Path]:
    return root / "leftImg8bit" / split, root / "gtFine" / split


def _check_no_foreign_data(root: Path, split: str) -> None:
    """Refuses to write into a split that holds something other than generated scenes."""
    for folder in _split_folders(root, split):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name != CITY:
                raise DataError(f"{folder} holds {entry.name!r}, which the synthetic-scene generator did "
                                f"not write: give SyntheticScenes a root of its own")
            for item in entry.iterdir():
                if not (item.name.startswith(f"{CITY}_") and item.suffix == ".png"):
                    raise DataError(f"{entry} holds {item.name!r}, which the synthetic-scene generator "
                                    f"did not write: give SyntheticScenes a root of its own")


class SyntheticScenes(Cityscapes):
    """The built-in synthetic street scenes, generated on first use and read as Cityscapes.

    Args:
        root: folder for the generated files (created when missing).
        split: "train", "val" or "test" (test labels are ignored by the Cityscapes loader, as for
            real Cityscapes).
        transforms: optional callable ``(image, label) -> (image, label)``.
        num_images: images in the split; None takes the default (train 300, val 60, test 60).
        size: (height, width) of the images in pixels.
        seed: the seed of the whole set; each split and image draws from its own stream of it.

    If ``root`` already holds the split generated with the same count, size, seed and generator
    version (as recorded in ``root/synthetic_manifest.json``), it is reused; otherwise the split is
    (re)generated, with a warning when it replaces older files. Folders holding anything else (e.g.
    real Cityscapes) are never written into: that is a ValueError.

    ``ds[i]`` is (image uint8 Tensor[3, H, W], label int64 Tensor[H, W] of the 19 Cityscapes train
    ids, 255 = ignore) after ``transforms``; ``num_classes`` is 19 (the Cityscapes classes; the
    scenes use 9 of them, see ``SYNTHETIC_LABEL_IDS``).
    """

    def __init__(self, root: Union[str, os.PathLike], split: str = "train",
                 transforms: Optional[Callable] = None, *, num_images: Optional[int] = None,
                 size: Tuple[int, int] = (128, 256), seed: int = 0):
        if num_images is None and split in DEFAULT_NUM_IMAGES:
            num_images = DEFAULT_NUM_IMAGES[split]
        num_images, size, seed = _check_parameters(split, num_images, size, seed)
        root = Path(root)
        if not self.is_generated(root, split, num_images, size, seed):
            recorded = _read_manifest(root)["splits"].get(split) if root.is_dir() else None
            requested = _parameters(num_images, size, seed)
            if recorded == requested:
                warnings.warn(f"{root}: files of synthetic split {split!r} are missing, regenerating it",
                              stacklevel=2)
            elif recorded is not None:
                warnings.warn(f"{root}: synthetic split {split!r} was generated with {recorded}, "
                              f"regenerating it with {requested}", stacklevel=2)
            self.generate(root, split, num_images, size, seed)
        self.size, self.seed = size, seed
        super().__init__(root, split, target="trainIds", transforms=transforms)

    @staticmethod
    def is_generated(root: Union[str, os.PathLike], split: str, num_images: int, size: Sequence[int],
                     seed: int) -> bool:
        """Whether ``root`` holds ``split`` generated with exactly these parameters, all files present."""
        root = Path(root)
        if not (root / MANIFEST_NAME).is_file():
            return False
        if _read_manifest(root)["splits"].get(split) != _parameters(num_images, size, seed):
            return False
        image_folder = root / "leftImg8bit" / split / CITY
        if not image_folder.is_dir() or len(list(image_folder.glob("*_leftImg8bit.png"))) != num_images:
            return False
        return all(path.is_file() for path in _paths(root, split, num_images - 1))

    @classmethod
    def generate(cls, root: Union[str, os.PathLike], split: str, num_images: int,
                 size: Sequence[int] = (128, 256), seed: int = 0,
                 progress: bool = True) -> List[Tuple[Path, Path]]:
        """Writes ``num_images`` scenes of ``size`` (height, width) for ``split`` into ``root`` in the
        Cityscapes layout, replacing a previous generation of that split, and records the parameters
        in the manifest. Returns the (image, label) paths."""
        num_images, size, seed = _check_parameters(split, num_images, size, seed)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        _check_no_foreign_data(root, split)
        manifest = _read_manifest(root)
        # drop the old record first: an interrupted run must not look complete
        manifest["splits"].pop(split, None)
        manifest["version"] = GENERATOR_VERSION
        _write_manifest(root, manifest)
        for folder in _split_folders(root, split):
            old = folder / CITY
            if old.is_dir():
                for item in old.iterdir():
                    item.unlink()
            old.mkdir(parents=True, exist_ok=True)
        files = []
        bar = tqdm(range(num_images), desc=f"synthetic scenes ({split})", unit="img", disable=not progress)
        for index in bar:
            image, label = render_street_scene(size[0], size[1], _image_rng(seed, split, index))
            image_path, label_path = _paths(root, split, index)
            Image.fromarray(image).save(image_path, compress_level=1)  # noise does not compress anyway
            Image.fromarray(label).save(label_path, compress_level=1)
            files.append((image_path, label_path))
        manifest["splits"][split] = _parameters(num_images, size, seed)
        _write_manifest(root, manifest)
        return files
