"""Training and evaluation transforms (albumentations 2.x) for semantic segmentation.

Both return an ``albumentations.Compose`` called as ``t(image=uint8 (H, W, 3), mask=uint8 (H, W))``
that gives ``{"image": float32 tensor (3, h, w) normalised, "mask": uint8 tensor (h, w)}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_eval_transform", "build_train_transform"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, for images scaled to [0, 1]."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet, for images scaled to [0, 1]."""


def _pair(value: Sequence[int], what: str) -> tuple[int, int]:
    if len(value) != 2 or any(int(v) != v or int(v) < 1 for v in value):
        raise ValueError(f"{what}={list(value)!r}: expected two positive integers (height, width)")
    return int(value[0]), int(value[1])


def _triple(value: Sequence[float], what: str) -> tuple[float, float, float]:
    if len(value) != 3:
        raise ValueError(f"{what}={list(value)!r}: expected three per-channel values (R, G, B)")
    return float(value[0]), float(value[1]), float(value[2])


def build_train_transform(
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: bool = True,
    color_jitter: float = 0.2,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
) -> A.Compose:
    """Random scale, pad, random crop, flip, colour jitter, normalise, to tensor.

    The image is rescaled by a factor drawn uniformly from ``scale_range`` (bilinear for the
    image, nearest for the mask, so no new label ids appear), padded evenly on both sides to
    at least the crop size (image fill 0, mask fill ``ignore_index``), randomly cropped to
    ``crop_size``, flipped horizontally with probability 0.5, colour-jittered and normalised.
    Colour jitter comes after padding, so a contrast change may move padded pixels slightly
    away from 0; their labels are ignored anyway.

    Args:
        crop_size: Output (height, width) in pixels; a tuple or a list.
        scale_range: (min, max) rescaling factor, 0 < min <= max.
        hflip: Whether to flip horizontally with probability 0.5.
        color_jitter: Strength of the brightness, contrast and saturation jitter (factors in
            [1 - s, 1 + s]); the hue jitter is min(s / 4, 0.05). 0 disables it.
        mean: Per-channel RGB mean for normalisation, of images scaled to [0, 1].
        std: Per-channel RGB standard deviation for normalisation.
        ignore_index: Mask value of padded pixels (0-255).

    Returns:
        The transform; outputs image float32 (3, crop_h, crop_w), mask uint8 (crop_h, crop_w).

    Raises:
        ValueError: Bad crop size, scale range, jitter strength or ignore index.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    if len(scale_range) != 2 or not 0 < float(scale_range[0]) <= float(scale_range[1]):
        raise ValueError(
            f"scale_range={list(scale_range)!r}: expected (min, max) with 0 < min <= max"
        )
    if color_jitter < 0:
        raise ValueError(f"color_jitter={color_jitter!r}: expected a value >= 0")
    if not 0 <= int(ignore_index) <= 255:
        raise ValueError(f"ignore_index={ignore_index!r}: expected 0..255 for 8-bit masks")
    lo, hi = float(scale_range[0]), float(scale_range[1])
    steps: list[A.BasicTransform] = []
    if (lo, hi) != (1.0, 1.0):
        steps.append(
            A.RandomScale(
                scale_limit=(lo - 1.0, hi - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )
    steps += [
        A.PadIfNeeded(
            min_height=crop_h,
            min_width=crop_w,
            position="center",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=int(ignore_index),
        ),
        A.RandomCrop(height=crop_h, width=crop_w),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        s = float(color_jitter)
        steps.append(
            A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(s / 4.0, 0.05), p=1.0)
        )
    steps += [
        A.Normalize(mean=_triple(mean, "mean"), std=_triple(std, "std"), max_pixel_value=255.0),
        ToTensorV2(),
    ]
    return A.Compose(steps)


def build_eval_transform(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> A.Compose:
    """Normalise and convert to tensors, keeping the full image.

    Args:
        mean: Per-channel RGB mean for normalisation, of images scaled to [0, 1].
        std: Per-channel RGB standard deviation for normalisation.

    Returns:
        The transform; outputs image float32 (3, H, W), mask uint8 (H, W).
    """
    return A.Compose(
        [
            A.Normalize(mean=_triple(mean, "mean"), std=_triple(std, "std"), max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )
