"""scripts/summarize_sweep.py on a multirun directory laid out as Hydra writes it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest


def _job(root: Path, n: int, overrides: list[str], miou: float | None) -> None:
    job = root / str(n)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if miou is not None:
        metrics = {"miou": miou, "accuracy": 0.9, "mean_accuracy": 0.7,
                   "iou": {"road": miou + 0.1, "pole": None}}  # fmt: skip
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_table_has_one_row_per_job_sorted_by_miou(tmp_path, load_script):
    summarize = load_script("summarize_sweep").summarize
    _job(tmp_path, 0, ["sampler=random", "synthesis=none"], 0.41)
    _job(tmp_path, 1, ["sampler=hardest", "synthesis=none"], 0.52)
    _job(tmp_path, 2, ["sampler=random", "synthesis=both"], None)  # crashed job
    _job(tmp_path, 10, ["sampler=hardest", "synthesis=both"], 0.47)
    rows = summarize(tmp_path, per_class=True)
    assert [r["job"] for r in rows] == ["1", "10", "0", "2"]
    assert rows[0]["sampler"] == "hardest" and rows[0]["synthesis"] == "none"
    assert rows[0]["miou"] == "0.5200" and rows[0]["iou/road"] == "0.6200"
    assert rows[0]["iou/pole"] == ""
    assert rows[-1]["status"] == "no metrics.json" and rows[-1]["miou"] == ""
    with open(tmp_path / "summary.csv") as f:
        assert [r["job"] for r in csv.DictReader(f)] == ["1", "10", "0", "2"]
    markdown = (tmp_path / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| job | sampler | synthesis | miou")
    assert len(markdown) == 2 + 4


def test_not_a_multirun_directory_is_an_error(tmp_path, load_script):
    summarize = load_script("summarize_sweep").summarize
    with pytest.raises(FileNotFoundError, match="no job directories"):
        summarize(tmp_path)
    (tmp_path / "0").mkdir()
    with pytest.raises(FileNotFoundError, match="overrides.yaml"):
        summarize(tmp_path)
