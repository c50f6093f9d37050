"""Private random generators per device, and their states for checkpoints (sampler, synthesis)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["generator_states", "restore_generators"]


def generator_states(generators: Mapping[torch.device, torch.Generator]) -> dict[str, Tensor]:
    """``{device name: state}`` of per-device generators (CPU uint8 tensors, checkpoint-safe)."""
    return {str(device): generator.get_state() for device, generator in generators.items()}


def restore_generators(states: Mapping[str, Tensor]) -> dict[torch.device, torch.Generator]:
    """Generators rebuilt from :func:`generator_states`, skipping CUDA devices that are absent."""
    generators = {}
    for name, state in states.items():
        device = torch.device(name)
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            continue
        generator = torch.Generator(device=device)
        generator.set_state(state.cpu())
        generators[device] = generator
    return generators
