"""Tests of the training and evaluation transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from picoseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transform,
    build_train_transform,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _normalised(rgb: np.ndarray) -> torch.Tensor:
    """Independent normalisation of uint8 (H, W, 3) values: (x / 255 - mean) / std, CHW."""
    return (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 - MEAN) / STD


def test_padding_is_ignore_in_mask_and_zero_in_image() -> None:
    image = np.full((20, 30, 3), (100, 150, 200), np.uint8)
    mask = np.full((20, 30), 1, np.uint8)
    t = build_train_transform((40, 50), scale_range=(0.5, 0.5), hflip=False, color_jitter=0.0)
    t.set_random_seed(0)
    out = t(image=image, mask=mask)
    img, msk = out["image"], torch.as_tensor(out["mask"])
    assert img.shape == (3, 40, 50) and img.dtype == torch.float32
    assert msk.shape == (40, 50)
    pad = msk == 255
    # The image was scaled by 0.5 to 10x15; everything else is padding.
    assert int(pad.sum()) == 40 * 50 - 10 * 15
    assert set(torch.unique(msk).tolist()) == {1, 255}
    zero = _normalised(np.zeros((1, 1, 3), np.uint8))[:, 0, 0]
    colour = _normalised(np.array([[[100, 150, 200]]], np.uint8))[:, 0, 0]
    for ch in range(3):
        assert torch.allclose(img[ch][pad], zero[ch].expand(int(pad.sum())), atol=1e-5)
        inside = img[ch][~pad]
        assert torch.allclose(inside, colour[ch].expand(inside.numel()), atol=1e-2)


def test_padding_with_other_ignore_index_and_jitter_keeps_mask_fill() -> None:
    t = build_train_transform((16, 16), scale_range=(1.0, 1.0), ignore_index=250)
    t.set_random_seed(3)
    out = t(image=np.full((8, 8, 3), 90, np.uint8), mask=np.zeros((8, 8), np.uint8))
    msk = torch.as_tensor(out["mask"])
    assert int((msk == 250).sum()) == 16 * 16 - 64
    assert int((msk == 0).sum()) == 64


def test_random_scale_uses_nearest_for_masks() -> None:
    # A 1-pixel checkerboard of ids 0 and 7: any interpolation would create other ids.
    yy, xx = np.mgrid[:48, :64]
    mask = np.where((yy + xx) % 2 == 0, 0, 7).astype(np.uint8)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    t = build_train_transform((32, 32), scale_range=(0.5, 2.0))
    t.set_random_seed(1)
    seen = set()
    for _ in range(30):
        out = t(image=image, mask=mask)
        assert out["image"].shape == (3, 32, 32)
        assert tuple(out["mask"].shape) == (32, 32)
        values = set(torch.unique(torch.as_tensor(out["mask"])).tolist())
        assert values <= {0, 7, 255}
        seen |= values
    assert {0, 7} <= seen


def test_output_shape_is_crop_for_large_and_small_inputs() -> None:
    t = build_train_transform([24, 40], scale_range=(0.5, 2.0))  # a list, as Hydra gives
    t.set_random_seed(2)
    for h, w in ((10, 12), (24, 40), (100, 150)):
        out = t(image=np.zeros((h, w, 3), np.uint8), mask=np.zeros((h, w), np.uint8))
        assert out["image"].shape == (3, 24, 40)
        assert tuple(out["mask"].shape) == (24, 40)


def test_identity_settings_give_plain_normalisation_and_flip_mirrors() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (16, 16), dtype=np.uint8)
    plain = build_train_transform((16, 16), scale_range=(1.0, 1.0), hflip=False, color_jitter=0.0)
    out = plain(image=image, mask=mask)
    assert torch.allclose(out["image"], _normalised(image), atol=1e-5)
    assert torch.equal(torch.as_tensor(out["mask"]), torch.from_numpy(mask))

    flip = build_train_transform((16, 16), scale_range=(1.0, 1.0), hflip=True, color_jitter=0.0)
    flip.set_random_seed(5)
    flipped = same = 0
    for _ in range(20):
        o = flip(image=image, mask=mask)
        m = torch.as_tensor(o["mask"])
        if torch.equal(m, torch.from_numpy(mask)):
            same += 1
            assert torch.allclose(o["image"], _normalised(image), atol=1e-5)
        else:
            flipped += 1
            assert torch.equal(m, torch.from_numpy(mask[:, ::-1].copy()))
            assert torch.allclose(o["image"], _normalised(image[:, ::-1].copy()), atol=1e-5)
    assert flipped > 0 and same > 0


def test_color_jitter_changes_image_not_mask() -> None:
    rng = np.random.default_rng(6)
    image = rng.integers(30, 220, (16, 16, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (16, 16), dtype=np.uint8)
    t = build_train_transform((16, 16), scale_range=(1.0, 1.0), hflip=False, color_jitter=0.4)
    t.set_random_seed(7)
    out = t(image=image, mask=mask)
    assert torch.equal(torch.as_tensor(out["mask"]), torch.from_numpy(mask))
    assert (out["image"] - _normalised(image)).abs().max() > 0.05


def test_eval_transform_keeps_full_image() -> None:
    image = np.random.default_rng(8).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    mask = np.full((13, 21), 3, np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = build_eval_transform(mean, std)(image=image, mask=mask)
    expected = (
        torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 - torch.tensor(mean).view(3, 1, 1)
    ) / torch.tensor(std).view(3, 1, 1)
    assert out["image"].shape == (3, 13, 21)
    assert torch.allclose(out["image"], expected, atol=1e-5)
    assert torch.equal(torch.as_tensor(out["mask"]), torch.from_numpy(mask))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_size": (0, 8)}, "crop_size"),
        ({"crop_size": (8,)}, "crop_size"),
        ({"crop_size": (8, 8), "scale_range": (2.0, 1.0)}, "scale_range"),
        ({"crop_size": (8, 8), "color_jitter": -0.1}, "color_jitter"),
        ({"crop_size": (8, 8), "ignore_index": 256}, "ignore_index"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_train_transform(**kwargs)
