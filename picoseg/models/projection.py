"""The training-only projection head of PiCo.

It maps the decoder's per-pixel features to the embedding space in which pixels are contrasted.
The head is attached by the training system and never by the inference network, so a model trained
with PiCo has exactly the parameters and FLOPs of the cross-entropy-only model at test time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """``num_layers`` x (1x1 conv, BN, ReLU), then a 1x1 conv to ``dim`` channels.

    Args:
        in_channels: channels of the decoder features it reads.
        dim: embedding dimension D (256 in the paper).
        hidden_channels: width of the hidden layers; defaults to ``in_channels``.
        num_layers: number of conv-BN-ReLU layers before the last conv.
        normalize: l2-normalise each pixel's embedding. The contrast loss and the memory bank
            normalise what they use themselves, so the training system passes ``False`` and saves
            normalising (and back-propagating through) pixels that never enter the loss.

    Shapes:
        (B, in_channels, h, w) -> (B, dim, h, w), same stride as the input.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int = 256,
        hidden_channels: int | None = None,
        num_layers: int = 1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        hidden = hidden_channels or in_channels
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_layers):
            layers += [
                nn.Conv2d(channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
            channels = hidden
        layers.append(nn.Conv2d(channels, dim, 1))
        self.layers = nn.Sequential(*layers)
        self.dim = dim
        self.normalize = normalize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        embeddings = self.layers(features)
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        return embeddings
