"""The contrast diagnostics script: key ages, mixed-cell flags of pushed keys, and a real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from picoseg.contrast import MemoryBank, MemoryCandidates
from picoseg.contrast.grid_labels import mixed_cells

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_key_age_counts_entries_written_after_each_key(load_script):
    diagnose = load_script("diagnose_contrast")
    memory = MemoryBank(1, 2, pixel_size=4, region_size=2, pixels_per_image=3, ignore_index=255)
    for _ in range(2):  # pixel entries e0..e5 into 4 slots, regions r0..r2 into 2 slots
        memory.push(
            MemoryCandidates(
                torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, dtype=bool),
                torch.ones(1, 1, 2), torch.tensor([[True]]),
            )
        )  # fmt: skip
    memory.push(
        MemoryCandidates(
            torch.ones(1, 1, 3, 2), torch.zeros(1, 1, 3, dtype=bool),
            torch.ones(1, 1, 2), torch.tensor([[True]]),
        )
    )  # fmt: skip
    # Pixel slots hold e4, e5, e2, e3 (pointer 2): ages 1, 0, 3, 2 entries.
    assert diagnose.key_age_entries(memory, torch.arange(4)).tolist() == [1, 0, 3, 2]
    # Region slots hold r2, r1 (pointer 1): ages 0, 1.
    assert diagnose.key_age_entries(memory, torch.tensor([4, 5])).tolist() == [0, 1]


def test_pushed_key_flags_are_the_mixedness_of_their_pixels(load_script):
    diagnose = load_script("diagnose_contrast")
    torch.manual_seed(0)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, :, 6:] = 1
    labels[0, 10:, :] = 2
    labels[1, :3, :3] = 255
    size = (4, 4)
    # Every grid cell gets its own random embedding, so a stored key names its cell.
    projections = torch.randn(2, 8, *size)
    grid = {
        "projections": projections,
        "labels": F.interpolate(labels[:, None].float(), size=size)[:, 0].long(),
        "mixed": mixed_cells(labels, size),
    }
    memory = MemoryBank(3, 8, 50, 10, pixels_per_image=3, ignore_index=255)
    meta = MemoryBank(3, 1, 50, 10, pixels_per_image=3, ignore_index=255)
    keys, flags = diagnose.candidates_with_meta(
        None, memory, grid, torch.Generator().manual_seed(0)
    )
    memory.push(keys)
    meta.push(flags)
    stored, stored_labels = memory.pixel_keys()
    stored_flags, _ = meta.pixel_keys()
    cells = F.normalize(projections.permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
    cell_mixed = grid["mixed"].reshape(-1)
    cell_labels = grid["labels"].reshape(-1)
    assert len(stored) > 6 and cell_mixed.any() and not cell_mixed.all()
    for key, label, flag in zip(stored, stored_labels, stored_flags, strict=True):
        cell = int((cells @ key).argmax())
        assert int(cell_labels[cell]) == int(label)
        assert float(flag) == float(cell_mixed[cell])
    # A region's value is the share of its cells that are mixed.
    regions, region_labels = meta.region_keys()
    first = (grid["labels"][0] == 1) & (grid["labels"][0] != 255)
    expected = (grid["mixed"][0] & first).sum() / first.sum()
    assert float(regions[region_labels == 1][0]) == pytest.approx(float(expected))


@pytest.mark.slow
def test_diagnostics_of_a_run_with_pure_grid_labels(tmp_path, run_module):
    # With label_resize=pure, mixed cells are ignored: no anchor, key or hard negative sits on
    # one, whatever the sampling. Shares, ages and cosines come out in their ranges.
    run_dir = tmp_path / "run"
    overrides = ["debug=fast", "model.label_resize=pure", f"paths.data_dir={tmp_path / 'data'}"]
    run_module("picoseg.train", [*overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    output = tmp_path / "diagnostics.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "diagnose_contrast.py"),
         str(run_dir / "checkpoints" / "last.ckpt"), "--batches", "4", "--output", str(output)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["label_resize"] == "pure"
    shares = report["mixed_share"]
    for key in ("grid_cells (base rate)", "anchors", "positives", "negatives", "hard"):
        assert shares[key] == 0.0, key
    assert 0.0 < shares["synthetic_share"] < 1.0
    for values in report["gradients"].values():
        assert -1.0 <= values["cosine"] <= 1.0 and values["norm_ratio"] > 0
    assert all(-1.0 <= v <= 1.0 for v in report["cosine_by_age"].values())
    assert "| anchors | 0.000 |" in proc.stdout
