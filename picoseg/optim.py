"""Learning-rate schedules, built with the number of optimiser steps the trainer will take."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def poly_schedule(
    optimizer: Optimizer,
    total_steps: int,
    power: float = 0.9,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Poly decay ``lr = base_lr * (1 - step / total_steps) ** power`` (the DeepLab schedule),
    floored at ``min_lr_ratio * base_lr``, after an optional linear warm-up from 0.

    Args:
        optimizer: the optimiser whose groups' base learning rates are scaled.
        total_steps: steps until the rate reaches its floor (the training system passes the
            trainer's ``estimated_stepping_batches``).
        power: exponent of the decay.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: floor, as a fraction of each base learning rate.
    """
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, step / total_steps)
        return max(min_lr_ratio, (1.0 - progress) ** power)

    return LambdaLR(optimizer, factor)
