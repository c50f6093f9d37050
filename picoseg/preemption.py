"""Preemption: a training run stopped by SIGTERM saves ``checkpoints/last.ckpt`` and exits
cleanly, and started again in the same run directory it resumes from there by itself.

SIGTERM is what a cluster sends when it preempts or requeues a job or reaches its time limit
(SLURM, Kubernetes, ``docker stop``, ``kill``). Lightning catches it and stops training at the
end of the current step (on every DDP rank) by raising ``SIGTERMException``;
:class:`SaveOnPreemption` then writes ``last.ckpt`` (atomically, like every picoseg checkpoint)
with the full training state, and a marker ``checkpoints/preempted.json`` saying so. A later
``python -m picoseg.train`` with the same ``hydra.run.dir`` and no ``ckpt_path`` finds the
marker and resumes from ``last.ckpt`` (:func:`preempted_checkpoint`); the marker is removed when
training then ends. A run that ended normally leaves no marker, so reusing its directory starts
afresh as before.

Under SLURM, Lightning's own auto-requeue (``#SBATCH --signal=USR1@90``: on SIGUSR1 it saves
``hpc_ckpt_<n>.ckpt`` and calls ``scontrol requeue``) works alongside: the requeue's SIGTERM
then takes the path above, and the requeued job resumes from ``last.ckpt`` as long as it gets the
same run directory (``hydra.run.dir=outputs/train/runs/slurm_${SLURM_JOB_ID}``, the job id
survives a requeue).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["MARKER", "SaveOnPreemption", "clear_preemption", "preempted_checkpoint"]

log = logging.getLogger(__name__)

#: Written beside ``last.ckpt`` when a run was stopped by SIGTERM.
MARKER = "preempted.json"


class SaveOnPreemption(L.Callback):
    """On SIGTERM during fitting: save ``<dirpath>/last.ckpt`` and the marker, then let the
    run end (``picoseg.train`` reports it as preempted).

    Args:
        dirpath: the run's checkpoint folder.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            marker = {
                "checkpoint": str(path),
                "global_step": int(trainer.global_step),
                "epoch": int(trainer.current_epoch),
            }
            (self.dirpath / MARKER).write_text(json.dumps(marker, indent=2))
            log.warning(
                "SIGTERM: stopped at step %d (epoch %d), saved %s; run again with the same "
                "hydra.run.dir to resume from it",
                trainer.global_step,
                trainer.current_epoch,
                path,
            )


def preempted_checkpoint(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The marker :class:`SaveOnPreemption` left in ``checkpoint_dir`` (the run's
    ``checkpoints/`` folder), with ``checkpoint`` the ``last.ckpt`` beside it; ``None`` when
    training there was not stopped by SIGTERM.

    Raises:
        FileNotFoundError: the marker is there but its ``last.ckpt`` is not.
    """
    checkpoint_dir = Path(checkpoint_dir)
    marker_path = checkpoint_dir / MARKER
    if not marker_path.is_file():
        return None
    marker = json.loads(marker_path.read_text())
    checkpoint = checkpoint_dir / "last.ckpt"
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"{marker_path} says training was preempted, but {checkpoint} is missing; give "
            "ckpt_path=<a checkpoint>, or delete the marker to start afresh"
        )
    marker["checkpoint"] = str(checkpoint)
    return marker


def clear_preemption(checkpoint_dir: str | Path) -> None:
    """Remove the marker from ``checkpoint_dir`` once training has run to its end."""
    (Path(checkpoint_dir) / MARKER).unlink(missing_ok=True)
