"""The things of ``scenes``: painters of cars, people, poles, traffic signs and trees.

:class:`_ThingPainter` adds to the street (:class:`~picoseg.data.scenes.street._Street`) one
method per thing, which draws it standing at a point of the ground plane, at the size its depth
gives, with its soft shadow. Where the things stand, and in which order they are drawn, is
decided by the scene (:mod:`picoseg.data.scenes.scene`).
"""

from __future__ import annotations

import numpy as np

from picoseg.data.scenes.canvas import _CAR_COLOURS, _CLOTHES, _GREENS, _SKIN, _grey
from picoseg.data.scenes.street import _Street
from picoseg.data.scenes.vocabulary import CAR, PERSON, POLE, SIGN, VEGETATION


class _ThingPainter(_Street):
    """The painters of the thing classes (and of the roadside trees) of one scene."""

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
