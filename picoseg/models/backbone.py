"""A timm feature extractor that advertises what the decoder needs: channels and reductions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

#: Prefixes of classifier weights in timm checkpoints; a features-only model has no classifier,
#: so these are the only keys of a local weights file that may go unused.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "head_drop.", "last_linear.", "incre_")


class Backbone(nn.Module):
    """timm model created with ``features_only=True``.

    Args:
        name: timm model name, e.g. ``resnet50``, ``hrnet_w48``, ``mobilenetv3_large_100``.
        pretrained: let timm fetch its pretrained weights (needs network access; off by default).
        weights_path: a local checkpoint of the full timm model (``.pth``/``.pt``/``.safetensors``,
            optionally nested under ``state_dict`` or ``model``). Classifier weights are dropped;
            any other missing or unexpected key is an error naming the file.
        out_indices: which feature levels to return (timm's numbering, 0 = stem).
        output_stride: dilate the last stages so features stop at this stride (8 or 16 for the
            DeepLab convention); ``None`` keeps the model's own (usually 32).
        **kwargs: passed to ``timm.create_model`` (e.g. ``feature_location=""`` for HRNet, which
            is set automatically for ``hrnet_*`` models so all four branches are returned).

    Attributes:
        channels: channels of each returned level.
        reductions: stride of each returned level relative to the input.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights_path: str | None = None,
        out_indices: Sequence[int] | None = None,
        output_stride: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if name.startswith("hrnet"):
            # timm's HRNet feature mode defaults to the classification ("incre") features.
            kwargs.setdefault("feature_location", "")
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        self.name = name
        self.model = timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
        if weights_path is not None:
            load_backbone_weights(self.model, weights_path)
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, channels[i], H / reductions[i], W / reductions[i]) per level."""
        return self.model(images)


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint of a full timm model into its features-only twin.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state dict, or its keys do not fit the model (the message
            names the file and the first offending keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for nested in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(nested), dict):
            state = state[nested]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit the backbone: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{path}: shape of {k} is {tuple(state[k].shape)}, the backbone expects "
            f"{tuple(own[k].shape)} ({len(wrong)} mismatched tensors)"
        )
    model.load_state_dict(state)
