"""The random states a resumed fit needs, saved in every checkpoint and restored on resume.

:class:`RandomStateCallback` writes ``checkpoint["picoseg_rng"]``: the global torch (and CUDA),
NumPy and Python generators, and the private generators of PiCo's sampler and synthesis (those
exist when they are given a ``seed``). It restores them only when a fit resumes: evaluation tools
that load a checkpoint leave the current random state alone. :class:`~picoseg.system.
SegmentationSystem` attaches the callback itself (``configure_callbacks``), so no configuration of
the ``callbacks`` group can drop it.

Everything saved is tensors and plain Python values, so the checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn

__all__ = [
    "CHECKPOINT_KEY",
    "RandomStateCallback",
    "global_rng_state",
    "load_rng_state",
    "rng_state",
    "set_global_rng_state",
]

#: Where the states go in a checkpoint.
CHECKPOINT_KEY = "picoseg_rng"


def global_rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU, and the current CUDA device once CUDA is in use),
    NumPy and Python. :func:`set_global_rng_state` restores it."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restores a :func:`global_rng_state` (the CUDA state into the current CUDA device, when
    there is one; every DDP rank receives the state rank 0 saved)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _holders(module: Any) -> dict[str, Any]:
    """The contrast's sampler and synthesis, where they keep their own generators."""
    contrast = getattr(module, "contrast", None)
    holders = {}
    for name in ("sampler", "synthesis"):
        holder = getattr(contrast, name, None)
        if hasattr(holder, "rng_state"):
            holders[name] = holder
    return holders


def rng_state(module: Any) -> dict[str, Any]:
    """The global generators' states and those of ``module.contrast``'s sampler and synthesis."""
    state: dict[str, Any] = {"global": global_rng_state()}
    for name, holder in _holders(module).items():
        state[name] = holder.rng_state()
    return state


def load_rng_state(module: Any, state: dict[str, Any]) -> None:
    """Restores an :func:`rng_state` into the global generators and ``module``'s contrast."""
    set_global_rng_state(state["global"])
    for name, holder in _holders(module).items():
        if name in state:
            holder.load_rng_state(state[name])


class RandomStateCallback(L.Callback):
    """Saves :func:`rng_state` of the module in every checkpoint; restores it when a fit
    resumes from one."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = rng_state(pl_module)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING and CHECKPOINT_KEY in checkpoint:
            load_rng_state(pl_module, checkpoint[CHECKPOINT_KEY])
