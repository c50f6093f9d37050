"""Labels on the embedding grid: top-left, centre and pure cells, against hand-made masks."""

from __future__ import annotations

import pytest
import torch

from picoseg.contrast.grid_labels import mixed_cells, resize_labels

# An 8 x 8 mask read as a 2 x 2 grid of 4 x 4 cells:
# - top-left cell: class 1 except its top-left pixel (class 2): top-left 2, centre 1, mixed;
# - top-right cell: all class 3: pure;
# - bottom-left cell: class 0 with its bottom row ignored (255): top-left 0, centre 0, mixed;
# - bottom-right cell: left half class 5, right half class 6: top-left 5, centre (row 6,
#   column 6) 6, mixed.
MASK = torch.zeros(1, 8, 8, dtype=torch.long)
MASK[0, :4, :4] = 1
MASK[0, 0, 0] = 2
MASK[0, :4, 4:] = 3
MASK[0, 7, :4] = 255
MASK[0, 4:, 4:6] = 5
MASK[0, 4:, 6:] = 6


def test_nearest_takes_the_top_left_pixel():
    assert resize_labels(MASK, (2, 2), "nearest").tolist() == [[[2, 3], [0, 5]]]


def test_center_takes_the_pixel_at_the_cell_centre():
    # Pixel floor((i + 0.5) * 4) = 2 and 6 of each axis.
    expected = [[[MASK[0, 2, 2].item(), 3], [0, MASK[0, 6, 6].item()]]]
    assert expected == [[[1, 3], [0, 6]]]
    assert resize_labels(MASK, (2, 2), "center").tolist() == expected


def test_pure_keeps_unanimous_cells_and_ignores_mixed_ones():
    assert resize_labels(MASK, (2, 2), "pure", ignore_index=255).tolist() == [
        [[255, 3], [255, 255]]
    ]
    assert mixed_cells(MASK, (2, 2)).tolist() == [[[True, False], [True, True]]]
    # Class 0 is a real class: a cell of zeros stays 0.
    zeros = torch.zeros(1, 8, 8, dtype=torch.long)
    assert resize_labels(zeros, (2, 2), "pure").tolist() == [[[0, 0], [0, 0]]]


def test_modes_agree_on_a_mask_of_blocks_and_keep_dtype():
    blocks = torch.arange(4).view(1, 2, 2).repeat_interleave(4, 1).repeat_interleave(4, 2)
    for mode in ("nearest", "center", "pure"):
        out = resize_labels(blocks, (2, 2), mode)
        assert out.tolist() == [[[0, 1], [2, 3]]] and out.dtype == blocks.dtype
    assert resize_labels(blocks, (8, 8), "pure") is blocks  # same size: unchanged


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="label_resize='majority'"):
        resize_labels(MASK, (2, 2), "majority")
