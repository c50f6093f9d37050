"""Colour masks and side-by-side pictures of images, ground truth and predictions."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IGNORE_COLOR = (0, 0, 0)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Well-separated colours (evenly spaced hues, alternating lightness) for ``num_classes``."""
    palette = []
    for c in range(num_classes):
        hue = (c * 0.618033988749895) % 1.0
        light = 0.45 if c % 2 else 0.6
        r, g, b = colorsys.hls_to_rgb(hue, light, 0.75)
        palette.append((round(r * 255), round(g * 255), round(b * 255)))
    return palette


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) integer class ids -> (H, W, 3) uint8 RGB; ids outside the palette (the ignore
    label) are drawn black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = IGNORE_COLOR
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.clip(mask, 0, 255).astype(np.intp)]


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) float normalised image -> (H, W, 3) uint8."""
    out = image.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(out, 0.0, 1.0) * 255).round().astype(np.uint8)


def prediction_grid(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
) -> Image.Image:
    """One row per sample: image | ground truth | prediction, with a colour legend below.

    Args:
        images: (H, W, 3) uint8 RGB each.
        labels, predictions: (H, W) class ids each (ignore label drawn black).
    """
    rows = []
    for image, label, pred in zip(images, labels, predictions, strict=True):
        rows.append(np.concatenate([image, colorize(label, palette), colorize(pred, palette)], 1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows])
    picture = Image.fromarray(grid)
    if not class_names:
        return picture
    swatch, per_row = 14, max(1, width // 130)
    legend_rows = -(-len(class_names) // per_row)
    legend = Image.new("RGB", (width, legend_rows * (swatch + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for c, name in enumerate(class_names):
        x, y = (c % per_row) * 130 + 4, (c // per_row) * (swatch + 4) + 4
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(palette[c]))
        draw.text((x + swatch + 4, y + 1), str(name), fill=(0, 0, 0))
    out = Image.new("RGB", (width, picture.height + legend.height), (255, 255, 255))
    out.paste(picture, (0, 0))
    out.paste(legend, (0, picture.height))
    return out


def save_confusion_png(path: str | Path, confusion: np.ndarray, class_names: Sequence[str]) -> Path:
    """Draw a row-normalised (C, C) confusion matrix (rows: ground truth, columns: prediction,
    NaN rows left blank) as a heat map with the class names on both axes, saved at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    matrix = np.asarray(confusion, dtype=np.float64)
    n = len(class_names)
    size = 2.5 + 0.45 * n
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    try:
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(n), labels=list(class_names), rotation=60, ha="right")
        ax.set_yticks(range(n), labels=list(class_names))
        ax.set_xlabel("prediction")
        ax.set_ylabel("ground truth")
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j] == matrix[i, j]:
                        color = "white" if matrix[i, j] > 0.5 else "black"
                        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                                fontsize=7, color=color)  # fmt: skip
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def save_prediction_grid(path: str | Path, *args, **kwargs) -> Path:
    """:func:`prediction_grid` saved as a PNG at ``path``."""
    path = Path(path)
    prediction_grid(*args, **kwargs).save(path)
    return path
