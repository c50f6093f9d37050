"""Lightning's CSV logger, made to keep the history of a run resumed in its own directory.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a new process starts logging
into the same folder, and appends to it or rewrites it in place. A run that resumes in place
(after preemption, a kill, or ``hydra.run.dir=<the run> ckpt_path=last``) would then lose every
row logged before the stop, and a kill during a write could cut the file. :class:`CSVLogger`
reads the earlier rows first, keeps those from before the first step the resumed process logs
(later ones are being replayed, and are logged again), and writes the whole file atomically
(temporary file, rename) at every flush.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.utilities import rank_zero_only

from picoseg.checkpoint import atomic_file

__all__ = ["CSVLogger"]


def _read_rows(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as file:
        return [
            {k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(file)
        ]


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` survives a resume in place
    and a kill at any moment. Takes the same arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows: list[dict[str, Any]] | None = None  # every row on disk, after the first log
        self._earlier: list[dict[str, Any]] = []  # rows of an earlier process, until then

    @property
    def _metrics_path(self) -> str:
        return os.path.join(self.log_dir, "metrics.csv")

    @property
    def experiment(self) -> Any:
        if self._experiment is None:
            self._earlier = _read_rows(self._metrics_path)
            writer = super().experiment  # Lightning's writer deletes metrics.csv here
            if self._earlier:
                self._write(self._earlier)  # back at once: a kill now loses nothing
            return writer
        return super().experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.experiment  # noqa: B018 -- reads the earlier rows before the first row is logged
        if self._rows is None:
            first = int(step) if step is not None else 0
            self._rows = [r for r in self._earlier if "step" in r and int(r["step"]) < first]
            self._earlier = []
        super().log_metrics(metrics, step)

    @rank_zero_only
    def save(self) -> None:
        writer = self.experiment
        if writer.metrics:
            if self._rows is None:
                self._rows = list(self._earlier)
            self._rows.extend(writer.metrics)
            writer.metrics = []
            self._write(self._rows)
        super().save()  # hparams.yaml; Lightning's writer has no metrics left to write

    def _write(self, rows: list[dict[str, Any]]) -> None:
        keys = sorted({key for row in rows for key in row})
        os.makedirs(self.log_dir, exist_ok=True)
        with atomic_file(self._metrics_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
