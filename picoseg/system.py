"""The LightningModule: losses, metrics and optimisation around an injected network."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.optim import Optimizer

from picoseg.contrast.grid_labels import LABEL_RESIZE_MODES, resize_labels
from picoseg.contrast.memory import MemoryBankCallback
from picoseg.inference import predict_labels
from picoseg.metrics import confusion_metric, iou_from_confusion
from picoseg.models.output import SegmentationOutput
from picoseg.models.segmentor import Segmentor
from picoseg.optim import parameter_groups
from picoseg.random_state import RandomStateCallback
from picoseg.wandb_run import WandbRunId

if TYPE_CHECKING:
    from picoseg.contrast import ContrastOutput, MemoryBank, PixelContrastLoss

_log = logging.getLogger(__name__)


def _contrast_channels(network: nn.Module) -> int:
    """Channels of what the projection head reads: ``network.contrast_channels`` where the
    network defines it (picoseg's :class:`~picoseg.models.segmentor.Segmentor`), else its
    ``feature_channels``, the contract networks had before the contrast input became selectable
    (their outputs leave ``contrast_features`` unset, so the projection reads ``features``).
    """
    channels = getattr(network, "contrast_channels", None)
    return network.feature_channels if channels is None else channels


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
            :class:`~picoseg.contrast.MemoryBankCallback`, which the module attaches itself
            (:meth:`configure_callbacks`); saved in checkpoints.
        contrast_weight: lambda.
        contrast_warmup_steps: optimiser steps with the contrast weighted 0.
        aux_weight: weight of each auxiliary cross-entropy term.
        label_resize: how the labels reach the embedding grid for the contrast and the memory
            (:mod:`picoseg.contrast.grid_labels`): ``nearest`` (a cell's top-left pixel),
            ``center`` (its centre pixel) or ``pure`` (cells that mix labels are ignored).
            Cross-entropy and metrics never use it (they read upsampled logits).
        criterion: ``criterion(output, labels) -> {name: weighted term}`` replacing ``L_CE``
            (e.g. :class:`~picoseg.mask_classification.MaskClassificationLoss` for MaskFormer);
            the terms are summed and each is logged as ``train/<name>``, while ``train/ce`` of
            the logits is still logged (without gradient) to compare runs. ``None``: ``L_CE``.
        backbone_lr_mult: learning-rate factor of the backbone's parameters (their own
            parameter groups; ``train/lr`` logs the rest's rate, ``train/lr/<group>`` each).
        decay_norm_and_bias: weight-decay every parameter. ``False`` (default): biases,
            normalisation parameters and embeddings take none
            (:func:`picoseg.optim.parameter_groups`).
        compile: ``torch.compile`` the network's backbone and head (in place, with
            ``nn.Module.compile``: parameter names and checkpoints are unchanged) when fitting
            starts. The projection head, the loss, the sampler and the memory stay eager; the
            evaluation and export entry points never compile.
        compile_mode: ``torch.compile``'s ``mode`` (``None``: its default).
        compile_backend: ``torch.compile``'s ``backend`` (``"eager"`` only traces, for tests).
        run_config: the resolved run configuration (a plain dict), written into every checkpoint
            as ``picoseg_config`` so that :func:`picoseg.checkpoint.load_run` can rebuild the run.
        inference: how validation predicts, keyword arguments of
            :func:`~picoseg.inference.predict_probabilities` (sliding window, scales, flip);
            ``None``: the plain forward. ``picoseg.evaluate`` sets the attribute on a loaded run.

    Mixed precision (``trainer.precision=bf16-mixed`` or ``16-mixed``) runs the network under
    autocast; the cross-entropy reads float32 logits, and the projection head and the contrast
    run in float32 outside autocast.

    A step whose total loss is not finite (NaN or inf) is skipped: its gradients are dropped
    before the optimiser step, so the weights and the optimiser state are unchanged (the step
    still counts for ``global_step`` and the schedule), its keys are not pushed into the memory,
    a warning names the step, and ``skipped_steps`` (logged as ``train/skipped_steps``, saved in
    checkpoints) counts it. The check reads one scalar on the host per step.

    Checkpoints also hold the random states (global torch/CUDA/NumPy/Python generators and the
    sampler's and synthesis's own generators); resuming a fit restores them, so a run resumed
    at an epoch boundary draws what the uninterrupted run would have drawn.
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
        label_resize: str = "nearest",
        criterion: Callable[[SegmentationOutput, torch.Tensor], dict[str, torch.Tensor]]
        | None = None,
        backbone_lr_mult: float = 1.0,
        decay_norm_and_bias: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_backend: str | Callable[..., Any] = "inductor",
        run_config: dict | None = None,
        inference: dict | None = None,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes is {num_classes}"
            )
        if contrast is not None and projection is None:
            raise ValueError("a contrast loss needs a projection head (model.projection)")
        if label_resize not in LABEL_RESIZE_MODES:
            raise ValueError(f"label_resize={label_resize!r}: expected one of {LABEL_RESIZE_MODES}")
        self.network = network
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.projection = (
            projection(in_channels=_contrast_channels(network))
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
        self.label_resize = label_resize
        self.criterion = criterion
        self.backbone_lr_mult = backbone_lr_mult
        self.decay_norm_and_bias = decay_norm_and_bias
        #: ``torch.compile`` keyword arguments for the backbone and head; ``None``: eager.
        self.compile_options: dict[str, Any] | None = (
            {"mode": compile_mode, "backend": compile_backend} if compile else None
        )
        #: Training steps skipped because their loss was not finite (saved in checkpoints).
        self.skipped_steps = 0
        self._drop_gradients = False
        self.val_confusion = confusion_metric(num_classes, ignore_index)
        #: The resolved run configuration, saved in checkpoints so they can rebuild the model.
        self.run_config = run_config
        #: Keyword arguments of :func:`~picoseg.inference.predict_probabilities` for validation;
        #: ``None`` predicts the whole image at a single scale (the plain forward).
        self.inference = inference

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the network's stride (what inference uses)."""
        return self.network(images).logits

    def current_contrast_weight(self) -> float:
        return 0.0 if self.global_step < self.contrast_warmup_steps else self.contrast_weight

    def contrast_term(
        self, out: SegmentationOutput, labels: torch.Tensor
    ) -> tuple[ContrastOutput, torch.Tensor, torch.Tensor]:
        """The contrast loss of a network output, computed in float32 outside autocast.

        Args:
            out: the network's output (its features may be bfloat16/float16 under autocast); the
                projection head reads ``out.projection_input``.
            labels: (B, H, W) int64 ground truth.

        Returns:
            The :class:`~picoseg.contrast.ContrastOutput`, the float32 projections
            (B, D, h, w) and the labels on their grid (B, h, w), resized as ``label_resize``
            says.
        """
        assert self.contrast is not None and self.projection is not None
        with torch.autocast(device_type=labels.device.type, enabled=False):
            projections = self.projection(out.projection_input.float())
            size = projections.shape[-2:]
            embedding_labels = resize_labels(labels, size, self.label_resize, self.ignore_index)
            predictions = out.logits.detach()
            if predictions.shape[-2:] != size:
                predictions = F.interpolate(predictions, size=size, mode="bilinear")
            contrast = self.contrast(
                projections, embedding_labels, predictions.argmax(dim=1), self.memory
            )
        return contrast, projections, embedding_labels

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
            contrast, projections, embedding_labels = self.contrast_term(out, labels)
            weight = self.current_contrast_weight()
            loss = loss + weight * contrast.loss
            log("train/nce", contrast.loss.detach(), prog_bar=True)
            log("train/nce_pixel", contrast.pixel_loss)
            log("train/nce_region", contrast.region_loss)
            log("train/nce_weight", weight)
            log("train/num_anchors", contrast.num_anchors.float())
            if self.memory is not None:
                log("train/memory_fill", self.memory.fill_fraction().mean())
            result = {
                "projections": projections.detach(),
                "embedding_labels": embedding_labels,
                "regions": getattr(contrast, "regions", None),  # a custom loss may have none
            }
        log("train/loss", loss)
        groups = self.trainer.optimizers[0].param_groups
        log("train/lr", groups[-1]["lr"])
        if len({group["lr"] for group in groups}) > 1:  # e.g. a slower backbone: each rate
            rates = {}  # a group and its no-decay twin share their rate: one entry for both
            for index, group in enumerate(groups):
                name = str(group.get("name", f"group{index}")).removesuffix("_no_decay")
                rates.setdefault(name, group["lr"])
            for name, rate in rates.items():
                log(f"train/lr/{name}", rate)
        finite = self._loss_is_finite_everywhere(loss)
        if not finite:
            self.skipped_steps += 1
            self._drop_gradients = True
            _log.warning(
                "training step %d (epoch %d, batch %d): the loss is not finite (%s); the "
                "optimiser step is skipped (%d skipped so far)",
                self.global_step,
                self.current_epoch,
                batch_idx,
                float(loss.detach()),
                self.skipped_steps,
            )
        log("train/skipped_steps", float(self.skipped_steps))
        if not finite:
            # A stand-in with zero gradients for every parameter: every rank still runs the same
            # backward (DDP's gradient reduction stays in step), and on_before_optimizer_step
            # drops the gradients. No projections: nothing is pushed into the memory.
            params = [p for p in self.parameters() if p.requires_grad]
            return {"loss": sum(p.sum() for p in params) * 0.0}
        return {"loss": loss, **result}

    def _loss_is_finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (one host read; a collective under DDP)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return not bool(bad > 0)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if self._drop_gradients:
            # Optimisers skip parameters without a gradient: no update, no state change.
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            self._drop_gradients = False

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, labels = batch["image"], batch["mask"]
        if self.inference is not None:
            # Test-time inference (sliding window, scales, flips): no single set of logits, so
            # no val/ce; the confusion matrix is updated from the averaged probabilities.
            predicted = predict_labels(
                self.network, images, size=labels.shape[-2:], **self.inference
            )
            self.val_confusion.update(predicted, labels)
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

    def configure_callbacks(self) -> list[L.Callback]:
        """The callbacks the module's training cannot do without, attached by the module itself
        so that no trainer configuration (e.g. a replaced ``callbacks`` group) leaves them out:
        the random states in checkpoints (:mod:`picoseg.random_state`), the W&B run id
        (:mod:`picoseg.wandb_run`) and, with a memory, the memory-bank push. Lightning puts them
        in place of any of the same type the trainer was given, so none runs twice. Those the
        trainer already holds (attached by an earlier ``fit`` of the same trainer, before its
        ``validate``) are kept and not returned again, which Lightning would report as an
        override."""
        callbacks: list[L.Callback] = [RandomStateCallback(), WandbRunId()]
        if self.memory is not None:
            callbacks.append(MemoryBankCallback())
        attached = {type(c) for c in self._trainer.callbacks} if self._trainer is not None else ()
        return [c for c in callbacks if type(c) not in attached]

    def configure_optimizers(self) -> Any:
        backbone = getattr(self.network, "backbone", None)
        if backbone is None and self.backbone_lr_mult != 1.0:
            raise ValueError(
                f"backbone_lr_mult={self.backbone_lr_mult}: the network "
                f"({type(self.network).__name__}) has no `backbone` attribute to slow down"
            )
        groups = parameter_groups(self, backbone, self.backbone_lr_mult, self.decay_norm_and_bias)
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:  # before the scheduler records the base rates
            group["lr"] *= group["lr_mult"]
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def setup(self, stage: str) -> None:
        if stage == TrainerFn.FITTING and self.compile_options is not None:
            self.compile_network()

    def compile_network(self) -> None:
        """Compiles the network's backbone and head in place (``nn.Module.compile``), once."""
        if self.compile_options is None:
            raise ValueError("compile_network: this system was built with compile=False")
        for module in (self.network.backbone, self.network.head):
            if getattr(module, "_compiled_call_impl", None) is None:
                module.compile(**self.compile_options)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["picoseg_config"] = self.run_config
        checkpoint["picoseg_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Only when resuming a fit: validating or testing a checkpoint leaves the counter of
        # the current run alone.
        if self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return
        self.skipped_steps = int(checkpoint.get("picoseg_skipped_steps", 0))
