import numpy as np

from picoseg.visualize import colorize, default_palette, denormalize, prediction_grid


def test_colorize_maps_ids_and_paints_ignore_black():
    palette = [(10, 20, 30), (40, 50, 60)]
    out = colorize(np.array([[0, 1], [255, 1]], dtype=np.uint8), palette)
    assert out.tolist() == [[[10, 20, 30], [40, 50, 60]], [[0, 0, 0], [40, 50, 60]]]


def test_default_palette_colours_are_distinct():
    palette = default_palette(150)
    assert len(set(palette)) == 150


def test_denormalize_inverts_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalized = ((image / 255.0 - mean) / std).transpose(2, 0, 1)
    assert np.array_equal(denormalize(normalized, mean, std), image)


def test_grid_puts_image_truth_prediction_side_by_side():
    image = np.full((4, 6, 3), 7, dtype=np.uint8)
    label = np.zeros((4, 6), dtype=np.uint8)
    pred = np.ones((4, 6), dtype=np.uint8)
    palette = [(255, 0, 0), (0, 255, 0)]
    grid = np.asarray(prediction_grid([image, image], [label, label], [pred, pred], palette))
    assert grid.shape == (2 * (4 + 2), 18, 3)
    assert (grid[0, :6] == 7).all()
    assert (grid[0, 6:12] == (255, 0, 0)).all()
    assert (grid[0, 12:18] == (0, 255, 0)).all()
