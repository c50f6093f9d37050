"""The embedded default dataset ``scenes``: procedurally generated street-like scenes.

No public segmentation dataset can be downloaded everywhere, so picoseg ships a generator of
street-like pictures with pixel-exact labels. They are written once to disk as PNG files in the
layout of :class:`picoseg.data.FolderDataset` and read back exactly as a user's own data would be.

A scene has sky (gradient, clouds) at the top, a row of buildings with window textures, trees
and hedges, a road in perspective with lane markings, tiled sidewalks beside it, and depth-sorted
things standing on the ground: cars, people, thin poles and traffic signs. Class frequencies are
long-tailed like a street dataset, and colour alone does not solve the task: per-image hue
shifts, overlapping colour ranges between classes, textures, noise, lighting gradients, shadows
and blur. Pixels in a thin band along the boundaries of thing classes carry the ignore label
(255), like the void label of Cityscapes.

Generation is deterministic: image ``i`` of split ``s`` is drawn from
``np.random.default_rng([seed, split_index, i])`` (``train`` is split 0, ``val`` split 1), so the
number of images does not change the existing ones, and the same seed gives byte-identical PNGs
(with the same numpy and OpenCV versions).

Usage from the command line::

    python -m picoseg.data.scenes --root data/scenes --num-train 400 --num-val 100
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "DEFAULT_DIFFICULTY",
    "SCENES_CLASSES",
    "SCENES_IGNORE_INDEX",
    "SCENES_PALETTE",
    "class_frequencies",
    "ensure_scenes_dataset",
    "generate_scene",
]

log = logging.getLogger(__name__)

SCENES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "vegetation",
    "sky",
    "pole",
    "traffic_sign",
    "person",
    "car",
)
"""Class names of the ``scenes`` dataset; the index in this tuple is the class id."""

SCENES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (107, 142, 35),
    (70, 130, 180),
    (153, 153, 153),
    (220, 220, 0),
    (220, 20, 60),
    (0, 0, 142),
)
"""RGB colour (0-255) of each class for visualisation, as in Cityscapes."""

SCENES_IGNORE_INDEX = 255
"""Label of the ignored band along the boundaries of thing classes."""

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, POLE, SIGN, PERSON, CAR = range(9)
THING_CLASSES = (POLE, SIGN, PERSON, CAR)

DEFAULT_DIFFICULTY: dict[str, float] = {
    "noise_std": 6.0,
    "color_jitter": 0.35,
    "brightness": 0.25,
    "contrast": 0.25,
    "lighting": 0.3,
    "shadow": 0.45,
    "blur": 0.8,
    "color_overlap": 0.4,
    "texture": 1.0,
    "object_density": 1.0,
    "ignore_width": 1,
}
"""Default difficulty knobs of :func:`generate_scene`.

- ``noise_std``: Gaussian pixel noise, standard deviation in 0-255 units (each image draws
  between half and all of it).
- ``color_jitter``: strength of the per-image hue rotation and saturation change and of the
  per-object colour variation (0 = fixed colours per class).
- ``brightness``, ``contrast``: largest relative change of global brightness / contrast.
- ``lighting``: strength of a linear lighting gradient in a random direction.
- ``shadow``: darkness (0-1) of the soft shadows cast by buildings, cars, people and trees.
- ``blur``: largest Gaussian blur sigma in pixels.
- ``color_overlap``: probability that a thing takes a colour typical of another class (grey
  cars, green signs, grey or green clothes...).
- ``texture``: amplitude multiplier of all surface textures (0 = flat surfaces).
- ``object_density``: multiplier of the expected number of cars, people, poles and trees.
- ``ignore_width``: width in pixels of the ignored band outside thing boundaries (0 = none).
"""

_GENERATOR_VERSION = 1
_SPLITS = ("train", "val")
# World scale: lateral ground units (1.0 = image width at the bottom row) per metre.
_M = 0.097


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise with features of about ``cell`` pixels.

    Args:
        rng: Random generator.
        h: Height in pixels.
        w: Width in pixels.
        cell: Feature size in pixels (> 0).

    Returns:
        float32 array (h, w), values roughly in [0, 1] (cubic interpolation may overshoot).
    """
    cell = max(float(cell), 1.0)
    gh = int(math.ceil(h / cell)) + 2
    gw = int(math.ceil(w / cell)) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    big = cv2.resize(
        grid,
        (int(math.ceil(gw * cell)), int(math.ceil(gh * cell))),
        interpolation=cv2.INTER_CUBIC,
    )
    oy = int(rng.integers(0, max(1, big.shape[0] - h)))
    ox = int(rng.integers(0, max(1, big.shape[1] - w)))
    return big[oy : oy + h, ox : ox + w]


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> np.ndarray:
    """A colour near ``rgb`` (0-1 floats): common brightness scale plus per-channel noise."""
    base = np.asarray(rgb, np.float32)
    scale = 1.0 + rng.normal(0.0, 0.25 * amount)
    shift = rng.normal(0.0, 0.06 * amount, 3)
    return np.clip(base * scale + shift, 0.0, 1.0).astype(np.float32)


def _grey(rng: np.random.Generator, lo: float, hi: float, tint: float = 0.03) -> np.ndarray:
    """A grey between ``lo`` and ``hi`` (0-1) with a slight random tint."""
    v = rng.uniform(lo, hi)
    return np.clip(v + rng.normal(0.0, tint, 3), 0.0, 1.0).astype(np.float32)


_FACADES = (
    (0.55, 0.55, 0.55),
    (0.35, 0.35, 0.37),
    (0.75, 0.70, 0.60),
    (0.62, 0.38, 0.30),
    (0.82, 0.80, 0.76),
    (0.45, 0.36, 0.30),
    (0.70, 0.62, 0.45),
    (0.50, 0.55, 0.60),
)
_CAR_COLOURS = (
    (0.85, 0.85, 0.85),
    (0.08, 0.08, 0.09),
    (0.65, 0.08, 0.08),
    (0.10, 0.20, 0.55),
    (0.05, 0.08, 0.25),
    (0.60, 0.62, 0.65),
    (0.15, 0.35, 0.20),
    (0.85, 0.70, 0.10),
    (0.40, 0.28, 0.18),
)
_CLOTHES = (
    (0.10, 0.10, 0.12),
    (0.20, 0.22, 0.40),
    (0.65, 0.10, 0.12),
    (0.85, 0.85, 0.80),
    (0.45, 0.45, 0.45),
    (0.25, 0.40, 0.20),
    (0.60, 0.50, 0.35),
    (0.80, 0.60, 0.15),
    (0.35, 0.20, 0.45),
)
_SKIN = ((0.95, 0.78, 0.65), (0.80, 0.60, 0.45), (0.55, 0.38, 0.26), (0.35, 0.24, 0.17))
_GREENS = ((0.30, 0.45, 0.12), (0.20, 0.35, 0.12), (0.42, 0.52, 0.18), (0.28, 0.40, 0.22))


