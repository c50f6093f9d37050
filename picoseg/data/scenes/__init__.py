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

The modules, from the bottom up (the public names are all importable from this package):

- :mod:`~picoseg.data.scenes.vocabulary`: class names, palette, ignore label and class ids, read
  from their single source, the dataset config ``conf/dataset/scenes.yaml``.
- :mod:`~picoseg.data.scenes.canvas`: noise, colours and the painting primitives.
- :mod:`~picoseg.data.scenes.street`: the street layout and its stuff (sky, buildings, ground...).
- :mod:`~picoseg.data.scenes.things`: the painters of cars, people, poles, signs and trees.
- :mod:`~picoseg.data.scenes.scene`: the difficulty knobs and :func:`generate_scene`.
- :mod:`~picoseg.data.scenes.generation`: :func:`ensure_scenes_dataset` (the PNG files and the
  ``scenes.json`` marker), :func:`class_frequencies` and the command line.
"""

from __future__ import annotations

from picoseg.data.scenes.generation import class_frequencies, ensure_scenes_dataset, main
from picoseg.data.scenes.scene import DEFAULT_DIFFICULTY, generate_scene
from picoseg.data.scenes.vocabulary import SCENES_CLASSES, SCENES_IGNORE_INDEX, SCENES_PALETTE

__all__ = [
    "DEFAULT_DIFFICULTY",
    "SCENES_CLASSES",
    "SCENES_IGNORE_INDEX",
    "SCENES_PALETTE",
    "class_frequencies",
    "ensure_scenes_dataset",
    "generate_scene",
    "main",
]
