"""The vocabulary of ``scenes``: class names, palette, ignore label and the class ids.

Its single source is the dataset's config, ``conf/dataset/scenes.yaml`` (shipped inside the
package as ``picoseg.conf``): ``class_names``, ``palette``, ``num_classes`` and ``ignore_index``
are read from it here, once, on import, so the generator and the configs cannot drift apart.
The painters use the class ids below, looked up by name: the order of ``class_names`` is the
order of the ids.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from omegaconf import OmegaConf

__all__ = [
    "BUILDING",
    "CAR",
    "PERSON",
    "POLE",
    "ROAD",
    "SCENES_CLASSES",
    "SCENES_IGNORE_INDEX",
    "SCENES_PALETTE",
    "SIDEWALK",
    "SIGN",
    "SKY",
    "THING_CLASSES",
    "VEGETATION",
]

_SOURCE = "picoseg.conf/dataset/scenes.yaml"
"""The file holding the vocabulary, in the package ``picoseg.conf`` (the folder ``conf/``)."""


def _read_vocabulary() -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...], int]:
    """Class names, palette and ignore label of :data:`_SOURCE`, checked against each other."""
    package, _, path = _SOURCE.partition("/")
    text = importlib.resources.files(package).joinpath(path).read_text(encoding="utf-8")
    cfg: Any = OmegaConf.create(text)  # only plain values are read: no interpolation resolved
    names = tuple(str(name) for name in cfg.class_names)
    palette = []
    for rgb in cfg.palette:
        if len(rgb) != 3 or not all(0 <= int(v) <= 255 for v in rgb):
            raise ValueError(f"{_SOURCE}: palette colour {list(rgb)}: expected 3 values in 0-255")
        palette.append((int(rgb[0]), int(rgb[1]), int(rgb[2])))
    if int(cfg.num_classes) != len(names) or len(palette) != len(names):
        raise ValueError(
            f"{_SOURCE}: num_classes={cfg.num_classes}, {len(names)} class_names and "
            f"{len(palette)} palette colours: expected the same number"
        )
    ignore_index = int(cfg.ignore_index)
    if not len(names) <= ignore_index <= 255:
        raise ValueError(
            f"{_SOURCE}: ignore_index={ignore_index}: expected a value in {len(names)}-255 (the "
            "masks are 8-bit and the ignore label is no class id)"
        )
    return names, tuple(palette), ignore_index


_NAMES, _PALETTE, _IGNORE_INDEX = _read_vocabulary()

SCENES_CLASSES: tuple[str, ...] = _NAMES
"""Class names of the ``scenes`` dataset; the index in this tuple is the class id."""

SCENES_PALETTE: tuple[tuple[int, int, int], ...] = _PALETTE
"""RGB colour (0-255) of each class for visualisation, as in Cityscapes."""

SCENES_IGNORE_INDEX: int = _IGNORE_INDEX
"""Label of the ignored band along the boundaries of thing classes."""


def _class_id(name: str) -> int:
    if name not in SCENES_CLASSES:
        raise ValueError(
            f"{_SOURCE}: class_names {list(SCENES_CLASSES)} lack {name!r}, which the scenes "
            "generator paints"
        )
    return SCENES_CLASSES.index(name)


ROAD = _class_id("road")
SIDEWALK = _class_id("sidewalk")
BUILDING = _class_id("building")
VEGETATION = _class_id("vegetation")
SKY = _class_id("sky")
POLE = _class_id("pole")
SIGN = _class_id("traffic_sign")
PERSON = _class_id("person")
CAR = _class_id("car")
THING_CLASSES = (POLE, SIGN, PERSON, CAR)
"""Class ids of the things (poles, signs, people, cars), whose boundaries carry the ignore band."""
