"""MaskFormer head (Cheng et al. 2021): N queries, each predicting a class and a binary mask.

A pixel decoder (FPN: lateral 1x1 convs and a top-down path over the levels read) produces
per-pixel embeddings at the finest level read. A transformer decoder lets ``num_queries`` learned
queries attend to the coarsest level read (projected to ``hidden_dim``, plus a 2D sine positional
encoding); each query gives class logits over ``num_classes + 1`` ("no object" last) and a mask
embedding whose dot product with the per-pixel embeddings is its mask logit.

The semantic map is the paper's inference, ``scores[c] = sum_q p_q(c) * sigmoid(m_q)``, returned
as ``logits = log(scores)``, so that softmax and argmax over ``logits`` give the normalised scores
and the paper's labelling: inference, evaluation and PiCo's predictions work unchanged. Training
uses :class:`~picoseg.mask_classification.MaskClassificationLoss` on ``class_logits`` and
``mask_logits`` (the head owns no loss). PiCo contrasts the per-pixel embeddings (``features``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from picoseg.models.heads.base import resolve_levels
from picoseg.models.output import SegmentationOutput


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class _ConvGNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            _group_norm(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class PixelDecoder(nn.Module):
    """FPN-style pixel decoder.

    The coarsest level goes through a 3x3 conv-GN-ReLU; each finer level adds its 1x1 lateral
    projection to the nearest-upsampled coarser result, then a 3x3 conv-GN-ReLU; a last 3x3 conv
    maps the finest result to ``mask_dim``.

    Args:
        in_channels: channels of the levels, finest first.
        conv_dim: width of the top-down path.
        mask_dim: channels of the per-pixel embeddings.

    Shapes:
        levels (B, in_channels[i], h_i, w_i), finest first -> (B, mask_dim, h_0, w_0).
    """

    def __init__(self, in_channels: Sequence[int], conv_dim: int, mask_dim: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(
            [_ConvGNReLU(c, conv_dim, 1, relu=False) for c in in_channels[:-1]]
        )
        self.outputs = nn.ModuleList(
            [_ConvGNReLU(conv_dim, conv_dim, 3, relu=True) for _ in in_channels[:-1]]
        )
        self.top = _ConvGNReLU(in_channels[-1], conv_dim, 3, relu=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.top(levels[-1])
        for i in range(len(levels) - 2, -1, -1):
            lateral = self.laterals[i](levels[i])
            x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="nearest")
            x = self.outputs[i](x)
        return self.mask_features(x)


def sine_positional_encoding(
    height: int, width: int, dim: int, device: torch.device
) -> torch.Tensor:
    """2D sine/cosine encoding of pixel centres normalised to [0, 2 pi].

    The first ``dim / 2`` channels encode the row, the last ``dim / 2`` the column, each as
    ``dim / 4`` sines and ``dim / 4`` cosines at geometric frequencies (base 10000).

    Returns:
        (height * width, dim), rows in raster order.
    """
    if dim % 4 != 0:
        raise ValueError(f"the sine positional encoding needs hidden_dim divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 10000.0 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    ys, xs = ys[:, None] * frequencies, xs[:, None] * frequencies  # (h, q), (w, q)
    row = torch.cat([ys.sin(), ys.cos()], dim=1)[:, None].expand(height, width, 2 * quarter)
    col = torch.cat([xs.sin(), xs.cos()], dim=1)[None].expand(height, width, 2 * quarter)
    return torch.cat([row, col], dim=-1).reshape(height * width, dim)


class QueryDecoderLayer(nn.Module):
    """Post-norm transformer decoder layer: self-attention among queries, cross-attention to the
    image, FFN. Positions are added to queries and keys, never to values.

    Shapes:
        queries (B, N, D), query_pos (1, N, D), memory (B, L, D), memory_pos (1, L, D) -> (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
    ) -> torch.Tensor:
        q = queries + query_pos
        attended = self.self_attn(q, q, queries, need_weights=False)[0]
        queries = self.norms[0](queries + self.dropout(attended))
        attended = self.cross_attn(
            queries + query_pos, memory + memory_pos, memory, need_weights=False
        )[0]
        queries = self.norms[1](queries + self.dropout(attended))
        return self.norms[2](queries + self.dropout(self.ffn(queries)))


