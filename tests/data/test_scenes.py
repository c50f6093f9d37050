"""Tests of the procedural ``scenes`` dataset generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from picoseg.data.scenes import (
    DEFAULT_DIFFICULTY,
    SCENES_CLASSES,
    SCENES_PALETTE,
    class_frequencies,
    ensure_scenes_dataset,
    generate_scene,
    main,
)

TINY = {"num_train": 3, "num_val": 2, "height": 32, "width": 48}
THINGS = (5, 6, 7, 8)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def sample() -> list[tuple[np.ndarray, np.ndarray]]:
    """40 default-size scenes of the default train split, generated once for the module."""
    return [generate_scene(np.random.default_rng([0, 0, i]), 128, 256) for i in range(40)]


def test_classes_and_palette() -> None:
    assert SCENES_CLASSES == (
        "road",
        "sidewalk",
        "building",
        "vegetation",
        "sky",
        "pole",
        "traffic_sign",
        "person",
        "car",
    )
    assert len(SCENES_PALETTE) == 9
    assert SCENES_PALETTE[0] == (128, 64, 128) and SCENES_PALETTE[8] == (0, 0, 142)


def test_generate_scene_types_and_determinism() -> None:
    image, mask = generate_scene(np.random.default_rng([3, 0, 7]), 40, 72)
    assert image.shape == (40, 72, 3) and image.dtype == np.uint8
    assert mask.shape == (40, 72) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= set(range(9)) | {255}
    image2, mask2 = generate_scene(np.random.default_rng([3, 0, 7]), 40, 72)
    assert np.array_equal(image, image2) and np.array_equal(mask, mask2)
    image3, mask3 = generate_scene(np.random.default_rng([4, 0, 7]), 40, 72)
    assert not np.array_equal(image, image3)
    assert not np.array_equal(mask, mask3)


def test_bad_arguments_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="noise_sdt"):
        generate_scene(rng, 32, 32, noise_sdt=1.0)
    with pytest.raises(ValueError, match="blur"):
        generate_scene(rng, 32, 32, blur=-1.0)
    with pytest.raises(ValueError, match="8x32"):
        generate_scene(rng, 8, 32)


def test_class_frequencies_are_long_tailed(sample: list[tuple[np.ndarray, np.ndarray]]) -> None:
    masks = [m for _, m in sample]
    freq = class_frequencies(masks, 9)
    # Independent count of the same quantities.
    stack = np.stack(masks)
    for c in range(9):
        assert freq[c] == pytest.approx((stack == c).mean())
    assert freq[9] == pytest.approx((stack == 255).mean())
    road, sidewalk, building, vegetation, sky, pole, sign, person, car = freq[:9]
    assert road + building + sky > 0.5
    assert 0.15 < road < 0.45 and 0.12 < building < 0.4 and 0.05 < sky < 0.3
    assert 0.04 < vegetation < 0.25 and 0.03 < sidewalk < 0.15
    assert 0.01 < car < 0.1
    assert 0.002 < person < 0.04 and 0.002 < pole < 0.03 and 0.0005 < sign < 0.03
    # Long tail: stuff classes dominate, thin/small things are rare.
    assert min(road, building) > max(car, person, pole, sign)
    assert car > person and car > sign
    # Every class appears, and the small ones appear in many images.
    present = np.array([[(m == c).any() for c in range(9)] for m in masks])
    assert present.any(axis=0).all()
    assert present[:, 5].mean() > 0.5 and present[:, 6].mean() > 0.4
    assert present[:, 7].mean() > 0.5
    # A few percent of ignored pixels.
    assert 0.005 < freq[9] < 0.06


def test_poles_are_thin(sample: list[tuple[np.ndarray, np.ndarray]]) -> None:
    runs = []
    for _, mask in sample:
        # Horizontal runs of pole pixels: most are pole shafts 1-3 px wide (lamp arms are longer).
        pole = np.pad(mask == 5, ((0, 0), (1, 1))).astype(np.int8)
        diff = np.diff(pole, axis=1)
        starts, ends = np.nonzero(diff == 1), np.nonzero(diff == -1)
        runs.extend((ends[1] - starts[1]).tolist())
    assert len(runs) > 100
    assert np.median(runs) <= 3


def test_ignore_band_lies_along_thing_boundaries() -> None:
    rng_args = [11, 0, 3]
    image1, mask1 = generate_scene(np.random.default_rng(rng_args), 96, 160, ignore_width=1)
    image0, mask0 = generate_scene(np.random.default_rng(rng_args), 96, 160, ignore_width=0)
    assert np.array_equal(image0, image1)  # the band changes labels only
    assert (mask0 == 255).sum() == 0
    band = mask1 == 255
    assert band.sum() > 0
    assert np.array_equal(mask1[~band], mask0[~band])
    # Independent definition: a pixel is in the band iff one of its 4-neighbours is a thing
    # pixel of another class.
    padded = np.pad(mask0, 1, constant_values=254)
    expected = np.zeros_like(band)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        nb = padded[1 + dy : 1 + dy + mask0.shape[0], 1 + dx : 1 + dx + mask0.shape[1]]
        expected |= np.isin(nb, THINGS) & (nb != mask0)
    assert np.array_equal(band, expected)


def test_difficulty_knobs_change_the_image_not_the_labels() -> None:
    args = [5, 1, 0]
    a_img, a_mask = generate_scene(np.random.default_rng(args), 64, 96)
    b_img, b_mask = generate_scene(np.random.default_rng(args), 64, 96, noise_std=30.0)
    assert np.array_equal(a_mask, b_mask)

    # More noise: larger differences between horizontally adjacent pixels.
    def roughness(img: np.ndarray) -> float:
        return float(np.abs(np.diff(img.astype(np.float32), axis=1)).mean())

    assert roughness(b_img) > roughness(a_img) + 3.0


def test_ensure_writes_layout_and_follows_seeding_rule(tmp_path: Path) -> None:
    root = ensure_scenes_dataset(tmp_path / "s", seed=7, **TINY)
    assert root == tmp_path / "s"
    for split, n in (("train", 3), ("val", 2)):
        images = sorted((root / "images" / split).iterdir())
        masks = sorted((root / "masks" / split).iterdir())
        assert [p.name for p in images] == [f"scene_{i:05d}.png" for i in range(n)]
        assert [p.name for p in masks] == [p.name for p in images]
    # Image 1 of the val split (split index 1) comes from default_rng([seed, 1, 1]).
    expected_img, expected_mask = generate_scene(np.random.default_rng([7, 1, 1]), 32, 48)
    with Image.open(root / "images" / "val" / "scene_00001.png") as im:
        assert im.mode == "RGB"
        assert np.array_equal(np.asarray(im), expected_img)
    with Image.open(root / "masks" / "val" / "scene_00001.png") as mk:
        assert mk.mode == "L"
        assert np.array_equal(np.asarray(mk), expected_mask)
    marker = json.loads((root / "scenes.json").read_text())
    assert marker["seed"] == 7 and marker["num_train"] == 3 and marker["height"] == 32
    assert marker["difficulty"] == {k: float(v) for k, v in DEFAULT_DIFFICULTY.items()}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = _files(ensure_scenes_dataset(tmp_path / "a", seed=1, **TINY))
    b = _files(ensure_scenes_dataset(tmp_path / "b", seed=1, **TINY))
    assert a == b
    c = _files(ensure_scenes_dataset(tmp_path / "c", seed=2, **TINY))
    assert a.keys() == c.keys()
    assert a["images/train/scene_00000.png"] != c["images/train/scene_00000.png"]


def test_more_images_do_not_change_existing_ones(tmp_path: Path) -> None:
    small = _files(ensure_scenes_dataset(tmp_path / "a", **TINY))
    big = _files(ensure_scenes_dataset(tmp_path / "b", **{**TINY, "num_train": 5}))
    for key, data in small.items():
        if key != "scenes.json":
            assert big[key] == data, key
    assert "images/train/scene_00004.png" in big


def test_marker_makes_second_call_a_noop_and_changes_regenerate(tmp_path: Path) -> None:
    root = tmp_path / "s"
    ensure_scenes_dataset(root, **TINY)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    ensure_scenes_dataset(root, **TINY)
    assert sorted(p for p in root.rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes

    before = (root / "images" / "train" / "scene_00000.png").read_bytes()
    ensure_scenes_dataset(root, **{**TINY, "num_train": 2}, noise_std=20.0)
    assert json.loads((root / "scenes.json").read_text())["difficulty"]["noise_std"] == 20.0
    # Fewer images: the old extra files are gone; changed difficulty: new pixels.
    assert sorted(p.name for p in (root / "images" / "train").iterdir()) == [
        "scene_00000.png",
        "scene_00001.png",
    ]
    assert sorted(p.name for p in (root / "masks" / "train").iterdir()) == [
        "scene_00000.png",
        "scene_00001.png",
    ]
    assert (root / "images" / "train" / "scene_00000.png").read_bytes() != before


def test_missing_marker_regenerates(tmp_path: Path) -> None:
    root = ensure_scenes_dataset(tmp_path / "s", **TINY)
    image = root / "images" / "train" / "scene_00001.png"
    data = image.read_bytes()
    (root / "scenes.json").unlink()
    image.unlink()
    ensure_scenes_dataset(root, **TINY)
    assert image.read_bytes() == data
    assert (root / "scenes.json").is_file()


def test_cli_generates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cli"
    main(["--root", str(root), "--num-train", "2", "--num-val", "1", "--height", "32"])
    main(["--root", str(root), "--num-train", "2", "--num-val", "1", "--height", "32", "--stats"])
    out = capsys.readouterr().out
    assert len(list((root / "images" / "train").iterdir())) == 2
    assert len(list((root / "masks" / "val").iterdir())) == 1
    with Image.open(root / "images" / "train" / "scene_00000.png") as im:
        assert im.size == (256, 32)
    assert "traffic_sign" in out and "ignore" in out
