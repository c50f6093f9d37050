"""The street of a ``scenes`` image: its layout and the stuff painted first.

:class:`_Street` draws the layout of one scene (horizon, vanishing point, lanes, sidewalks), maps
the ground plane to pixels, and paints the stuff classes back to front: sky, buildings, trees on
the horizon, the ground (road with markings, tiled sidewalks) and hedges. The things standing on
the ground are in :mod:`picoseg.data.scenes.things`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from picoseg.data.scenes.canvas import _FACADES, _GREENS, _Canvas, _grey, _jitter, _smooth_noise
from picoseg.data.scenes.vocabulary import BUILDING, ROAD, SIDEWALK, VEGETATION

# World scale: lateral ground units (1.0 = image width at the bottom row) per metre.
_M = 0.097


class _Street:
    """Geometry of one scene (horizon, vanishing point and ground-plane coordinates) and the
    painters of its stuff classes."""

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
