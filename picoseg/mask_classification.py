"""Mask classification (MaskFormer): bipartite matching of predicted masks to ground-truth masks.

A semantic label map is turned into one binary mask per class present (the targets). Each of the
``N`` predictions is a class distribution over ``C + 1`` classes (the last one is "no object") and
a mask. Predictions and targets are matched one-to-one by the Hungarian algorithm on

    cost(q, t) = -w_class * p_q(c_t) + w_mask * focal(m_q, t) + w_dice * dice(m_q, t),

and the loss is the class cross-entropy over every query (unmatched ones target "no object",
weighted ``no_object_weight``) plus the focal and dice losses of the matched masks, averaged over
the matched targets of the batch. Usable without Lightning: the training system calls the module
with the network's :class:`~picoseg.models.output.SegmentationOutput` and the labels.

Masks are compared at the mask logits' resolution (stride 4 for MaskFormer): the labels are
resized there by nearest neighbour, so ignored pixels stay ignored and no mask logit is
upsampled (16x fewer pixels per query than at full resolution).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from picoseg.models.output import SegmentationOutput


def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of rows (queries) to columns (targets).

    Args:
        cost: (N, M) cost matrix; any device. With N >= M (the usual case: more queries than
            targets) every target gets a query, otherwise only N targets are matched.

    Returns:
        ``(rows, cols)``: two (min(N, M),) long tensors on ``cost``'s device, ``rows[i]`` is the
        query assigned to target ``cols[i]``; sorted by ``cols``. Empty when M == 0.
    """
    if cost.ndim != 2:
        raise ValueError(f"hungarian_match expects an (N, M) cost matrix, got {tuple(cost.shape)}")
    num_targets = cost.shape[1]
    if num_targets == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty.clone()
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    order = np.argsort(cols)
    return (
        torch.as_tensor(rows[order], dtype=torch.long, device=cost.device),
        torch.as_tensor(cols[order], dtype=torch.long, device=cost.device),
    )


