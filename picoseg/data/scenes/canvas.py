"""The drawing surface of ``scenes``: noise, colours and the painting primitives.

- :func:`_smooth_noise`: value noise, the base of every texture (clouds, leaves, asphalt...).
- :func:`_jitter`, :func:`_grey`: random colours near a base colour, random greys.
- ``_FACADES``, ``_CAR_COLOURS``, ``_CLOTHES``, ``_SKIN``, ``_GREENS``: the base colours the
  painters draw from.
- :class:`_Canvas`: the image and its label map, painted together back to front with polygons,
  rectangles, ellipses and leafy blobs, plus a shade map for soft shadows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from picoseg.data.scenes.vocabulary import SKY


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
