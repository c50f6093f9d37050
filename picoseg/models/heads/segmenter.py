"""Segmenter head: the mask transformer of Segmenter (Strudel et al., 2021).

The patch tokens of one level (the last ViT block) are projected to ``d_model`` and run through
``num_layers`` transformer blocks together with ``num_classes`` learnable class tokens. After a
LayerNorm, patch and class tokens are each projected by a bias-free linear map and L2-normalised;
the class masks are their scalar products, (B, num_classes, h, w), followed by a LayerNorm over
the classes (the paper's ``mask_norm``). These masks are the logits: there is no 1x1 classifier.
Segmenter-S uses ViT-S/16 with ``d_model`` 384 and 6 heads, Segmenter-B ViT-B/16 with 768 and 12
heads, both with 2 layers (``d_model`` = the encoder width, heads of width 64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from picoseg.models.heads.base import DecodeHead
from picoseg.models.output import SegmentationOutput


class SegmenterHead(DecodeHead):
    """Mask transformer on one level.

    ``SegmentationOutput.features`` are the L2-normalised patch embeddings (B, d_model, h, w),
    the vectors whose scalar products with the class embeddings give the masks.

    Args:
        in_channels: channels of every backbone level (``Backbone.channels``).
        reductions: stride of every backbone level (``Backbone.reductions``).
        num_classes: number of classes (of class tokens).
        in_index: the level read (the last by default).
        d_model: width of the decoder; ``None`` takes the width of the level read.
        num_layers: transformer blocks of the decoder.
        num_heads: attention heads; ``None`` takes ``d_model // 64``.
        mlp_ratio: hidden width of the blocks' MLP relative to ``d_model``.
        dropout: dropout of attention weights, attention output and MLP in the blocks.
        drop_path: stochastic depth rate, increasing linearly to this value over the blocks.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        num_classes: int,
        in_index: int = -1,
        d_model: int | None = None,
        num_layers: int = 2,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        drop_path: float = 0.0,
    ) -> None:
        d_model = in_channels[in_index] if d_model is None else d_model
        num_heads = d_model // 64 if num_heads is None else num_heads
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(
                f"SegmenterHead: d_model={d_model} must be a positive multiple of "
                f"num_heads={num_heads}"
            )
        super().__init__(in_channels, reductions, num_classes, in_index, d_model, dropout=0.0)
        # The masks come from the class embeddings: DecodeHead's 1x1 classifier is not used, and
        # removing it keeps unused parameters out of the optimiser and DDP.
        self.classifier = None
        self.num_heads = num_heads
        self.project_in = nn.Linear(self.in_channels[0], d_model)
        self.class_tokens = nn.Parameter(torch.zeros(1, num_classes, d_model))
        rates = torch.linspace(0, drop_path, num_layers).tolist() if num_layers else []
        self.blocks = nn.ModuleList(
            Block(
                d_model,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                proj_drop=dropout,
                attn_drop=dropout,
                drop_path=rate,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(d_model)
        self.project_patches = nn.Linear(d_model, d_model, bias=False)
        self.project_classes = nn.Linear(d_model, d_model, bias=False)
        self.mask_norm = nn.LayerNorm(num_classes)
        self.apply(_init_weights)
        trunc_normal_(self.class_tokens, std=0.02)
        for projection in (self.project_patches, self.project_classes):
            nn.init.normal_(projection.weight, std=d_model**-0.5)

    def embed(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected level (B, C, h, w) -> L2-normalised patch embeddings (B, d_model, h, w) and
        class embeddings (B, num_classes, d_model)."""
        x = levels[0]
        batch, _, height, width = x.shape
        patches = self.project_in(x.flatten(2).transpose(1, 2))  # (B, h * w, d_model)
        tokens = torch.cat([patches, self.class_tokens.expand(batch, -1, -1)], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        num_patches = height * width
        patches = F.normalize(self.project_patches(tokens[:, :num_patches]), dim=-1)
        classes = F.normalize(self.project_classes(tokens[:, num_patches:]), dim=-1)
        return patches.transpose(1, 2).reshape(batch, self.channels, height, width), classes

    def decode(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.embed(levels)[0]

    def forward(self, levels: Sequence[torch.Tensor]) -> SegmentationOutput:
        """Levels -> masks (B, num_classes, h, w) as logits, patch embeddings as features."""
        patches, classes = self.embed(self.select(levels))
        masks = torch.einsum("bdhw,bkd->bhwk", patches, classes)
        logits = self.mask_norm(masks).permute(0, 3, 1, 2)
        return SegmentationOutput(logits=logits, features=patches)


def _init_weights(module: nn.Module) -> None:
    """Segmenter's initialisation: truncated normal (std 0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
