"""What a Weights & Biases run shows beyond the scalar curves: after each validation, a table of
the per-class IoU, a few validation images with their ground-truth and predicted masks as W&B
mask overlays, and the row-normalised confusion matrix.

``logger=wandb`` adds :class:`WandbMediaCallback` to the callbacks (``conf/logger/wandb.yaml``);
the losses, learning rate, memory fill and validation scores reach W&B through Lightning's
logging, the resolved configuration through ``log_hyperparams`` in :mod:`picoseg.train`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from picoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from picoseg.inference import predict_probabilities
from picoseg.metrics import normalize_confusion
from picoseg.visualize import denormalize, save_confusion_png

#: Name of the mask id that the ignore label becomes in W&B overlays.
IGNORE_NAME = "ignore"


def wandb_mask(labels: np.ndarray, class_names: Sequence[str], ignore_index: int) -> dict[str, Any]:
    """A mask of class ids in the form ``wandb.Image(masks={key: ...})`` takes.

    W&B masks hold ids 0..255 and name them through ``class_labels``. Class ids are kept; the
    ignore label (255, -1, ...) becomes id ``C = len(class_names)``, named ``"ignore"``, so the
    overlay shows ignored pixels as a class of their own. ``class_labels`` always names all
    ``C + 1`` ids, so every mask of a run shares one legend.

    Args:
        labels: (H, W) integer class ids in [0, C) or ``ignore_index``.
        class_names: the C class names.
        ignore_index: the ignore label.

    Returns:
        ``{"mask_data": (H, W) uint8, "class_labels": {id: name}}``.

    Raises:
        ValueError: more than 255 classes (no id left for the ignore label), or an id outside
            [0, C) that is not the ignore label.
    """
    num_classes = len(class_names)
    if num_classes > 255:
        raise ValueError(
            f"W&B masks hold ids 0..255: {num_classes} classes leave no id for the ignore label"
        )
    labels = np.asarray(labels)
    ignored = labels == ignore_index
    valid = labels[~ignored]
    if valid.size and (valid.min() < 0 or valid.max() >= num_classes):
        raise ValueError(
            f"mask ids must be in [0, {num_classes}) or the ignore label {ignore_index}; "
            f"found ids from {valid.min()} to {valid.max()}"
        )
    mask_data = np.where(ignored, num_classes, labels).astype(np.uint8)
    class_labels = {c: str(name) for c, name in enumerate(class_names)}
    class_labels[num_classes] = IGNORE_NAME
    return {"mask_data": mask_data, "class_labels": class_labels}


def confusion_picture(confusion: torch.Tensor, class_names: Sequence[str]) -> np.ndarray:
    """The heat map of :func:`picoseg.visualize.save_confusion_png` as an array.

    Args:
        confusion: (C, C) counts, rows = ground truth, columns = prediction.
        class_names: the C class names.

    Returns:
        (H, W, 3) uint8 RGB picture of the row-normalised matrix.
    """
    normalized = normalize_confusion(confusion).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_confusion_png(Path(tmp) / "confusion_matrix.png", normalized, class_names)
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))


def validation_media(
    scores: Mapping[str, torch.Tensor],
    class_names: Sequence[str],
    ignore_index: int,
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """The W&B objects logged after a validation.

    Args:
        scores: :attr:`SegmentationSystem.last_val_scores`: ``iou`` (C,) with NaN for classes
            neither present nor predicted, and the (C, C) ``confusion`` counts.
        class_names: the C class names.
        ignore_index: the ignore label of the masks.
        samples: ``(image, labels, predictions)`` per image: (H, W, 3) uint8 RGB, (H, W) ids,
            (H, W) ids.

    Returns:
        ``val/iou_table`` (a ``wandb.Table`` with columns ``class``, ``iou``; ``None`` where
        undefined), ``val/predictions`` (one ``wandb.Image`` per sample with ``ground_truth``
        and ``prediction`` masks; absent without samples) and ``val/confusion_matrix``.
    """
    import wandb

    ious = [None if v != v else float(v) for v in scores["iou"].tolist()]
    rows = [[str(name), iou] for name, iou in zip(class_names, ious, strict=True)]
    media: dict[str, Any] = {
        "val/iou_table": wandb.Table(columns=["class", "iou"], data=rows),
        "val/confusion_matrix": wandb.Image(
            confusion_picture(scores["confusion"], class_names),
            caption="rows: ground truth, columns: prediction (row-normalised)",
        ),
    }
    if samples:
        media["val/predictions"] = [
            wandb.Image(
                image,
                caption=f"validation image {i}",
                masks={
                    "ground_truth": wandb_mask(labels, class_names, ignore_index),
                    "prediction": wandb_mask(predictions, class_names, ignore_index),
                },
            )
            for i, (image, labels, predictions) in enumerate(samples)
        ]
    return media


class WandbMediaCallback(L.Callback):
    """Logs :func:`validation_media` to the trainer's ``WandbLogger`` after validation.

    A no-op when no ``WandbLogger`` is attached, during the sanity check and on ranks other than
    0. The first ``num_images`` validation images that rank 0 sees are predicted as the module
    validates (``pl_module.inference`` settings, eval mode, no gradient), so no data is loaded
    twice. The media are logged in ``on_validation_end``, which Lightning calls after the
    module's ``on_validation_epoch_end`` (callbacks' ``on_validation_epoch_end`` run *before*
    the module's, when ``last_val_scores`` still holds the previous validation), at the same
    ``trainer/global_step`` as the validation scores Lightning logs.

    The module must be a :class:`~picoseg.system.SegmentationSystem` (``network``, ``inference``,
    ``class_names``, ``ignore_index``, ``last_val_scores``). Images are de-normalised with the
    datamodule's ``mean`` and ``std`` (ImageNet's when it has none).

    Args:
        num_images: validation images drawn each time (0: only the table and confusion matrix).
        every_n_epochs: during fit, log after the validations of every n-th epoch; validation
            outside fit (``trainer.validate``) always logs.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self._active = False
        self._samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @staticmethod
    def wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
        """The first ``WandbLogger`` of the trainer, ``None`` without one."""
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return False
        if self.wandb_logger(trainer) is None:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples = []
        self._active = self._due(trainer)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        missing = self.num_images - len(self._samples)
        if not self._active or dataloader_idx != 0 or missing <= 0:
            return
        images, labels = batch["image"][:missing], batch["mask"][:missing]
        with torch.no_grad():
            probs = predict_probabilities(pl_module.network, images, **(pl_module.inference or {}))
        if probs.shape[-2:] != labels.shape[-2:]:
            probs = F.interpolate(
                probs, size=labels.shape[-2:], mode="bilinear", align_corners=False
            )
        predictions = probs.argmax(dim=1).cpu().numpy()
        datamodule = trainer.datamodule
        mean = getattr(datamodule, "mean", IMAGENET_MEAN)
        std = getattr(datamodule, "std", IMAGENET_STD)
        for image, label, prediction in zip(
            images.float().cpu().numpy(), labels.cpu().numpy(), predictions, strict=True
        ):
            self._samples.append((denormalize(image, mean, std), label, prediction))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        samples, self._samples = self._samples, []
        media = validation_media(
            pl_module.last_val_scores, pl_module.class_names, pl_module.ignore_index, samples
        )
        # The step Lightning gives loggers: during fit, validation runs before it counts the
        # batch (one less than trainer.global_step), so the media line up with val/miou.
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        self.wandb_logger(trainer).log_metrics(media, step=step)
