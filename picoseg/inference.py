"""Test-time inference: whole image or sliding window, multi-scale, horizontal flip.

The sliding window follows the reference protocol (mmsegmentation's and ContrastiveSeg's slide
inference): the window is the training crop, the stride two thirds of it, and a window larger
than the image is clipped to the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

MODES = ("whole", "slide")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"inference.{name} must be two positive integers (H, W), got {value}")
    return pair  # type: ignore[return-value]


def size_divisor(network: nn.Module) -> int:
    """What the network's input height and width must be multiples of: its ``size_divisor``
    (:attr:`picoseg.models.Segmentor.size_divisor`, e.g. 16 for a ViT that cuts 16-pixel
    patches), 1 for a network that does not say."""
    return max(1, int(getattr(network, "size_divisor", 1) or 1))


def _logits_to_probabilities(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) -> softmax probabilities (B, C, h, w), logits upsampled bilinearly.

    An image whose sides are not multiples of the network's :func:`size_divisor` is zero-padded
    (bottom/right) to the next multiple, and the padding is cropped off the logits after they
    are upsampled to the padded size.
    """
    height, width = images.shape[-2:]
    divisor = size_divisor(network)
    pad_h, pad_w = -height % divisor, -width % divisor
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    logits = network(images).logits
    if logits.shape[-2:] != images.shape[-2:]:
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :height, :width].float().softmax(dim=1)


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis; the last window is aligned to the border."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def _window_corners(
    height: int, width: int, window: tuple[int, int], stride: tuple[int, int]
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The window clipped to a ``height`` x ``width`` image, and the (top, left) corner of every
    window position, the last one on each axis meeting the border."""
    win_h, win_w = min(window[0], height), min(window[1], width)
    corners = [
        (top, left)
        for top in _starts(height, win_h, stride[0])
        for left in _starts(width, win_w, stride[1])
    ]
    return (win_h, win_w), corners


def _slide(
    network: nn.Module,
    images: torch.Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    """Sliding-window probabilities (B, C, H, W), overlaps averaged by a count map.

    A window larger than the image along an axis is clipped to the image on that axis (no
    padding up to the window: the network sees the image, not a blank canvas around it).
    ``batch_size`` windows (of every image in ``images``) go through the network together.
    """
    height, width = images.shape[-2:]
    (win_h, win_w), corners = _window_corners(height, width, window, stride)
    num_images = images.shape[0]
    total: torch.Tensor | None = None
    count = images.new_zeros((1, 1, height, width))
    for first in range(0, len(corners), batch_size):
        group = corners[first : first + batch_size]
        crops = torch.cat(
            [images[..., top : top + win_h, left : left + win_w] for top, left in group]
        )
        probs = _logits_to_probabilities(network, crops)
        if total is None:
            total = probs.new_zeros((num_images, probs.shape[1], height, width))
        for i, (top, left) in enumerate(group):
            total[..., top : top + win_h, left : left + win_w] += probs[
                i * num_images : (i + 1) * num_images
            ]
            count[..., top : top + win_h, left : left + win_w] += 1
    assert total is not None
    return total / count


def default_stride(window: Sequence[int]) -> tuple[int, int]:
    """Two thirds of the window on each axis (rounded down), the reference protocol's overlap
    (Cityscapes: 512 x 1024 windows every 341 x 682 pixels)."""
    height, width = _pair(window, "window")
    return max(1, height * 2 // 3), max(1, width * 2 // 3)


def inference_settings(
    node: Mapping | DictConfig | None, crop_size: Sequence[int] | None
) -> dict[str, Any] | None:
    """Keyword arguments of :func:`predict_probabilities` from an entry point's ``inference``
    node, the sliding window defaulting to the run's training crop.

    Args:
        node: ``mode``, ``window``, ``stride``, ``scales``, ``flip``, ``batch_size``; a ``null``
            window is ``crop_size``, a ``null`` stride two thirds of the window.
        crop_size: (H, W) of the crop the network was trained on.

    Returns:
        The keyword arguments; ``None`` when ``node`` is ``None``.
    """
    if node is None:
        return None
    settings = dict(
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    )
    if settings.get("window") is None:
        if crop_size is None and settings.get("mode") == "slide":
            raise ValueError(
                "inference.mode=slide: the run has no training crop to take the window from; "
                "set inference.window=[H,W]"
            )
        settings["window"] = None if crop_size is None else [int(v) for v in crop_size]
    return settings


def is_single_whole_pass(settings: Mapping | None) -> bool:
    """True when ``settings`` ask for one whole-image pass at scale 1 without flip, which is
    what a plain forward gives (training's validation then keeps its logits and ``val/ce``)."""
    if settings is None:
        return True
    scales = [float(s) for s in settings.get("scales", (1.0,))]
    return settings.get("mode", "whole") == "whole" and scales == [1.0] and not settings.get("flip")


@torch.no_grad()
def predict_probabilities(
    network: nn.Module,
    images: torch.Tensor,
    mode: str = "whole",
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    batch_size: int = 4,
) -> torch.Tensor:
    """Softmax probabilities at the input size, averaged over scales and flips.

    For each scale the image is resized bilinearly, predicted (whole or by sliding window) and
    its probabilities resized back to the input size; with ``flip`` the horizontally flipped
    image is predicted too and its probabilities flipped back. The result is the mean of the
    softmax probabilities over all ``len(scales) * (1 + flip)`` passes.

    In ``slide`` mode, windows of ``window`` pixels are taken every ``stride`` pixels, the last
    one aligned to the image border, and overlapping probabilities are averaged with a count map.
    A window larger than the (rescaled) image is clipped to it, so a small image is predicted
    whole rather than inside a zero canvas. The entry points take the window from the run's
    training crop (:func:`inference_settings`), as the reference protocol does.

    Every pass pads its input only to the network's :func:`size_divisor` (none for a CNN; the
    patch size for a ViT) and crops the padding off the probabilities.

    Args:
        network: maps (B, 3, h, w) images to an object with ``.logits`` (B, C, h', w').
        images: (B, 3, H, W) normalised images.
        mode: ``"whole"`` or ``"slide"``.
        window: (H, W) of a sliding window; needed in ``slide`` mode.
        stride: (H, W) step between windows; ``None``: two thirds of the window.
        scales: image scale factors.
        flip: also average over the horizontally flipped image.
        batch_size: sliding windows per forward pass (each holds all B images).

    Returns:
        (B, C, H, W) class probabilities.
    """
    if mode not in MODES:
        raise ValueError(f"inference.mode must be one of {MODES}, got {mode!r}")
    if not scales or min(float(s) for s in scales) <= 0:
        raise ValueError(f"inference.scales must be positive numbers, got {scales}")
    if int(batch_size) < 1:
        raise ValueError(f"inference.batch_size must be a positive integer, got {batch_size}")
    if mode == "slide":
        if window is None:
            raise ValueError(
                "inference.window is needed for mode=slide: give (H, W), e.g. the training crop"
            )
        window_hw = _pair(window, "window")
        stride_hw = default_stride(window_hw) if stride is None else _pair(stride, "stride")
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
                probs = _slide(network, batch, window_hw, stride_hw, int(batch_size))
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


@torch.no_grad()
def predict_labels(
    network: nn.Module,
    images: torch.Tensor,
    size: Sequence[int] | None = None,
    **settings: Any,
) -> torch.Tensor:
    """(B, H, W) class ids: :func:`predict_probabilities` with ``settings``, the probabilities
    resized bilinearly to ``size`` (e.g. the labels' size) when given, then the argmax."""
    probs = predict_probabilities(network, images, **settings)
    if size is not None and tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)
    return probs.argmax(dim=1)


def pick_device(cfg: Mapping | DictConfig) -> torch.device:
    """The entry point's ``device`` (``cpu``, ``cuda``, ``cuda:1``, ...); unset or ``null``:
    the GPU when there is one."""
    name = cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
