"""Writing the ``scenes`` dataset to disk, and its command line.

:func:`ensure_scenes_dataset` writes the images and masks of both splits as PNG files in the
layout of :class:`picoseg.data.FolderDataset`, then the JSON marker ``scenes.json`` holding the
generation parameters, and does nothing when the marker already holds the same parameters.
:func:`class_frequencies` counts the pixels of each class; :func:`main` is
``python -m picoseg.data.scenes``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from picoseg.data.scenes.scene import DEFAULT_DIFFICULTY, _check_difficulty, generate_scene
from picoseg.data.scenes.vocabulary import SCENES_CLASSES

__all__ = ["class_frequencies", "ensure_scenes_dataset", "main"]

# The package's name, as when the generator was one module: logging configurations keep working.
log = logging.getLogger("picoseg.data.scenes")

_GENERATOR_VERSION = 1
_SPLITS = ("train", "val")


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


def class_frequencies(
    masks: Sequence[np.ndarray], num_classes: int = len(SCENES_CLASSES)
) -> np.ndarray:
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
    """Command line: generate the ``scenes`` dataset (see :mod:`picoseg.data.scenes`)."""
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
