"""picoseg's CSV logger keeps the rows a run logged before it was stopped and resumed in place."""

from __future__ import annotations

import csv

from picoseg.csv_logger import CSVLogger


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_resumed_process_keeps_the_rows_before_its_first_step(tmp_path):
    first = CSVLogger(tmp_path, name="csv", version="")
    for step in range(5):
        first.log_metrics({"train/loss": 10.0 + step}, step=step)
    first.log_metrics({"val/miou": 0.5}, step=4)
    first.save()
    path = tmp_path / "csv" / "metrics.csv"
    assert len(_rows(path)) == 6

    # The process died after step 4; the checkpoint was at step 3, so steps 3-4 are replayed.
    resumed = CSVLogger(tmp_path, name="csv", version="")
    for step in (3, 4, 5):
        resumed.log_metrics({"train/loss": 20.0 + step, "train/nce": 1.0}, step=step)
    resumed.save()
    rows = _rows(path)
    assert [(int(r["step"]), float(r["train/loss"])) for r in rows] == [
        (0, 10.0),
        (1, 11.0),
        (2, 12.0),
        (3, 23.0),
        (4, 24.0),
        (5, 25.0),
    ]
    assert [r["train/nce"] for r in rows] == ["", "", "", "1.0", "1.0", "1.0"]
    assert "val/miou" not in rows[0] or all(not r["val/miou"] for r in rows)


def test_a_new_run_in_an_empty_folder_logs_as_lightnings(tmp_path):
    logger = CSVLogger(tmp_path, name="csv", version="")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    assert _rows(tmp_path / "csv" / "metrics.csv") == [{"a": "1.0", "step": "0"}]


def test_the_earlier_rows_are_on_disk_from_the_moment_a_resumed_process_opens_the_log(tmp_path):
    first = CSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.save()
    path = tmp_path / "csv" / "metrics.csv"
    resumed = CSVLogger(tmp_path, name="csv", version="")
    resumed.experiment  # noqa: B018 -- Lightning's writer deletes metrics.csv when it is made
    # A process killed now, before its first flush, leaves the earlier rows in place.
    assert [(r["step"], r["train/loss"]) for r in _rows(path)] == [("0", "1.0")]
    assert not list(path.parent.glob("*.tmp*"))  # written through a temporary file, renamed
