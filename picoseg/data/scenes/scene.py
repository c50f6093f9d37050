"""One ``scenes`` image: the difficulty knobs and the composition of a scene from an RNG.

:func:`generate_scene` checks the difficulty knobs (:data:`DEFAULT_DIFFICULTY`) and paints a
:class:`_Scene` in a fixed order: sky, buildings, trees on the horizon, ground, hedges (see
:mod:`picoseg.data.scenes.street`), then the things placed on the ground and drawn far to near
(:mod:`picoseg.data.scenes.things`), then the ignore band along the thing boundaries, then the
photometric finish (shadows, lighting, colour jitter, blur and noise).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from picoseg.data.scenes.street import _M
from picoseg.data.scenes.things import _ThingPainter
from picoseg.data.scenes.vocabulary import SCENES_IGNORE_INDEX, THING_CLASSES

__all__ = ["DEFAULT_DIFFICULTY", "generate_scene"]

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


class _Scene(_ThingPainter):
    """One scene: its street and things, where the things stand, and the finishing touches."""

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