class MaskFormerHead(nn.Module):
    """MaskFormer's pixel decoder, transformer decoder and mask classification outputs.

    Args:
        in_channels: channels of every backbone level (``Backbone.channels``).
        reductions: stride of every backbone level (``Backbone.reductions``).
        num_classes: C, the real classes (the class head has C + 1 outputs).
        in_index: the levels read, finest first after sorting by stride; the finest sets the
            stride of the masks, the coarsest is what the queries attend to.
        conv_dim: width of the pixel decoder's top-down path (256 in the paper).
        mask_dim: channels of the per-pixel embeddings and mask embeddings (256).
        hidden_dim: width of the transformer decoder (256).
        num_queries: N (100).
        num_layers: transformer decoder layers (6).
        num_heads: attention heads (8).
        ffn_dim: hidden width of the decoder FFN (2048).
        dropout: dropout in the decoder (0.1).
        eps: floor of the semantic scores before the log.
        deep_supervision: in training mode, also return every earlier decoder layer's class and
            mask logits (``aux_mask_outputs``, through the same norm and heads) for the loss.

    Attributes:
        channels: ``mask_dim``, the channels of ``features`` (the projection head's input).

    Shapes:
        levels -> ``SegmentationOutput`` with ``logits`` (B, C, h, w), ``features``
        (B, mask_dim, h, w), ``class_logits`` (B, N, C + 1), ``mask_logits`` (B, N, h, w), at the
        stride of the finest level read.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        num_classes: int,
        in_index: int | Sequence[int] = (1, 2, 3, 4),
        conv_dim: int = 256,
        mask_dim: int = 256,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        eps: float = 1e-8,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MaskFormerHead needs num_layers >= 1, got {num_layers}")
        indices = sorted(
            set(resolve_levels(in_index, len(in_channels))), key=lambda i: reductions[i]
        )
        self.in_index = indices
        self.in_channels = [in_channels[i] for i in indices]
        self.in_reductions = [reductions[i] for i in indices]
        self.num_classes = num_classes
        self.channels = mask_dim
        self.eps = eps
        self.pixel_decoder = PixelDecoder(self.in_channels, conv_dim, mask_dim)
        self.input_proj = nn.Conv2d(self.in_channels[-1], hidden_dim, 1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            [QueryDecoderLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers)]
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_head = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, mask_dim),
        )
        self.hidden_dim = hidden_dim
        self.deep_supervision = deep_supervision

    @property
    def reduction(self) -> int:
        """Stride of the per-pixel embeddings, masks and logits (the finest level read)."""
        return self.in_reductions[0]

    def semantic_logits(
        self, class_logits: torch.Tensor, mask_logits: torch.Tensor
    ) -> torch.Tensor:
        """``log(max(eps, einsum(softmax(class)[..., :C], sigmoid(mask))))``, in float32.

        (B, N, C + 1), (B, N, h, w) -> (B, C, h, w).
        """
        with torch.autocast(device_type=mask_logits.device.type, enabled=False):
            probs = class_logits.float().softmax(-1)[..., : self.num_classes]
            scores = torch.einsum("bnc,bnhw->bchw", probs, mask_logits.float().sigmoid())
            return scores.clamp_min(self.eps).log()

    def forward(self, levels: Sequence[torch.Tensor]) -> SegmentationOutput:
        selected = [levels[i] for i in self.in_index]
        pixels = self.pixel_decoder(selected)  # (B, mask_dim, h, w)
        memory = self.input_proj(selected[-1])
        batch, _, height, width = memory.shape
        memory = memory.flatten(2).transpose(1, 2)  # (B, L, D)
        memory_pos = sine_positional_encoding(height, width, self.hidden_dim, memory.device)
        memory_pos = memory_pos.to(memory.dtype)[None]
        query_pos = self.query_embed.weight[None]
        queries = torch.zeros(batch, *self.query_embed.weight.shape, device=memory.device)
        queries = queries.to(memory.dtype)
        predictions = []
        for i, layer in enumerate(self.layers):
            queries = layer(queries, query_pos, memory, memory_pos)
            if i == len(self.layers) - 1 or (self.deep_supervision and self.training):
                predictions.append(self._predict(queries, pixels))
        class_logits, mask_logits = predictions.pop()
        return SegmentationOutput(
            logits=self.semantic_logits(class_logits, mask_logits),
            features=pixels,
            class_logits=class_logits,
            mask_logits=mask_logits,
            aux_mask_outputs=predictions,
        )

    def _predict(
        self, queries: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) decoder queries -> class logits (B, N, C + 1) and mask logits (B, N, h, w)."""
        queries = self.decoder_norm(queries)
        mask_logits = torch.einsum("bnd,bdhw->bnhw", self.mask_embed(queries), pixels)
        return self.class_head(queries), mask_logits
