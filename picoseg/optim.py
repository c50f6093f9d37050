"""Optimiser parameter groups (learning-rate factor, weight decay) and learning-rate schedules."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

#: Parameter names (last part) that are embeddings, never weight-decayed: ViT's position
#: embeddings and class token, Segmenter's class tokens, MaskFormer's learned queries.
EMBEDDING_NAMES = ("pos_embed", "cls_token", "class_tokens", "query_embed.weight")


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Names of the parameters of ``module`` that take no weight decay.

    Biases and normalisation scales and shifts (every parameter with at most one dimension),
    embeddings (:data:`EMBEDDING_NAMES`), and what any timm submodule lists in its
    ``no_weight_decay()`` (position embeddings, relative position tables, tokens).
    """
    names = {name for name, p in module.named_parameters() if p.ndim <= 1}
    names |= {
        name
        for name, _ in module.named_parameters()
        if any(name == e or name.endswith("." + e) for e in EMBEDDING_NAMES)
    }
    all_names = [name for name, _ in module.named_parameters()]
    for prefix, sub in module.named_modules():
        listed = getattr(sub, "no_weight_decay", None)
        if not callable(listed):
            continue
        for entry in listed():
            full = f"{prefix}.{entry}" if prefix else entry
            names |= {n for n in all_names if n == full or n.startswith(full + ".")}
    return names


def parameter_groups(
    module: nn.Module,
    backbone: nn.Module | None = None,
    backbone_lr_mult: float = 1.0,
    decay_norm_and_bias: bool = False,
) -> list[dict[str, Any]]:
    """The trainable parameters of ``module`` in optimiser groups.

    Groups are split by learning rate (``backbone`` apart when ``backbone_lr_mult != 1``) and by
    weight decay (:func:`no_weight_decay_names` get ``weight_decay=0``, unless
    ``decay_norm_and_bias``). Each group has a ``name`` (``backbone``, ``backbone_no_decay``,
    ``rest``, ``rest_no_decay``; ``decay`` / ``no_decay`` with a single rate; ``all`` when
    nothing is split) and an ``lr_mult`` the caller applies to the optimiser's rate. Empty
    groups are left out.
    """
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    in_backbone = (
        {id(p) for p in backbone.parameters()}
        if backbone is not None and backbone_lr_mult != 1.0
        else set()
    )
    no_decay = set() if decay_norm_and_bias else no_weight_decay_names(module)
    groups: list[dict[str, Any]] = []
    for part, mult in (("backbone", backbone_lr_mult), ("rest", 1.0)):
        members = [(n, p) for n, p in params if (id(p) in in_backbone) == (part == "backbone")]
        for decays in (True, False):
            chosen = [p for n, p in members if (n not in no_decay) == decays]
            if not chosen:
                continue
            name = part if decays else f"{part}_no_decay"
            group: dict[str, Any] = {"params": chosen, "name": name, "lr_mult": float(mult)}
            if not decays:
                group["weight_decay"] = 0.0
            groups.append(group)
    if not in_backbone:  # one learning rate: the groups are named by decay only
        for group in groups:
            group["name"] = "decay" if group["name"] == "rest" else "no_decay"
        if len(groups) == 1 and "weight_decay" not in groups[0]:
            groups[0]["name"] = "all"
    return groups


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
