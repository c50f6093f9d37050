"""The CE vs PiCo study script's class statistics, on masks with hand-counted pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def test_class_pixel_counts_on_full_masks_and_on_the_embedding_grid(tmp_path, load_script):
    study = load_script("compare_ce_pico")
    # 4 x 8 mask: class 0 everywhere but a one-pixel-wide vertical "pole" (class 2) in column 1,
    # two ignored pixels and a 2 x 2 block of class 1 at rows 2-3, columns 4-5.
    mask = np.zeros((4, 8), dtype=np.uint8)
    mask[:, 1] = 2
    mask[0, 6:8] = 255
    mask[2:4, 4:6] = 1
    Image.fromarray(mask).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 8), 1, dtype=np.uint8)).save(tmp_path / "b.png")

    full = study.class_pixel_counts(tmp_path, 3, 255)
    assert full.tolist() == [32 - 4 - 2 - 4, 4 + 32, 4]
    # Stride 2: a 2 x 4 grid reading the top-left pixel of each 2 x 2 cell (nearest), i.e. rows
    # 0, 2 and columns 0, 2, 4, 6 of the mask. The pole in column 1 disappears; (0, 6) is
    # ignored and (2, 4) is class 1.
    grid = study.class_pixel_counts(tmp_path, 3, 255, stride=2)
    assert grid.tolist() == [8 - 1 - 1, 1 + 8, 0]


def test_confidence_interval_of_the_mean_by_hand(load_script):
    study = load_script("compare_ce_pico")
    # Three seeds: mean 0.50, sample std 0.01; Student's t(0.975, df=2) = 4.3027, so the
    # half-width is 4.3027 * 0.01 / sqrt(3) = 0.024841.
    mean, half = study.confidence_interval([0.49, 0.50, 0.51])
    assert mean == pytest.approx(0.50)
    assert half == pytest.approx(4.302653 * 0.01 / 3**0.5, rel=1e-5)
    assert study.mean_ci([0.49, 0.50, 0.51]) == "50.0 [47.5, 52.5]"
    # Two seeds: t(0.975, df=1) = 12.706; one seed has no interval.
    assert study.confidence_interval([0.4, 0.6])[1] == pytest.approx(
        12.7062 * 0.1414214 / 2**0.5, rel=1e-4
    )
    assert study.mean_ci([0.42]) == "42.0"
