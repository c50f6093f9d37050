"""Checkpoint files: opened safely (weights only, one clear error for a bad file) and written
atomically.

:func:`load_run` rebuilds a trained run (its configuration and system) from one, for evaluate,
predict, export, embeddings and scripts.

A checkpoint is a pickle, and unpickling can run code. picoseg writes only tensors, numbers,
strings and plain containers into its checkpoints (the resolved run configuration as a dict,
random states as tensors), so every entry point opens them with ``torch.load(weights_only=True)``:
a file that holds anything else is refused before any of it is built.

:class:`AtomicCheckpointIO` writes a checkpoint to a hidden temporary file in the same folder and
renames it over the old one, so a process killed while writing (OOM killer, preemption, power)
leaves the previous complete ``last.ckpt``, never a truncated one. :class:`LastCheckpoint` keeps
``last.ckpt`` the latest state of the run: after every epoch, every validation and, optionally,
every few steps.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict

from picoseg.inference import inference_settings

if TYPE_CHECKING:
    from picoseg.system import SegmentationSystem

__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "atomic_file", "load_checkpoint", "load_run"]

#: Keys every checkpoint written by ``picoseg.train`` holds.
REQUIRED_KEYS = ("state_dict", "picoseg_config")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``picoseg.train``, weights only, on the CPU.

    Args:
        path: the ``.ckpt`` file.

    Returns:
        The checkpoint dict (``state_dict``, ``picoseg_config``, the training state).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds objects other than tensors and plain containers (it is not
            unpickled), cannot be read (e.g. cut short), or is not a picoseg checkpoint; the
            message names the file and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: refused, it holds objects other than tensors, numbers, strings and plain "
            f"containers ({_first_line(error)}). picoseg opens checkpoints weights-only, so "
            "nothing in the file was run; a checkpoint written by picoseg.train loads this way"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        others = sorted(str(p) for p in path.parent.glob("*.ckpt") if p.name != path.name)
        raise ValueError(
            f"{path}: cannot be read as a checkpoint ({type(error).__name__}: "
            f"{_first_line(error)}); the file may be incomplete (cut short while written). "
            f"Other checkpoints of this run: {others or 'none'}"
        ) from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED_KEYS):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint)
        raise ValueError(
            f"{path}: not a picoseg checkpoint: expected a dict with {list(REQUIRED_KEYS)} "
            f"(written by picoseg.train), found {found}"
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: temporary file, flush to disk, rename.

    The temporary file (``.<name>.tmp<pid>`` beside the target, so ``*.ckpt`` globs never see it)
    is removed when the write fails. A process killed mid-write leaves one behind; the next
    successful write of the same file removes those whose process is no longer running.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as file:
            torch.save(checkpoint, file)
        _remove_orphans(path)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """Open a hidden temporary file beside ``path`` (``.<name>.tmp<pid>``) for writing; on a
    clean exit flush it to disk and rename it over ``path``, on an error remove it. Readers see
    the old file or the new one, never a part of it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, mode, **open_args) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _remove_orphans(path: Path) -> None:
    """Remove ``.<name>.tmp<pid>`` files beside ``path`` left by processes that are gone."""
    prefix = f".{path.name}.tmp"
    for leftover in path.parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix) :]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except PermissionError:
            pass  # a live process of another user


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the run's latest state, written after every training epoch (and its
    validation), after every validation inside an epoch, and every ``every_n_train_steps`` steps
    when that is set, so ``ckpt_path=last`` loses at most that many steps.

    Lightning's ``ModelCheckpoint`` takes either epoch or step triggers, and saves after a
    validation inside an epoch only when validation is not at epoch ends; this keeps all three.

    Args:
        dirpath: The checkpoint folder.
        filename: The file name without ``.ckpt``.
        every_n_train_steps: Also save every this many optimiser steps (0: only at epoch ends
            and validations).
    """

    def __init__(self, dirpath: str | Path, filename: str = "last", every_n_train_steps: int = 0):
        if int(every_n_train_steps) < 0:
            raise ValueError(f"every_n_train_steps={every_n_train_steps}: expected >= 0")
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            every_n_train_steps=int(every_n_train_steps) or None,
            auto_insert_metric_name=False,
            enable_version_counter=False,  # always last.ckpt, never last-v1.ckpt
        )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Flush the loggers before any checkpoint is written, so the logs on disk reach at least
        its step: a run killed later and resumed from it loses no logged row."""
        for logger in trainer.loggers:
            logger.save()
        return super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Step saves, except after an epoch's last batch: the epoch-end save follows it. A fit
        resumed from that batch's checkpoint leaves Lightning's epoch counters one behind for
        the next epoch, so the checkpoints written during it would resume that epoch from its
        start (measured: one extra batch per such resume)."""
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_latest(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save after a validation inside an epoch (one at the epoch end waits for it)."""
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._save_latest(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save at the end of every training epoch, after its validation."""
        if self._last_global_step_saved == trainer.global_step:
            # A save of this step came before the epoch end (a step save when training stops
            # mid-epoch, or a validation inside the epoch): save the epoch's end over it.
            self._last_global_step_saved = -1
        self._save_latest(trainer)


def load_run(
    ckpt_path: str | Path,
    dataset_cfg: DictConfig | None = None,
    inference_cfg: DictConfig | None = None,
) -> tuple[DictConfig, SegmentationSystem]:
    """Rebuild the run configuration and the trained system stored in a picoseg checkpoint.

    The file is opened weights-only (:func:`picoseg.checkpoint.load_checkpoint`): a file holding
    anything but tensors and plain containers is refused before it is unpickled.

    Args:
        ckpt_path: a checkpoint written by ``picoseg.train`` (it holds ``picoseg_config``).
        dataset_cfg: another dataset node with the same number of classes, replacing the
            stored one; ``None`` keeps the training dataset.
        inference_cfg: an entry point's ``inference`` node (sliding window, scales, flip), the
            system's ``inference`` argument for validation, its window defaulting to the
            training crop (:func:`picoseg.inference.inference_settings`); ``None``: the
            network's plain whole-image pass.

    The backbone is rebuilt without its pretrained weights (the checkpoint holds the trained
    ones), so no download or weights package is needed. A replacement dataset that does not set
    the input normalisation gets the one the model was trained with.

    Returns:
        The run configuration (with ``dataset`` replaced if asked, and ``train_crop_size``: the
        (H, W) crop the network was trained on, the default sliding window) and the system with
        its trained weights, in eval mode on the CPU.
    """
    ckpt_path = Path(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    run_cfg = OmegaConf.create(checkpoint["picoseg_config"])
    crop_size = run_cfg.dataset.datamodule.get("crop_size")
    with open_dict(run_cfg):
        run_cfg.train_crop_size = None if crop_size is None else [int(v) for v in crop_size]
    if dataset_cfg is not None:
        if dataset_cfg.num_classes != run_cfg.dataset.num_classes:
            raise ValueError(
                f"dataset {dataset_cfg.name} has {dataset_cfg.num_classes} classes, the model in "
                f"{ckpt_path} was trained for {run_cfg.dataset.num_classes}"
            )
        trained = run_cfg.dataset.datamodule
        normalization = {k: trained[k] for k in ("mean", "std") if trained.get(k) is not None}
        run_cfg.dataset = dataset_cfg
        with open_dict(run_cfg):
            for key, value in normalization.items():
                if run_cfg.dataset.datamodule.get(key) is None:
                    run_cfg.dataset.datamodule[key] = value
    backbone = run_cfg.model.network.backbone
    backbone.pretrained, backbone.weights_path = False, None
    inference = inference_settings(inference_cfg, run_cfg.train_crop_size)
    model: SegmentationSystem = instantiate(run_cfg.model, inference=inference)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return run_cfg, model
