"""Opening picoseg checkpoints safely: weights only, and one clear error for a bad file.

A checkpoint is a pickle, and unpickling can run code. picoseg writes only tensors, numbers,
strings and plain containers into its checkpoints (the resolved run configuration as a dict,
random states as tensors), so every entry point opens them with ``torch.load(weights_only=True)``:
a file that holds anything else is refused before any of it is built.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_checkpoint"]

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
        raise ValueError(
            f"{path}: cannot be read as a checkpoint ({type(error).__name__}: "
            f"{_first_line(error)}); the file may be incomplete (cut short while written)"
        ) from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED_KEYS):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint)
        raise ValueError(
            f"{path}: not a picoseg checkpoint: expected a dict with {list(REQUIRED_KEYS)} "
            f"(written by picoseg.train), found {found}"
        )
    return checkpoint
