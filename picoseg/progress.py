"""Training progress as plain log lines, for logs that are not a terminal.

Lightning's live progress bar redraws one line in a terminal; written to a file (``make train >
log``, CI, a SLURM job's output) it leaves next to nothing until training ends. :class:`LogProgress`
logs, through Python's ``logging`` (the console and the run's ``train.log``), one line every
``every_n_steps`` optimiser steps, one at the end of every training epoch and one per validation::

    epoch 3/10 step 150/500 (30%) | loss 1.204 ce 0.391 nce 8.13 | lr 5.2e-04 | 4.1 it/s | ETA 1:25
    epoch 3/10 validation | val/miou 0.7123 (best 0.7201)

and, for ``trainer.validate`` (e.g. of the best checkpoint after training), ``validate | val/miou
0.7201``.

``when=auto`` (the default) logs only when standard output is not a terminal, where the bar
already shows the same; ``always`` and ``never`` force it.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["LogProgress", "format_duration"]

log = logging.getLogger(__name__)

#: ``when`` values: log when stdout is not a terminal, always, never.
WHEN = ("auto", "always", "never")
#: Logged scalars shown on a step line, as (key, label).
STEP_KEYS = (("train/loss", "loss"), ("train/ce", "ce"), ("train/nce", "nce"))


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``M:SS`` under an hour); ``?`` when not finite."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class LogProgress(L.Callback):
    """Progress lines: step/total, epoch, losses, learning rate(s), speed and time left.

    Args:
        every_n_steps: a line every this many optimiser steps (0: only at epoch ends).
        when: ``auto`` (only when stdout is not a terminal), ``always`` or ``never``.
    """

    def __init__(self, every_n_steps: int = 50, when: str = "auto") -> None:
        if when not in WHEN:
            raise ValueError(f"progress when={when!r}: expected one of {WHEN}")
        if every_n_steps < 0:
            raise ValueError(f"progress every_n_steps={every_n_steps}: expected >= 0")
        self.every_n_steps = int(every_n_steps)
        self.when = when
        self._start_time = 0.0
        self._start_step = 0
        self._last_logged_step = -1
        self._best: float | None = None
        self._total: int | None = None

    @property
    def active(self) -> bool:
        if self.when == "auto":
            return not sys.stdout.isatty()
        return self.when == "always"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_time = time.monotonic()
        self._start_step = trainer.global_step
        self._last_logged_step = -1
        total = trainer.estimated_stepping_batches
        self._total = int(total) if math.isfinite(total) else None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self._log_step(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_step(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.active or not trainer.is_global_zero:
            return
        miou = trainer.callback_metrics.get("val/miou")
        if miou is None:
            return
        value = float(miou)
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate, e.g. the best checkpoint
            log.info("validate | val/miou %.4f", value)
            return
        self._best = value if self._best is None else max(self._best, value)
        log.info(
            "%s validation | val/miou %.4f (best %.4f)", self._epoch(trainer), value, self._best
        )

    def _epoch(self, trainer: L.Trainer) -> str:
        total = trainer.max_epochs
        shown = f"/{total}" if total is not None and total > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{shown}"

    def _log_step(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        if step == self._last_logged_step or not self.active or not trainer.is_global_zero:
            return
        self._last_logged_step = step
        total = self._total
        done = step - self._start_step
        elapsed = time.monotonic() - self._start_time
        rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
        parts = [self._epoch(trainer)]
        if total:
            parts[0] += f" step {step}/{total} ({100 * step / total:.0f}%)"
        else:
            parts[0] += f" step {step}"
        metrics = trainer.callback_metrics
        scalars = [
            f"{label} {float(metrics[key]):.4g}" for key, label in STEP_KEYS if key in metrics
        ]
        if scalars:
            parts.append(" ".join(scalars))
        rates = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
        rates = list(dict.fromkeys(rates))  # groups that differ in weight decay only: once
        if rates:
            parts.append("lr " + "/".join(f"{lr:.2e}" for lr in rates))
        if math.isfinite(rate):
            parts.append(f"{rate:.2f} it/s")
            if total:
                parts.append(f"ETA {format_duration((total - step) / rate)}")
        log.info(" | ".join(parts))
