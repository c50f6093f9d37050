"""Plain progress lines for logs that are not a terminal."""

from __future__ import annotations

import logging
import math
import re
import sys

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from picoseg.progress import LogProgress, format_duration

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")


def test_format_duration_by_hand():
    assert format_duration(0) == "0:00"
    assert format_duration(59.6) == "1:00"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(math.nan) == "?" and format_duration(-1) == "?"


class _Tiny(L.LightningModule):
    """A linear model that logs train/loss and a constant val/miou of 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/miou", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback: LogProgress) -> None:
    data = DataLoader(torch.randn(8, 2), batch_size=2)  # 4 steps an epoch
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(_Tiny(), train_dataloaders=data, val_dataloaders=data)
    trainer.validate(trainer.lightning_module, dataloaders=data, verbose=False)


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "picoseg.progress"]


def test_lines_every_n_steps_at_epoch_ends_and_per_validation(caplog):
    with caplog.at_level(logging.INFO, logger="picoseg.progress"):
        _fit(LogProgress(every_n_steps=3, when="always"))
    lines = _lines(caplog)
    steps = [int(m.group(1)) for line in lines if (m := re.search(r"step (\d+)/8 ", line))]
    assert steps == [3, 4, 6, 8]  # every 3 steps, and the end of each 4-step epoch
    first = next(line for line in lines if "step 3/8" in line)
    assert first.startswith("epoch 1/2 step 3/8 (38%) | loss ")
    assert "lr 1.00e-01" in first and "it/s" in first and "ETA " in first
    assert "ETA 0:00" in next(line for line in lines if "step 8/8" in line)  # nothing left
    validations = [line for line in lines if "validation" in line]
    assert validations == [
        "epoch 1/2 validation | val/miou 0.5000 (best 0.5000)",
        "epoch 2/2 validation | val/miou 0.5000 (best 0.5000)",
    ]
    assert lines[-1] == "validate | val/miou 0.5000"  # trainer.validate after fitting


def test_auto_is_silent_in_a_terminal_and_never_is_silent(caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="picoseg.progress"):
        _fit(LogProgress(every_n_steps=1, when="never"))
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        _fit(LogProgress(every_n_steps=1, when="auto"))
    assert _lines(caplog) == []
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert LogProgress(when="auto").active


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="when="):
        LogProgress(when="sometimes")
    with pytest.raises(ValueError, match="every_n_steps"):
        LogProgress(every_n_steps=-1)