class _Canvas:
    """Image (float32 RGB in [0, 1]) and label map painted together, back to front."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, texture: float):
        self.rng = rng
        self.h = height
        self.w = width
        self.texture = texture
        self.img = np.zeros((height, width, 3), np.float32)
        self.lab = np.full((height, width), SKY, np.uint8)
        # Per-pixel fine texture in about [-0.5, 0.5], shared by all surfaces of the image.
        self.fine = _smooth_noise(rng, height, width, 1.5) - 0.5
        self.shade = np.ones((height, width), np.float32)

    def _box(self, xs: np.ndarray, ys: np.ndarray) -> tuple[int, int, int, int] | None:
        x0 = max(int(math.floor(float(xs.min()))) - 1, 0)
        y0 = max(int(math.floor(float(ys.min()))) - 1, 0)
        x1 = min(int(math.ceil(float(xs.max()))) + 2, self.w)
        y1 = min(int(math.ceil(float(ys.max()))) + 2, self.h)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def fill(
        self,
        box: tuple[int, int, int, int],
        m: np.ndarray,
        color: np.ndarray,
        label: int | None,
        texture: float = 0.0,
    ) -> None:
        """Paint ``color`` where the local mask ``m`` (box-sized, bool) is set.

        ``color`` is an RGB triple or a box-sized (h, w, 3) array. ``label`` None paints the
        image only.
        """
        x0, y0, x1, y1 = box
        col = np.asarray(color, np.float32)
        amp = texture * self.texture
        if amp > 0:
            col = col * (1.0 + amp * self.fine[y0:y1, x0:x1, None])
        elif col.ndim == 1:
            col = np.broadcast_to(col, (y1 - y0, x1 - x0, 3))
        region = self.img[y0:y1, x0:x1]
        region[m] = col[m]
        if label is not None:
            self.lab[y0:y1, x0:x1][m] = label

    def poly(
        self,
        pts: Sequence[Sequence[float]] | np.ndarray,
        color: np.ndarray,
        label: int | None,
        texture: float = 0.0,
    ) -> None:
        """Fill a polygon given as (N, 2) x, y pixel coordinates."""
        p = np.asarray(pts, np.float64)
        box = self._box(p[:, 0], p[:, 1])
        if box is None:
            return
        x0, y0, x1, y1 = box
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        q = np.round((p - (x0, y0)) * 4.0).astype(np.int32)
        cv2.fillPoly(m, [q], 1, cv2.LINE_8, 2)
        self.fill(box, m.astype(bool), color, label, texture)

    def rect(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        color: np.ndarray,
        label: int | None,
        texture: float = 0.0,
    ) -> None:
        """Fill an axis-aligned rectangle with corners (x0, y0), (x1, y1) in pixels."""
        self.poly(((x0, y0), (x1, y0), (x1, y1), (x0, y1)), color, label, texture)

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        color: np.ndarray,
        label: int | None,
        texture: float = 0.0,
    ) -> None:
        """Fill an axis-aligned ellipse of centre (cx, cy) and radii (rx, ry) in pixels."""
        rx, ry = max(rx, 0.3), max(ry, 0.3)
        box = self._box(np.array([cx - rx, cx + rx]), np.array([cy - ry, cy + ry]))
        if box is None:
            return
        x0, y0, x1, y1 = box
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        centre = (int(round((cx - x0) * 4)), int(round((cy - y0) * 4)))
        axes = (int(round(rx * 4)), int(round(ry * 4)))
        cv2.ellipse(m, centre, axes, 0.0, 0.0, 360.0, 1, -1, cv2.LINE_8, 2)
        self.fill(box, m.astype(bool), color, label, texture)

    def blob(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        roughness: float,
        color: np.ndarray,
        label: int | None,
        texture: float = 0.0,
    ) -> None:
        """Fill a noisy blob (tree canopy, bush) around an ellipse, with leafy shading."""
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        ext = 1.0 + roughness
        box = self._box(
            np.array([cx - rx * ext, cx + rx * ext]), np.array([cy - ry * ext, cy + ry * ext])
        )
        if box is None:
            return
        x0, y0, x1, y1 = box
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
        d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
        n = _smooth_noise(self.rng, y1 - y0, x1 - x0, max(1.5, min(rx, ry) / 2.5))
        m = d < 1.0 + 2.0 * roughness * (n - 0.5)
        leaf = _smooth_noise(self.rng, y1 - y0, x1 - x0, max(1.0, min(rx, ry) / 6.0))
        light = 1.05 - 0.35 * np.clip((yy - cy) / ry + 0.3, 0.0, 1.3) / 1.3
        tone = light * (1.0 + 0.6 * self.texture * (leaf - 0.5))
        col = np.asarray(color, np.float32) * tone[..., None]
        self.fill(box, m, col, label, texture)

    def shadow(self, pts: np.ndarray, strength: float, blur: float) -> None:
        """Darken the image inside a polygon by ``strength`` (0-1), with soft edges."""
        if strength <= 0:
            return
        p = np.asarray(pts, np.float64)
        pad = 2.0 * blur + 1.0
        box = self._box(
            np.array([p[:, 0].min() - pad, p[:, 0].max() + pad]),
            np.array([p[:, 1].min() - pad, p[:, 1].max() + pad]),
        )
        if box is None:
            return
        x0, y0, x1, y1 = box
        m = np.zeros((y1 - y0, x1 - x0), np.float32)
        q = np.round((p - (x0, y0)) * 4.0).astype(np.int32)
        cv2.fillPoly(m, [q], 1.0, cv2.LINE_8, 2)
        if blur > 0.3:
            m = cv2.GaussianBlur(m, (0, 0), blur)
        self.shade[y0:y1, x0:x1] *= 1.0 - strength * m


def _check_difficulty(difficulty: dict[str, Any]) -> dict[str, float]:
    unknown = sorted(set(difficulty) - set(DEFAULT_DIFFICULTY))
    if unknown:
        raise TypeError(
            f"unknown difficulty argument(s) {unknown}; expected some of "
            f"{sorted(DEFAULT_DIFFICULTY)}"
        )
    knobs = {**DEFAULT_DIFFICULTY, **difficulty}
    for key, value in knobs.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"difficulty argument {key}={value!r}: expected a number >= 0")
    for key in ("shadow", "color_overlap"):
        if knobs[key] > 1:
            raise ValueError(
                f"difficulty argument {key}={knobs[key]!r}: expected a value in [0, 1]"
            )
    return {k: float(v) for k, v in knobs.items()}


class _Scene:
    """Geometry of one scene: horizon, vanishing point and ground-plane coordinates."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, knobs: dict[str, float]):
        self.rng = rng
        self.h = height
        self.w = width
        self.k = knobs
        self.c = _Canvas(rng, height, width, knobs["texture"])
        self.horizon = height * rng.uniform(0.33, 0.44)
        self.vx = width * rng.uniform(0.3, 0.7)
        lanes = int(rng.choice((2, 3, 4, 5), p=(0.1, 0.35, 0.4, 0.15)))
        self.lane_w = rng.uniform(3.2, 3.8) * _M
        road_w = lanes * self.lane_w
        centre = rng.uniform(-0.15, 0.15)
        self.u_l = centre - road_w / 2
        self.u_r = centre + road_w / 2
        self.lanes = lanes
        self.sw_l = rng.uniform(2.5, 5.0) * _M
        self.sw_r = rng.uniform(2.5, 5.0) * _M

    # Ground plane: a point (t, u) has row horizon + t * (H - horizon), column vx + u * W * t,
    # where t in (0, 1] is the inverse depth (1 at the bottom row) and u the lateral position.
    def to_image(self, t: float, u: float) -> tuple[float, float]:
        return self.vx + u * self.w * t, self.horizon + t * (self.h - self.horizon)

    def px_per_m(self, t: float) -> float:
        return _M * self.w * t

    def overlap(self) -> bool:
        return bool(self.rng.random() < self.k["color_overlap"])

    def vary(self, rgb: Sequence[float], amount: float = 1.0) -> np.ndarray:
        return _jitter(self.rng, rgb, amount * self.k["color_jitter"] / 0.35)

    # ----------------------------------------------------------------------------- background
    def sky(self) -> None:
        rng, h, w = self.rng, self.h, self.w
        if rng.random() < 0.3:  # overcast
            top = _grey(rng, 0.55, 0.8)
            bottom = np.clip(top + rng.uniform(0.05, 0.15), 0, 1)
        else:
            top = self.vary((0.25, 0.45, 0.75), 1.2)
            bottom = self.vary((0.70, 0.80, 0.90), 0.8)
        rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        grad = top * (1.0 - rows) + bottom * rows
        img = np.broadcast_to(grad, (h, w, 3)).copy()
        clouds = _smooth_noise(rng, h, w, w / rng.uniform(3.0, 8.0))
        cover = rng.uniform(0.35, 0.75)
        alpha = np.clip((clouds - cover) * 3.0, 0.0, 0.85)[..., None]
        cloud_col = _grey(rng, 0.8, 0.98, 0.01)
        self.c.img[:] = img * (1 - alpha) + cloud_col * alpha

    def buildings(self) -> None:
        rng, h, w, c = self.rng, self.h, self.w, self.c
        hz = self.horizon
        x = -rng.uniform(0.0, 0.1) * w
        while x < w:
            bw = w * rng.uniform(0.07, 0.3)
            if rng.random() < 0.12:  # gap: sky or trees show through down to the horizon
                x += w * rng.uniform(0.03, 0.1)
                continue
            top = hz - h * rng.uniform(0.07, 0.36)
            colour = self.vary(_FACADES[rng.integers(len(_FACADES))])
            x0, x1 = x, x + bw
            y0, y1 = top, float(h)
            box = c._box(np.array([x0, x1]), np.array([y0, y1]))
            x += bw
            if box is None:
                continue
            bx0, by0, bx1, by1 = box
            yy = np.arange(by0, by1, dtype=np.float32)[:, None] + 0.5
            xx = np.arange(bx0, bx1, dtype=np.float32)[None, :] + 0.5
            m = (xx >= x0) & (xx < x1) & (yy >= y0)
            col = np.broadcast_to(colour, (by1 - by0, bx1 - bx0, 3)).copy()
            if rng.random() < 0.85:  # window grid
                sx = h * rng.uniform(0.035, 0.09)
                sy = h * rng.uniform(0.045, 0.1)
                fx, fy = rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.7)
                wx = ((xx - x0 - sx * 0.3) % sx) < sx * fx
                wy = ((yy - y0 - sy * 0.4) % sy) < sy * fy
                win = wx & wy & (yy > y0 + sy * 0.3)
                if rng.random() < 0.6:
                    wcol = _grey(rng, 0.08, 0.3)
                else:
                    wcol = self.vary((0.55, 0.65, 0.75), 1.0)
                lit = _smooth_noise(rng, by1 - by0, bx1 - bx0, sx) > 0.75
                wtex = np.where(lit[..., None], np.clip(wcol * 1.8 + 0.1, 0, 1), wcol)
                col = np.where(win[..., None], wtex, col)
            if rng.random() < 0.5:  # storey bands
                band = ((yy - y0) % (h * rng.uniform(0.08, 0.14))) < 1.0
                col = np.where(band[..., None], col * 0.8, col)
            side = 1.0 - 0.2 * rng.random() * (xx - x0) / max(bw, 1.0)
            col = col * side[..., None]
            c.fill(box, m, col, BUILDING, texture=0.35)
            c.rect(x0, y0 - 1.0, x1, y0 + max(1.0, h * 0.01), colour * 0.7, BUILDING)

    def background_trees(self) -> None:
        rng, h, w = self.rng, self.h, self.w
        n = rng.poisson(2.6 * self.k["object_density"])
        for _ in range(n):
            r = h * rng.uniform(0.06, 0.16)
            cx = rng.uniform(0, w)
            cy = self.horizon - rng.uniform(0.2, 1.0) * r
            colour = self.vary(_GREENS[rng.integers(len(_GREENS))])
            self.c.rect(
                cx - r * 0.08, cy, cx + r * 0.08, self.horizon + 2, colour * 0.5, VEGETATION
            )
            self.c.blob(cx, cy, r * rng.uniform(0.8, 1.4), r, 0.35, colour, VEGETATION, 0.4)

    # --------------------------------------------------------------------------------- ground
    def ground(self) -> None:
        rng, h, w, c = self.rng, self.h, self.w, self.c
        y_start = int(math.floor(self.horizon)) + 1
        if y_start >= h:
            return
        hz = self.horizon
        yy = np.arange(y_start, h, dtype=np.float32)[:, None] + 0.5
        xx = np.arange(w, dtype=np.float32)[None, :] + 0.5
        t = (yy - hz) / (h - hz)
        u = (xx - self.vx) / (w * t)
        z = 1.0 / t
        px_u = w * t  # pixels per lateral unit on each row
        px_z = t * t * (h - hz)  # pixels per depth unit on each row
        road = (u >= self.u_l) & (u <= self.u_r)
        left = (u >= self.u_l - self.sw_l) & (u < self.u_l)
        right = (u > self.u_r) & (u <= self.u_r + self.sw_r)
        tex = self.k["texture"]

        # Road: asphalt grey with patches and lane markings.
        asphalt = self.vary(_grey(rng, 0.25, 0.5, 0.02), 0.5)
        patches = _smooth_noise(rng, h - y_start, w, w / 10.0) - 0.5
        road_col = asphalt * (1.0 + tex * (0.25 * patches + 0.3 * c.fine[y_start:]))[..., None]
        paint = np.zeros(road.shape, bool)
        half = 0.075 * _M  # half width of a marking
        dash_k = rng.uniform(0.25, 0.5)
        dashes = (z * dash_k) % 1.0 < 0.45
        for i in range(1, self.lanes):
            lu = self.u_l + i * self.lane_w
            line = np.abs(u - lu) * px_u < np.maximum(half * px_u, 0.35)
            paint |= line & dashes
        edge = rng.random() < 0.6
        if edge:
            for lu in (self.u_l + 0.25 * _M, self.u_r - 0.25 * _M):
                paint |= np.abs(u - lu) * px_u < np.maximum(half * px_u, 0.35)
        if rng.random() < 0.35:  # crosswalk
            z0 = rng.uniform(1.3, 3.0)
            stripes = ((u / (0.5 * _M)) % 1.0) < 0.5
            paint |= (z > z0) & (z < z0 + rng.uniform(0.3, 0.6)) & stripes
        if rng.random() < 0.3:
            mark_col = self.vary((0.85, 0.72, 0.15), 0.5)
        else:
            mark_col = _grey(rng, 0.75, 0.95, 0.01)
        road_col = np.where(
            paint[..., None], mark_col * (1 + 0.1 * tex * patches[..., None]), road_col
        )

        # Sidewalk: tiles in perspective and a kerb along the road.
        paving = self.vary((0.62, 0.6, 0.57) if rng.random() < 0.7 else (0.6, 0.45, 0.4), 0.7)
        tile_u = rng.uniform(0.4, 0.8) * _M
        tile_z = rng.uniform(0.08, 0.2)
        fu = (u / tile_u) % 1.0
        fz = (z / tile_z) % 1.0
        du = np.minimum(fu, 1 - fu) * tile_u * px_u
        dz = np.minimum(fz, 1 - fz) * tile_z * px_z
        joints = (du < 0.5) | (dz < 0.5)
        side_col = paving * (1.0 + tex * (0.35 * c.fine[y_start:] + 0.1 * patches))[..., None]
        side_col = np.where(joints[..., None], side_col * 0.78, side_col)
        kerb_w = 0.25 * _M
        kerb = ((u >= self.u_l - kerb_w) & (u < self.u_l)) | (
            (u > self.u_r) & (u <= self.u_r + kerb_w)
        )
        side_col = np.where(kerb[..., None], np.clip(side_col * 1.15 + 0.05, 0, 1), side_col)

        img = c.img[y_start:]
        lab = c.lab[y_start:]
        side = left | right
        img[road] = road_col[road]
        img[side] = side_col[side]
        lab[road] = ROAD
        lab[side] = SIDEWALK

        # A building's shadow over one side of the street.
        strength = self.k["shadow"] * rng.uniform(0.3, 1.0)
        if rng.random() < 0.5 and strength > 0:
            reach = rng.uniform(0.1, 0.9) * (self.u_r - self.u_l)
            on_left = rng.random() < 0.5
            inside = (u < self.u_l + reach) if on_left else (u > self.u_r - reach)
            sh = (inside & (road | side)).astype(np.float32)
            sh = cv2.GaussianBlur(sh, (0, 0), 1.5)
            c.shade[y_start:] *= 1.0 - strength * sh

    def hedges(self) -> None:
        """Hedges against the facades just outside the sidewalks (vegetation)."""
        rng, h, w, c = self.rng, self.h, self.w, self.c
        hz = self.horizon
        for side in (-1, 1):
            if rng.random() > 0.5:
                continue
            u_f = self.u_l - self.sw_l if side < 0 else self.u_r + self.sw_r
            height = rng.uniform(0.8, 2.0) * _M
            xs = np.arange(w, dtype=np.float32) + 0.5
            tc = (xs - self.vx) / (w * u_f)  # inverse depth of the facade foot in each column
            valid = tc > 0.02
            if not valid.any():
                continue
            y_foot = hz + tc * (h - hz)
            top_noise = _smooth_noise(rng, 1, w, w / 20.0)[0]
            y_top = y_foot - height * w * tc * (0.75 + 0.5 * top_noise)
            yy = np.arange(h, dtype=np.float32)[:, None] + 0.5
            m = valid[None, :] & (yy >= y_top[None, :]) & (yy < y_foot[None, :] + 1.0)
            m &= c.lab != ROAD
            m &= c.lab != SIDEWALK
            if not m.any():
                continue
            colour = self.vary(_GREENS[rng.integers(len(_GREENS))])
            leaf = _smooth_noise(rng, h, w, 2.0)
            col = colour * (0.8 + 0.5 * self.k["texture"] * (leaf - 0.5))[..., None]
            c.fill((0, 0, w, h), m, col, VEGETATION, 0.3)

    # --------------------------------------------------------------------------------- things
    def car(self, t: float, u: float) -> None:
        rng, c = self.rng, self.c
        p = self.px_per_m(t)
        xb, yb = self.to_image(t, u)
        if self.overlap():
            colour = self.vary(_grey(rng, 0.2, 0.75), 0.5)
        else:
            colour = self.vary(_CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 0.7)
        height = rng.uniform(1.35, 1.9) * p
        dark = _grey(rng, 0.03, 0.12, 0.01)
        glass = self.vary((0.2, 0.25, 0.3), 1.0) if rng.random() < 0.7 else _grey(rng, 0.4, 0.6)
        side_view = rng.random() < 0.35
        length = rng.uniform(3.8, 4.8) * p if side_view else rng.uniform(1.65, 2.0) * p
        x0, x1 = xb - length / 2, xb + length / 2
        c.shadow(
            np.array(
                [
                    (x0 - 0.1 * length, yb - 0.05 * height),
                    (x1 + 0.1 * length, yb - 0.05 * height),
                    (x1 + 0.05 * length, yb + 0.1 * height),
                    (x0 - 0.05 * length, yb + 0.1 * height),
                ]
            ),
            self.k["shadow"] * 0.8,
            max(0.5, 0.05 * height),
        )
        y_belt = yb - 0.55 * height
        y_sill = yb - 0.18 * height
        top = yb - height
        if side_view:
            d = 1 if rng.random() < 0.5 else -1
            # lower body with sloped bonnet/boot, cabin on top
            body = [
                (x0, y_sill),
                (x0, y_belt + 0.1 * height),
                (x0 + 0.06 * length, y_belt),
                (x1 - 0.06 * length, y_belt),
                (x1, y_belt + 0.12 * height),
                (x1, y_sill),
            ]
            c.poly(body, colour, CAR, 0.15)
            ca, cb = (0.22, 0.78) if rng.random() < 0.5 else (0.15, 0.85)
            front, back = (ca, cb) if d > 0 else (1 - cb, 1 - ca)
            cab = [
                (x0 + front * length, y_belt),
                (x0 + (front + 0.12) * length, top),
                (x0 + (back - 0.05) * length, top),
                (x0 + back * length, y_belt),
            ]
            c.poly(cab, colour * 1.05, CAR, 0.15)
            inset = 0.1 * height
            win = [
                (x0 + (front + 0.05) * length, y_belt - 0.02 * height),
                (x0 + (front + 0.14) * length, top + inset),
                (x0 + (back - 0.07) * length, top + inset),
                (x0 + (back - 0.03) * length, y_belt - 0.02 * height),
            ]
            c.poly(win, glass, CAR, 0.1)
            pillar = x0 + 0.5 * (front + back) * length
            c.rect(pillar - 0.015 * length, top, pillar + 0.015 * length, y_belt, colour, CAR)
            r = 0.22 * height
            for fx in (0.2, 0.8):
                c.ellipse(x0 + fx * length, yb - r, r, r, dark, CAR)
                c.ellipse(x0 + fx * length, yb - r, 0.5 * r, 0.5 * r, _grey(rng, 0.5, 0.8), CAR)
        else:
            c.rect(x0 + 0.04 * length, yb - 0.22 * height, x0 + 0.22 * length, yb, dark, CAR)
            c.rect(x1 - 0.22 * length, yb - 0.22 * height, x1 - 0.04 * length, yb, dark, CAR)
            body = [
                (x0, y_sill),
                (x0, y_belt + 0.05 * height),
                (x0 + 0.05 * length, y_belt),
                (x1 - 0.05 * length, y_belt),
                (x1, y_belt + 0.05 * height),
                (x1, y_sill),
            ]
            c.poly(body, colour, CAR, 0.15)
            cab = [
                (x0 + 0.05 * length, y_belt),
                (x0 + 0.15 * length, top),
                (x1 - 0.15 * length, top),
                (x1 - 0.05 * length, y_belt),
            ]
            c.poly(cab, colour * 1.05, CAR, 0.15)
            win = [
                (x0 + 0.12 * length, y_belt - 0.04 * height),
                (x0 + 0.19 * length, top + 0.08 * height),
                (x1 - 0.19 * length, top + 0.08 * height),
                (x1 - 0.12 * length, y_belt - 0.04 * height),
            ]
            c.poly(win, glass, CAR, 0.1)
            light = self.vary((0.8, 0.1, 0.05), 0.5)
            ly0, ly1 = y_belt + 0.08 * height, y_belt + 0.2 * height
            c.rect(x0 + 0.03 * length, ly0, x0 + 0.18 * length, ly1, light, CAR)
            c.rect(x1 - 0.18 * length, ly0, x1 - 0.03 * length, ly1, light, CAR)
            c.rect(
                xb - 0.13 * length,
                y_sill - 0.15 * height,
                xb + 0.13 * length,
                y_sill - 0.04 * height,
                _grey(rng, 0.8, 0.95),
                CAR,
            )
            c.rect(x0, y_sill - 0.02 * height, x1, y_sill + 0.04 * height, colour * 0.6, CAR)

    def person(self, t: float, u: float) -> None:
        rng, c = self.rng, self.c
        p = self.px_per_m(t)
        xb, yb = self.to_image(t, u)
        hgt = rng.uniform(1.55, 1.95) * p
        c.shadow(
            np.array(
                [
                    (xb - 0.2 * hgt, yb - 0.02 * hgt),
                    (xb + 0.25 * hgt, yb - 0.02 * hgt),
                    (xb + 0.3 * hgt, yb + 0.03 * hgt),
                    (xb - 0.15 * hgt, yb + 0.03 * hgt),
                ]
            ),
            self.k["shadow"] * 0.7,
            max(0.4, 0.02 * hgt),
        )

        def clothes() -> np.ndarray:
            if self.overlap():
                base = (
                    _grey(rng, 0.15, 0.7)
                    if rng.random() < 0.5
                    else _GREENS[rng.integers(len(_GREENS))]
                )
            else:
                base = _CLOTHES[rng.integers(len(_CLOTHES))]
            return self.vary(base, 0.8)

        shirt, trousers = clothes(), clothes()
        skin = self.vary(_SKIN[rng.integers(len(_SKIN))], 0.4)
        stride = rng.uniform(-0.12, 0.12) * hgt
        hip_y, sh_y = yb - 0.5 * hgt, yb - 0.82 * hgt
        lw = max(0.07 * hgt, 0.6)
        for sgn in (-1, 1):
            hx = xb + sgn * 0.055 * hgt
            fx = hx + sgn * stride
            c.poly(
                [(hx - lw, hip_y), (hx + lw, hip_y), (fx + lw * 0.7, yb), (fx - lw * 0.7, yb)],
                trousers,
                PERSON,
                0.2,
            )
        tw = 0.13 * hgt
        c.poly(
            [
                (xb - tw, sh_y),
                (xb + tw, sh_y),
                (xb + 0.85 * tw, hip_y + 0.04 * hgt),
                (xb - 0.85 * tw, hip_y + 0.04 * hgt),
            ],
            shirt,
            PERSON,
            0.2,
        )
        aw = max(0.04 * hgt, 0.5)
        swing = rng.uniform(-0.08, 0.08) * hgt
        for sgn in (-1, 1):
            ax = xb + sgn * (tw + aw * 0.5)
            c.poly(
                [
                    (ax - aw, sh_y + 0.02 * hgt),
                    (ax + aw, sh_y + 0.02 * hgt),
                    (ax + sgn * swing + aw, yb - 0.44 * hgt),
                    (ax + sgn * swing - aw, yb - 0.44 * hgt),
                ],
                shirt * 0.9,
                PERSON,
                0.2,
            )
        c.ellipse(xb, yb - 0.9 * hgt, 0.065 * hgt, 0.085 * hgt, skin, PERSON)
        if rng.random() < 0.7:
            hair = _grey(rng, 0.05, 0.35) if rng.random() < 0.8 else self.vary((0.6, 0.45, 0.2))
            c.ellipse(xb, yb - 0.94 * hgt, 0.07 * hgt, 0.05 * hgt, hair, PERSON)
        if rng.random() < 0.25:  # bag
            bx = xb + (tw if rng.random() < 0.5 else -tw)
            c.rect(
                bx - 0.06 * hgt,
                yb - 0.55 * hgt,
                bx + 0.06 * hgt,
                yb - 0.4 * hgt,
                clothes() * 0.8,
                PERSON,
            )

    def pole(self, t: float, u: float, toward_road: int) -> None:
        rng, c = self.rng, self.c
        p = self.px_per_m(t)
        xb, yb = self.to_image(t, u)
        kind = rng.random()
        sign_post = kind < 0.6
        height = (rng.uniform(2.6, 3.6) if sign_post else rng.uniform(6.0, 9.0)) * p
        width = float(np.clip(round(rng.uniform(0.1, 0.2) * p), 1, 3))
        if self.overlap():
            colour = self.vary(_GREENS[rng.integers(len(_GREENS))], 0.5) * 0.7
        else:
            colour = _grey(rng, 0.15, 0.65)
        x0 = round(xb - width / 2)
        top = yb - height
        c.shadow(
            np.array(
                [
                    (x0, yb),
                    (x0 + width, yb),
                    (x0 + width + 0.5 * height, yb + 0.06 * height),
                    (x0 + 0.5 * height, yb + 0.06 * height),
                ]
            ),
            self.k["shadow"] * 0.5,
            0.8,
        )
        c.rect(x0, top, x0 + width, yb, colour, POLE, 0.1)
        if not sign_post and rng.random() < 0.6:  # street lamp arm and head
            arm = rng.uniform(1.0, 2.0) * p * toward_road
            aw = max(1.0, width - 1)
            ax0, ax1 = sorted((x0 + width / 2, x0 + width / 2 + arm))
            c.rect(ax0, top, ax1, top + aw, colour, POLE)
            hx = x0 + width / 2 + arm
            c.rect(hx - 0.25 * p, top, hx + 0.25 * p, top + max(1.0, 0.15 * p), colour * 0.8, POLE)
        n_signs = (1 + int(rng.random() < 0.35)) if sign_post else int(rng.random() < 0.3)
        y = top + (0.0 if sign_post else rng.uniform(0.3, 0.5) * height)
        for _ in range(n_signs):
            size = rng.uniform(0.6, 0.9) * p
            y = self.sign(x0 + width / 2, y, size)

    def sign(self, cx: float, y_top: float, size: float) -> float:
        """Draw a traffic sign hanging from y_top centred on cx; return the row below it."""
        rng, c = self.rng, self.c
        size = max(size, 2.0)
        r = size / 2
        cy = y_top + r
        shape = rng.integers(5)
        if rng.random() < 0.2:  # seen from behind: grey back plate
            back = _grey(rng, 0.35, 0.65)
            if shape in (0, 1):
                c.ellipse(cx, cy, r, r, back, SIGN)
            else:
                c.rect(cx - r, cy - r, cx + r, cy + r, back, SIGN)
            return y_top + size + 1.0
        if shape == 0:  # round prohibition sign: red ring, white centre
            c.ellipse(cx, cy, r, r, self.vary((0.8, 0.1, 0.1), 0.5), SIGN)
            c.ellipse(cx, cy, 0.7 * r, 0.7 * r, _grey(rng, 0.8, 0.95), SIGN)
        elif shape == 1:  # round blue mandatory sign
            c.ellipse(cx, cy, r, r, self.vary((0.1, 0.3, 0.7), 0.5), SIGN)
            c.rect(
                cx - 0.5 * r, cy - 0.1 * r, cx + 0.5 * r, cy + 0.1 * r, _grey(rng, 0.8, 0.95), SIGN
            )
        elif shape == 2:  # warning triangle
            c.poly(
                [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)],
                self.vary((0.8, 0.1, 0.1), 0.5),
                SIGN,
            )
            c.poly(
                [(cx, cy - 0.45 * r), (cx + 0.55 * r, cy + 0.5 * r), (cx - 0.55 * r, cy + 0.5 * r)],
                _grey(rng, 0.8, 0.95),
                SIGN,
            )
        elif shape == 3:  # diamond priority sign
            c.poly(
                [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)],
                _grey(rng, 0.85, 0.95),
                SIGN,
            )
            c.poly(
                [(cx, cy - 0.6 * r), (cx + 0.6 * r, cy), (cx, cy + 0.6 * r), (cx - 0.6 * r, cy)],
                self.vary((0.9, 0.75, 0.1), 0.5),
                SIGN,
            )
        else:  # rectangular information sign: blue, green or white
            base = ((0.1, 0.3, 0.65), (0.1, 0.45, 0.25), (0.9, 0.9, 0.88))[rng.integers(3)]
            wide = rng.uniform(1.0, 1.8)
            c.rect(
                cx - r * wide, cy - r, cx + r * wide, cy + 0.6 * r, self.vary(base, 0.6), SIGN, 0.1
            )
        return y_top + size + 1.0

    def tree(self, t: float, u: float) -> None:
        rng, c = self.rng, self.c
        p = self.px_per_m(t)
        xb, yb = self.to_image(t, u)
        trunk_h = rng.uniform(2.0, 3.5) * p
        tw = max(rng.uniform(0.2, 0.4) * p, 1.0)
        r = rng.uniform(1.5, 3.0) * p
        c.shadow(
            np.array(
                [
                    (xb - r, yb - 0.1 * r),
                    (xb + r, yb - 0.1 * r),
                    (xb + 1.2 * r, yb + 0.25 * r),
                    (xb - 0.8 * r, yb + 0.25 * r),
                ]
            ),
            self.k["shadow"] * 0.7,
            max(0.8, 0.2 * r),
        )
        bark = self.vary((0.3, 0.22, 0.15), 0.6)
        c.rect(xb - tw / 2, yb - trunk_h - r * 0.5, xb + tw / 2, yb, bark, VEGETATION, 0.2)
        colour = self.vary(_GREENS[rng.integers(len(_GREENS))])
        c.blob(
            xb, yb - trunk_h - 0.6 * r, r * rng.uniform(0.8, 1.1), r, 0.3, colour, VEGETATION, 0.4
        )

    def things(self) -> None:
        rng = self.rng
        dens = self.k["object_density"]
        items: list[tuple[float, int, Any]] = []

        def depth(lo: float, a: float, b: float) -> float:
            return lo + (1.1 - lo) * rng.beta(a, b)

        for _ in range(rng.poisson(3.5 * dens)):
            t = depth(0.08, 1.4, 2.2)
            if rng.random() < 0.4:  # parked along a kerb
                u = self.u_l + 0.12 if rng.random() < 0.5 else self.u_r - 0.12
                u += rng.normal(0, 0.01)
            else:
                lane = rng.integers(self.lanes)
                u = self.u_l + (lane + 0.5) * self.lane_w + rng.normal(0, 0.02)
            items.append((t, len(items), lambda t=t, u=u: self.car(t, u)))
        for _ in range(rng.poisson(5.5 * dens)):
            t = depth(0.1, 1.6, 2.0)
            roll = rng.random()
            if roll < 0.15:  # crossing the road
                u = rng.uniform(self.u_l, self.u_r)
            elif roll < 0.575:
                u = self.u_l - rng.uniform(0.1, 0.9) * self.sw_l
            else:
                u = self.u_r + rng.uniform(0.1, 0.9) * self.sw_r
            items.append((t, len(items), lambda t=t, u=u: self.person(t, u)))
        for _ in range(rng.poisson(3.5 * dens)):
            t = depth(0.12, 1.5, 1.8)
            if rng.random() < 0.5:
                u, toward = self.u_l - rng.uniform(0.3, 0.8) * _M, 1
            else:
                u, toward = self.u_r + rng.uniform(0.3, 0.8) * _M, -1
            items.append((t, len(items), lambda t=t, u=u, d=toward: self.pole(t, u, d)))
        for _ in range(rng.poisson(1.0 * dens)):
            t = depth(0.1, 1.5, 2.0)
            if rng.random() < 0.5:
                u = self.u_l - self.sw_l * rng.uniform(0.5, 0.8)
            else:
                u = self.u_r + self.sw_r * rng.uniform(0.5, 0.8)
            items.append((t, len(items), lambda t=t, u=u: self.tree(t, u)))
        for _, _, draw in sorted(items, key=lambda item: (item[0], item[1])):
            draw()

    # ----------------------------------------------------------------------------- finishing
    def ignore_band(self) -> None:
        width = int(self.k["ignore_width"])
        if width <= 0:
            return
        lab = self.c.lab
        kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (2 * width + 1, 2 * width + 1))
        band = np.zeros(lab.shape, bool)
        for cls in THING_CLASSES:
            region = (lab == cls).astype(np.uint8)
            if not region.any():
                continue
            grown = cv2.dilate(region, kernel).astype(bool)
            band |= grown & (lab != cls)
        lab[band] = SCENES_IGNORE_INDEX

    def photometric(self) -> np.ndarray:
        rng, h, w, k = self.rng, self.h, self.w, self.k
        img = self.c.img * self.c.shade[..., None]
        # Lighting gradient in a random direction.
        ang = rng.uniform(0.0, 2.0 * math.pi)
        yy = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / max(h, w)
        xx = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / max(h, w)
        ramp = math.cos(ang) * xx + math.sin(ang) * yy
        img *= (1.0 + k["lighting"] * rng.uniform(0.3, 1.0) * 2.0 * ramp)[..., None]
        img = np.clip(img, 0.0, 1.0)
        # Per-image hue rotation, saturation change and white balance.
        cj = k["color_jitter"]
        if cj > 0:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0] + rng.normal(0.0, 25.0 * cj)) % 360.0
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1 - cj, 1 + 0.5 * cj), 0.0, 1.0)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
            img *= (1.0 + rng.normal(0.0, 0.1 * cj, 3)).astype(np.float32)
        # Global brightness and contrast.
        con = 1.0 + rng.uniform(-k["contrast"], k["contrast"])
        bri = 1.0 + rng.uniform(-k["brightness"], k["brightness"])
        mean = float(img.mean())
        img = ((img - mean) * con + mean) * bri
        sigma = rng.uniform(0.0, k["blur"])
        if sigma > 0.25:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        std = k["noise_std"] / 255.0 * rng.uniform(0.5, 1.0)
        if std > 0:
            img = img + std * rng.standard_normal(img.shape, dtype=np.float32)
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def generate_scene(
    rng: np.random.Generator, height: int, width: int, **difficulty: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street-like scene and its label map.

    Args:
        rng: Random generator; the scene is a deterministic function of its state.
        height: Image height in pixels (>= 16).
        width: Image width in pixels (>= 16).
        **difficulty: Overrides of :data:`DEFAULT_DIFFICULTY` (noise, colour jitter, blur...).

    Returns:
        ``(image, mask)``: image uint8 (height, width, 3) RGB; mask uint8 (height, width) of
        class ids 0-8 (see :data:`SCENES_CLASSES`) and 255 on the ignored band along the
        boundaries of poles, traffic signs, people and cars.

    Raises:
        TypeError: An unknown difficulty argument.
        ValueError: A size below 16 pixels or a negative (or out of range) difficulty value.
    """
    if int(height) < 16 or int(width) < 16:
        raise ValueError(f"scene size {height}x{width} (HxW): expected both sides >= 16 pixels")
    knobs = _check_difficulty(difficulty)
    scene = _Scene(rng, int(height), int(width), knobs)
    scene.sky()
    scene.buildings()
    scene.background_trees()
    scene.ground()
    scene.hedges()
    scene.things()
    scene.ignore_band()
    image = scene.photometric()
    return image, scene.c.lab.copy()


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok = cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"could not write PNG file {path}")


def _scene_name(index: int) -> str:
    return f"scene_{index:05d}"


def ensure_scenes_dataset(
    root: str | Path,
    num_train: int = 400,
    num_val: int = 100,
    height: int = 128,
    width: int = 256,
    seed: int = 0,
    **difficulty: float,
) -> Path:
    """Generate the ``scenes`` dataset under ``root`` unless it is already there.

    Writes ``root/images/{train,val}/scene_NNNNN.png`` (RGB) and
    ``root/masks/{train,val}/scene_NNNNN.png`` (single-channel 8-bit class ids, 255 = ignore),
    then the marker ``root/scenes.json`` holding the parameters, last. If the marker exists with
    the same parameters, nothing is done; otherwise the marker is removed, the old
    ``scene_*.png`` files of both splits are deleted (other files are left alone) and the set is
    regenerated.

    Args:
        root: Dataset directory (created if missing).
        num_train: Number of training images (>= 0).
        num_val: Number of validation images (>= 0).
        height: Image height in pixels.
        width: Image width in pixels.
        seed: Seed; image ``i`` of split ``s`` (train 0, val 1) comes from
            ``np.random.default_rng([seed, s, i])``.
        **difficulty: Overrides of :data:`DEFAULT_DIFFICULTY`.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: An unknown difficulty argument.
        ValueError: A negative count or seed, or a bad size or difficulty value.
    """
    root = Path(root)
    if int(num_train) < 0 or int(num_val) < 0:
        raise ValueError(f"scenes counts num_train={num_train}, num_val={num_val}: expected >= 0")
    if int(seed) < 0:
        raise ValueError(f"scenes seed={seed}: expected an integer >= 0")
    knobs = _check_difficulty(difficulty)
    params: dict[str, Any] = {
        "generator_version": _GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "height": int(height),
        "width": int(width),
        "seed": int(seed),
        "difficulty": knobs,
    }
    marker = root / "scenes.json"
    if marker.is_file():
        try:
            existing = json.loads(marker.read_text())
        except (OSError, ValueError):
            existing = None
        if existing == params:
            return root
    start = time.perf_counter()
    if marker.exists():
        marker.unlink()
    counts = {"train": int(num_train), "val": int(num_val)}
    for split_index, split in enumerate(_SPLITS):
        image_dir = root / "images" / split
        mask_dir = root / "masks" / split
        for d in (image_dir, mask_dir):
            d.mkdir(parents=True, exist_ok=True)
            for old in d.glob("scene_*.png"):
                old.unlink()
        for i in range(counts[split]):
            rng = np.random.default_rng([int(seed), split_index, i])
            image, mask = generate_scene(rng, int(height), int(width), **knobs)
            name = _scene_name(i)
            _write_png(image_dir / f"{name}.png", image)
            _write_png(mask_dir / f"{name}.png", mask)
    marker.write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    elapsed = time.perf_counter() - start
    log.info(
        "generated the scenes dataset in %s: %d train + %d val images of %dx%d in %.1f s",
        root,
        counts["train"],
        counts["val"],
        int(height),
        int(width),
        elapsed,
    )
    return root


def class_frequencies(masks: Sequence[np.ndarray], num_classes: int = 9) -> np.ndarray:
    """Fraction of pixels per class id over a set of masks.

    Args:
        masks: uint8 label maps of any sizes.
        num_classes: Number of real classes.

    Returns:
        float64 array (num_classes + 1,): fractions of classes 0..num_classes-1, then the
        fraction of all other ids (the ignore label). Sums to 1.
    """
    counts = np.zeros(256, np.int64)
    for m in masks:
        counts += np.bincount(np.asarray(m, np.uint8).ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    out = np.zeros(num_classes + 1, np.float64)
    out[:num_classes] = counts[:num_classes] / total
    out[num_classes] = counts[num_classes:].sum() / total
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: generate the ``scenes`` dataset (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m picoseg.data.scenes",
        description="Generate the procedural street-scene segmentation dataset.",
    )
    parser.add_argument("--root", required=True, type=Path, help="output directory")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    for key, value in DEFAULT_DIFFICULTY.items():
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=type(value),
            default=value,
            help=f"difficulty knob (default {value})",
        )
    parser.add_argument(
        "--stats", action="store_true", help="print the class frequencies of the train split"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    difficulty = {key: getattr(args, key) for key in DEFAULT_DIFFICULTY}
    root = ensure_scenes_dataset(
        args.root, args.num_train, args.num_val, args.height, args.width, args.seed, **difficulty
    )
    print(root)
    if args.stats:
        masks = [
            cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            for p in sorted((root / "masks" / "train").glob("scene_*.png"))
        ]
        freq = class_frequencies(masks, len(SCENES_CLASSES))
        for name, f in zip((*SCENES_CLASSES, "ignore"), freq, strict=True):
            print(f"{name:>14s} {100 * f:6.2f} %")


if __name__ == "__main__":
    main()
