"""A callback for test_ddp_training.py (beside it): every rank records what it trained on and holds.

The test runs ``python -m picoseg.train`` with this module on ``PYTHONPATH`` and adds the callback
with ``+callbacks.dump._target_=ddp_dump.DumpRankState +callbacks.dump.path=<dir>``. Each rank
writes to ``<dir>``:

- ``rank<r>_train.pt`` at the end of training: the LightningModule's ``state_dict`` (network,
  projection and memory bank), the names of its parameters, the per-parameter sums before the
  first step, and for every training batch this rank saw: the image names and, per image, the
  pixel count of each class in the labels at the embedding resolution (what the memory keys
  are selected from).
- ``rank<r>_val.json`` after every validation run (the last one is the final ``validate``):
  the mIoU and confusion matrix the module computed, and the images and labelled pixels this
  rank validated itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch


class DumpRankState(L.Callback):
    """Writes each rank's training state and validation scores under ``path``.

    Args:
        path: output folder, shared by all ranks (files are named by global rank).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.batch_names: list[list[str]] = []
        self.batch_class_pixels: list[list[dict[int, int]]] = []
        self.initial_sums: dict[str, float] = {}
        self.val_images = 0
        self.val_pixels = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.initial_sums = {
            name: float(p.detach().double().sum()) for name, p in pl_module.named_parameters()
        }

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch_names.append(list(batch["name"]))

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        per_image = []
        # A skipped (non-finite) step returns no embeddings and pushes nothing.
        for labels in outputs.get("embedding_labels", []):
            classes, counts = labels[labels != pl_module.ignore_index].unique(return_counts=True)
            per_image.append(dict(zip(classes.tolist(), counts.tolist(), strict=True)))
        self.batch_class_pixels.append(per_image)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        record = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "state": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "parameters": [name for name, _ in pl_module.named_parameters()],
            "initial_sums": self.initial_sums,
            "batch_names": self.batch_names,
            "batch_class_pixels": self.batch_class_pixels,
        }
        torch.save(record, self.path / f"rank{trainer.global_rank}_train.pt")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_images = 0
        self.val_pixels = 0

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        mask = batch["mask"]
        self.val_images += int(mask.shape[0])
        self.val_pixels += int((mask != pl_module.ignore_index).sum())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scores = getattr(pl_module, "last_val_scores", None)
        if trainer.sanity_checking or scores is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        record = {
            "miou": float(scores["miou"]),
            "confusion": scores["confusion"].tolist(),
            "local_images": self.val_images,
            "local_pixels": self.val_pixels,
        }
        (self.path / f"rank{trainer.global_rank}_val.json").write_text(json.dumps(record))