def class_masks(
    labels: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks of every class and the valid-pixel mask.

    Args:
        labels: (B, h, w) integer labels in ``[0, num_classes)`` or ``ignore_index``.

    Returns:
        ``(masks, valid)``: (B, num_classes, h*w) float one-hot masks (0 on ignored pixels) and
        (B, h*w) float, 1 where the label is not ignored.
    """
    flat = labels.flatten(1)
    valid = flat != ignore_index
    classes = torch.arange(num_classes, device=labels.device)
    masks = (flat[:, None, :] == classes[None, :, None]) & valid[:, None, :]
    return masks.float(), valid.float()


def pairwise_focal_cost(
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Sigmoid focal loss of every prediction against every target, mean over valid pixels.

    Args:
        mask_logits: (B, N, P) mask logits over P pixels.
        targets: (B, T, P) binary target masks (0 on ignored pixels).
        valid: (B, P) 1 on non-ignored pixels.

    Returns:
        (B, N, T) costs.
    """
    probs = mask_logits.sigmoid()
    positive = alpha * (1 - probs) ** gamma * F.softplus(-mask_logits)  # -log p, target 1
    negative = (1 - alpha) * probs**gamma * F.softplus(mask_logits)  # -log(1 - p), target 0
    # targets are 0 and valid - targets is 0 on ignored pixels: they add nothing.
    total = torch.einsum("bnp,btp->bnt", positive, targets)
    total = total + torch.einsum("bnp,btp->bnt", negative, valid[:, None] - targets)
    return total / valid.sum(-1).clamp_min(1)[:, None, None]


def pairwise_dice_cost(
    mask_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` of every prediction against every target, over
    valid pixels. Shapes as :func:`pairwise_focal_cost`; returns (B, N, T)."""
    probs = mask_logits.sigmoid() * valid[:, None]
    intersection = torch.einsum("bnp,btp->bnt", probs, targets)
    sizes = probs.sum(-1)[:, :, None] + targets.sum(-1)[:, None, :]
    return 1 - (2 * intersection + 1) / (sizes + 1)


def sigmoid_focal_loss(
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Focal loss of matched pairs, mean over each pair's valid pixels.

    Args:
        mask_logits: (K, P) logits of K matched predictions.
        targets: (K, P) their binary targets.
        valid: (K, P) 1 on non-ignored pixels.

    Returns:
        (K,) losses.
    """
    probs = mask_logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="none")
    p_true = probs * targets + (1 - probs) * (1 - targets)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    loss = weight * (1 - p_true) ** gamma * bce * valid
    return loss.sum(-1) / valid.sum(-1).clamp_min(1)


def dice_loss(
    mask_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Dice loss of matched pairs over valid pixels. Shapes as :func:`sigmoid_focal_loss`."""
    probs = mask_logits.sigmoid() * valid
    intersection = (probs * targets).sum(-1)
    return 1 - (2 * intersection + 1) / (probs.sum(-1) + targets.sum(-1) + 1)


class MaskClassificationLoss(nn.Module):
    """MaskFormer's set prediction loss for semantic segmentation.

    Args:
        num_classes: C, the real classes; class id C of ``class_logits`` is "no object".
        ignore_index: label excluded from targets, costs and losses.
        class_weight: weight of the class cross-entropy (loss and matching cost).
        mask_weight: weight of the focal loss (20 in MaskFormer).
        dice_weight: weight of the dice loss (1 in MaskFormer).
        no_object_weight: cross-entropy weight of the "no object" class (0.1).
        focal_alpha: focal loss alpha (0.25).
        focal_gamma: focal loss gamma (2).

    Call: ``loss(outputs, labels)`` with ``outputs.class_logits`` (B, N, C + 1),
    ``outputs.mask_logits`` (B, N, h, w) and ``labels`` (B, H, W), resized to (h, w) by nearest
    neighbour. Returns ``{"mask_ce", "mask_focal", "mask_dice"}``, each already weighted, plus
    ``{"aux_mask_ce", "aux_mask_focal", "aux_mask_dice"}`` (each summed over the earlier decoder
    layers, matched separately) when ``outputs.aux_mask_outputs`` is not empty.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weight: float = 1.0,
        mask_weight: float = 20.0,
        dice_weight: float = 1.0,
        no_object_weight: float = 0.1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        weights = torch.ones(num_classes + 1)
        weights[-1] = no_object_weight
        self.register_buffer("class_weights", weights, persistent=False)

    def _check(self, class_logits: torch.Tensor | None, mask_logits: torch.Tensor | None) -> None:
        if class_logits is None or mask_logits is None:
            raise ValueError(
                "MaskClassificationLoss needs SegmentationOutput.class_logits and .mask_logits; "
                "the head returned None (use a mask classification head such as MaskFormerHead)"
            )
        if class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"MaskClassificationLoss: class_logits have {class_logits.shape[-1]} classes, "
                f"expected num_classes + 1 = {self.num_classes + 1}"
            )

    def _targets(self, labels: torch.Tensor, size: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(labels.shape[-2:]) != tuple(size):
            labels = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
            labels = labels[:, 0].long()
        return class_masks(labels, self.num_classes, self.ignore_index)

    @torch.no_grad()
    def match(
        self, class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Hungarian matching of queries to the classes present in each image.

        Args:
            class_logits: (B, N, C + 1).
            mask_logits: (B, N, h, w).
            labels: (B, H, W).

        Returns:
            one ``(queries, classes)`` pair of (M_b,) long tensors per image, sorted by class.
        """
        self._check(class_logits, mask_logits)
        masks, valid = self._targets(labels, mask_logits.shape[-2:])
        flat_logits = mask_logits.flatten(2).float()
        probs = class_logits.float().softmax(-1)[..., : self.num_classes]  # (B, N, C)
        cost = (
            -self.class_weight * probs
            + self.mask_weight
            * pairwise_focal_cost(flat_logits, masks, valid, self.focal_alpha, self.focal_gamma)
            + self.dice_weight * pairwise_dice_cost(flat_logits, masks, valid)
        )
        present = masks.sum(-1) > 0  # (B, C)
        # One host transfer for the whole batch; the assignment itself runs on the CPU.
        cost, present = cost.cpu(), present.cpu()
        matches = []
        for image_cost, image_present in zip(cost, present, strict=True):
            classes = image_present.nonzero()[:, 0]
            queries, columns = hungarian_match(image_cost[:, classes])
            matches.append(
                (queries.to(class_logits.device), classes[columns].to(class_logits.device))
            )
        return matches

    def forward(self, outputs: SegmentationOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self.terms(outputs.class_logits, outputs.mask_logits, labels)
        names = ("mask_ce", "mask_focal", "mask_dice")
        result = dict(zip(names, terms, strict=True))
        if outputs.aux_mask_outputs:
            # Deep supervision: each earlier decoder layer is matched and scored on its own.
            layer_terms = [self.terms(c, m, labels) for c, m in outputs.aux_mask_outputs]
            for name, values in zip(names, zip(*layer_terms, strict=True), strict=True):
                result[f"aux_{name}"] = torch.stack(values).sum()
        return result

    def terms(
        self, class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weighted class, focal and dice terms of one set of predictions.

        Args:
            class_logits: (B, N, C + 1).
            mask_logits: (B, N, h, w).
            labels: (B, H, W).
        """
        self._check(class_logits, mask_logits)
        matches = self.match(class_logits, mask_logits, labels)
        batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)])
        queries = torch.cat([q for q, _ in matches])
        classes = torch.cat([c for _, c in matches])

        target_classes = torch.full(
            class_logits.shape[:2], self.num_classes, dtype=torch.long, device=class_logits.device
        )
        target_classes[batch, queries] = classes
        ce = F.cross_entropy(
            class_logits.float().transpose(1, 2), target_classes, weight=self.class_weights
        )

        masks, valid = self._targets(labels, mask_logits.shape[-2:])
        matched_logits = mask_logits.flatten(2).float()[batch, queries]  # (K, P)
        matched_masks = masks[batch, classes]
        matched_valid = valid[batch]
        num_targets = max(len(classes), 1)
        focal = sigmoid_focal_loss(
            matched_logits, matched_masks, matched_valid, self.focal_alpha, self.focal_gamma
        )
        dice = dice_loss(matched_logits, matched_masks, matched_valid)
        return (
            self.class_weight * ce,
            self.mask_weight * focal.sum() / num_targets,
            self.dice_weight * dice.sum() / num_targets,
        )
