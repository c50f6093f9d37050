"""The LightningModule: losses, metrics and optimisation around an injected network."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

from picoseg.inference import predict_probabilities
from picoseg.metrics import confusion_metric, iou_from_confusion
from picoseg.models.output import SegmentationOutput
from picoseg.models.segmentor import Segmentor

if TYPE_CHECKING:
    from picoseg.contrast import MemoryBank, PixelContrastLoss


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of (B, H, W) integer labels to ``size`` (the embedding grid).

    The stride is read from the tensors, never assumed: any ratio works, and the ignore label
    survives unchanged because nearest-neighbour resizing never mixes ids.
    """
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].long()


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Pixel-wise cross-entropy averaged over non-ignored pixels; 0 (not NaN) when every pixel
    is ignored. ``logits`` (B, C, H, W) are upsampled bilinearly to the labels' (B, H, W)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


class SegmentationSystem(L.LightningModule):
    """Trains a :class:`~picoseg.models.Segmentor` with cross-entropy and, optionally, PiCo.

    ``L = L_CE + aux_weight * sum(L_CE(aux)) + w(step) * L_NCE`` where ``w(step)`` is 0 during
    the first ``contrast_warmup_steps`` optimiser steps and ``contrast_weight`` (lambda) after.
    The contrast term is always computed when a contrast loss is given, so every parameter gets
    a gradient on every step (no DDP ``find_unused_parameters`` needed).

    Args:
        network: the inference network; it is all that is exported.
        num_classes: number of classes.
        class_names: one name per class, for logs and tables.
        optimizer: ``optimizer(params) -> Optimizer`` (Hydra ``_partial_``).
        scheduler: ``scheduler(optimizer=..., total_steps=...)``, stepped every optimiser step.
        ignore_index: label excluded from every loss and metric.
        projection: ``projection(in_channels=...) -> nn.Module``, PiCo's training-only head.
        contrast: the pixel contrast loss; ``None`` trains with cross-entropy only.
        memory: the memory bank (pixel queue, region memory), filled by
            :class:`~picoseg.contrast.MemoryBankCallback`; saved in checkpoints.
        contrast_weight: lambda.
        contrast_warmup_steps: optimiser steps with the contrast weighted 0.
        aux_weight: weight of each auxiliary cross-entropy term.
        criterion: ``criterion(output, labels) -> {name: weighted term}`` replacing ``L_CE``
            (e.g. :class:`~picoseg.mask_classification.MaskClassificationLoss` for MaskFormer);
            the terms are summed and each is logged as ``train/<name>``, while ``train/ce`` of
            the logits is still logged (without gradient) to compare runs. ``None``: ``L_CE``.
        backbone_lr_mult: learning-rate factor of the backbone's parameters (one parameter
            group for the backbone, one for the rest; ``train/lr`` logs the rest's).
    """

    def __init__(
        self,
        network: Segmentor,
        num_classes: int,
        class_names: Sequence[str],
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., Any] | None = None,
        ignore_index: int = 255,
        projection: Callable[..., nn.Module] | None = None,
        contrast: PixelContrastLoss | None = None,
        memory: MemoryBank | None = None,
        contrast_weight: float = 0.1,
        contrast_warmup_steps: int = 0,
        aux_weight: float = 0.4,
        criterion: Callable[[SegmentationOutput, torch.Tensor], dict[str, torch.Tensor]]
        | None = None,
        backbone_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes is {num_classes}"
            )
        if contrast is not None and projection is None:
            raise ValueError("a contrast loss needs a projection head (model.projection)")
        self.network = network
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.projection = (
            projection(in_channels=network.feature_channels)
            if projection is not None and contrast is not None
            else None
        )
        self.contrast = contrast
        self.memory = memory
        if memory is not None:
            # Every rank pushes the same gathered keys, so the memory is identical everywhere;
            # DDP need not broadcast its buffers from rank 0 on every step.
            self._ddp_params_and_buffers_to_ignore = memory.ddp_ignore_names("memory")
        self.contrast_weight = contrast_weight
        self.contrast_warmup_steps = contrast_warmup_steps
        self.aux_weight = aux_weight
        self.criterion = criterion
        self.backbone_lr_mult = backbone_lr_mult
        self.val_confusion = confusion_metric(num_classes, ignore_index)
        #: The resolved run configuration; train.py sets it so checkpoints can rebuild the model.
        self.run_config: dict | None = None
        #: Keyword arguments of :func:`~picoseg.inference.predict_probabilities` for validation
        #: (evaluate.py sets them); ``None`` predicts the whole image at a single scale.
        self.inference: dict | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the network's stride (what inference uses)."""
        return self.network(images).logits

    def current_contrast_weight(self) -> float:
        return 0.0 if self.global_step < self.contrast_warmup_steps else self.contrast_weight

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        images, labels = batch["image"], batch["mask"]
        log = functools.partial(self.log, batch_size=images.shape[0])
        out = self.network(images)
        if self.criterion is None:
            ce = masked_cross_entropy(out.logits, labels, self.ignore_index)
            loss = ce
        else:
            terms = self.criterion(out, labels)
            loss = sum(terms.values())
            for name, term in terms.items():
                log(f"train/{name}", term.detach())
            with torch.no_grad():
                ce = masked_cross_entropy(out.logits, labels, self.ignore_index)
        for name, aux in out.aux_logits.items():
            aux_ce = masked_cross_entropy(aux, labels, self.ignore_index)
            loss = loss + self.aux_weight * aux_ce
            log(f"train/aux_{name}", aux_ce)
        log("train/ce", ce, prog_bar=True)
        result: dict[str, Any] = {}
        if self.contrast is not None:
            projections = self.projection(out.features)
            size = projections.shape[-2:]
            embedding_labels = resize_labels(labels, size)
            predictions = out.logits.detach()
            if predictions.shape[-2:] != size:
                predictions = F.interpolate(predictions, size=size, mode="bilinear")
            contrast = self.contrast(
                projections, embedding_labels, predictions.argmax(dim=1), self.memory
            )
            weight = self.current_contrast_weight()
            loss = loss + weight * contrast.loss
            log("train/nce", contrast.loss.detach(), prog_bar=True)
            log("train/nce_pixel", contrast.pixel_loss)
            log("train/nce_region", contrast.region_loss)
            log("train/nce_weight", weight)
            log("train/num_anchors", contrast.num_anchors.float())
            if self.memory is not None:
                log("train/memory_fill", self.memory.fill_fraction().mean())
            result = {"projections": projections.detach(), "embedding_labels": embedding_labels}
        log("train/loss", loss)
        log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"])
        return {"loss": loss, **result}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, labels = batch["image"], batch["mask"]
        if self.inference is not None:
            # Test-time inference (sliding window, scales, flips): no single set of logits, so
            # no val/ce; the confusion matrix is updated from the averaged probabilities.
            probs = predict_probabilities(self.network, images, **self.inference)
            if probs.shape[-2:] != labels.shape[-2:]:
                probs = F.interpolate(
                    probs, size=labels.shape[-2:], mode="bilinear", align_corners=False
                )
            self.val_confusion.update(probs.argmax(dim=1), labels)
            return
        logits = self.network(images).logits
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        self.log(
            "val/ce",
            masked_cross_entropy(logits, labels, self.ignore_index),
            batch_size=images.shape[0],
        )
        self.val_confusion.update(logits.argmax(dim=1), labels)

    def on_validation_epoch_end(self) -> None:
        confusion = self.val_confusion.compute()
        scores = iou_from_confusion(confusion)
        self.val_confusion.reset()
        self.log("val/miou", scores["miou"], prog_bar=True)
        self.log("val/accuracy", scores["accuracy"])
        self.log("val/mean_accuracy", scores["mean_accuracy"])
        for name, iou in zip(self.class_names, scores["iou"], strict=True):
            if not torch.isnan(iou):
                self.log(f"val/iou/{name}", iou)
        #: The last validation scores, with the (C, C) ``confusion`` matrix (rows: ground truth).
        self.last_val_scores = {k: v.cpu() for k, v in {**scores, "confusion": confusion}.items()}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.backbone_lr_mult == 1.0:
            optimizer = self.optimizer_factory(params)
        else:
            backbone = {id(p) for p in self.network.backbone.parameters()}
            optimizer = self.optimizer_factory(
                [
                    {"params": [p for p in params if id(p) in backbone], "name": "backbone"},
                    {"params": [p for p in params if id(p) not in backbone], "name": "rest"},
                ]
            )
            # Scaled before the scheduler records each group's base rate.
            optimizer.param_groups[0]["lr"] *= self.backbone_lr_mult
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["picoseg_config"] = self.run_config
