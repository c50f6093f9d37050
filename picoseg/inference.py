"""Test-time inference: whole image or sliding window, multi-scale, horizontal flip."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("whole", "slide")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"inference.{name} must be two positive integers (H, W), got {value}")
    return pair  # type: ignore[return-value]


def _logits_to_probabilities(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) -> softmax probabilities (B, C, h, w), logits upsampled bilinearly."""
    logits = network(images).logits
    if logits.shape[-2:] != images.shape[-2:]:
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits.float().softmax(dim=1)


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis; the last window is aligned to the border."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def _slide(
    network: nn.Module, images: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Sliding-window probabilities (B, C, H, W), overlaps averaged by a count map.

    An image smaller than the window along an axis is zero-padded (bottom/right) up to the
    window on that axis; the padding is cropped off the probabilities.
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = max(window[0] - height, 0), max(window[1] - width, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    full_h, full_w = images.shape[-2:]
    win_h, win_w = min(window[0], full_h), min(window[1], full_w)
    total: torch.Tensor | None = None
    count = images.new_zeros((1, 1, full_h, full_w))
    for top in _starts(full_h, win_h, stride[0]):
        for left in _starts(full_w, win_w, stride[1]):
            crop = images[..., top : top + win_h, left : left + win_w]
            probs = _logits_to_probabilities(network, crop)
            if total is None:
                total = probs.new_zeros((*probs.shape[:2], full_h, full_w))
            total[..., top : top + win_h, left : left + win_w] += probs
            count[..., top : top + win_h, left : left + win_w] += 1
    assert total is not None
    return (total / count)[..., :height, :width]


@torch.no_grad()
def predict_probabilities(
    network: nn.Module,
    images: torch.Tensor,
    mode: str = "whole",
    window: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Softmax probabilities at the input size, averaged over scales and flips.

    For each scale the image is resized bilinearly, predicted (whole or by sliding window) and
    its probabilities resized back to the input size; with ``flip`` the horizontally flipped
    image is predicted too and its probabilities flipped back. The result is the mean of the
    softmax probabilities over all ``len(scales) * (1 + flip)`` passes.

    In ``slide`` mode, windows of ``window`` pixels are taken every ``stride`` pixels, the last
    one aligned to the image border, and overlapping probabilities are averaged with a count map.
    A (rescaled) image smaller than the window is zero-padded up to the window and the padding
    cropped off afterwards, so every pass sees the training crop size.

    Args:
        network: maps (B, 3, h, w) images to an object with ``.logits`` (B, C, h', w').
        images: (B, 3, H, W) normalised images.
        mode: ``"whole"`` or ``"slide"``.
        window: (H, W) of a sliding window.
        stride: (H, W) step between windows.
        scales: image scale factors.
        flip: also average over the horizontally flipped image.

    Returns:
        (B, C, H, W) class probabilities.
    """
    if mode not in MODES:
        raise ValueError(f"inference.mode must be one of {MODES}, got {mode!r}")
    if not scales or min(float(s) for s in scales) <= 0:
        raise ValueError(f"inference.scales must be positive numbers, got {scales}")
    window_hw, stride_hw = _pair(window, "window"), _pair(stride, "stride")
    size = images.shape[-2:]
    total: torch.Tensor | None = None
    passes = 0
    for scale in scales:
        if float(scale) == 1.0:
            scaled = images
        else:
            scaled_size = [max(1, round(s * float(scale))) for s in size]
            scaled = F.interpolate(images, size=scaled_size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            batch = scaled.flip(-1) if flipped else scaled
            if mode == "slide":
                probs = _slide(network, batch, window_hw, stride_hw)
            else:
                probs = _logits_to_probabilities(network, batch)
            if flipped:
                probs = probs.flip(-1)
            if probs.shape[-2:] != size:
                probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
            passes += 1
    assert total is not None
    return total / passes
