"""Lightning's CSV logger, made to keep the history of a run resumed in its own directory.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a new process starts logging
into the same folder. A run that resumes in place (after preemption, a kill, or
``hydra.run.dir=<the run> ckpt_path=last``) would then lose every row logged before the stop.
:class:`CSVLogger` reads those rows first and writes back the ones from before the first step
the resumed process logs (later ones are being replayed, and are logged again).
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["CSVLogger"]


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` survives a resume in place.

    Takes the same arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._earlier: list[dict[str, str]] | None = None

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self._earlier is None:
            path = os.path.join(self.log_dir, "metrics.csv")
            self._earlier = []
            if os.path.isfile(path):
                with open(path, newline="") as file:
                    self._earlier = [
                        {k: v for k, v in row.items() if v not in ("", None)}
                        for row in csv.DictReader(file)
                    ]
        return super().experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        writer = self.experiment  # reads the earlier rows before Lightning deletes the file
        if self._earlier:
            first = int(step) if step is not None else 0
            kept = [row for row in self._earlier if "step" in row and int(row["step"]) < first]
            writer.metrics[:0] = kept
            self._earlier = []
        super().log_metrics(metrics, step)
