"""A timm feature extractor that advertises what the decoder needs: channels and reductions."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from timm.layers import PatchEmbed
from timm.models._features import FeatureGetterNet
from torch import nn

from picoseg.models.pretrained import (
    convert_efficientnet_pytorch,
    download_error,
    is_efficientnet_pytorch,
    packaged_weights_file,
)

log = logging.getLogger(__name__)

#: Prefixes of classifier weights in timm checkpoints, which a features-only model never uses.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "head_drop.", "last_linear.", "incre_")


class Backbone(nn.Module):
    """timm model created with ``features_only=True``.

    CNNs and hierarchical transformers (``pvt_v2_*``, the MiT encoders of SegFormer) return one
    map per stage. Plain ViTs (``vit_*``) go through timm's ``forward_intermediates``: each level
    is the output of one transformer block as an NCHW map at the patch stride, prefix (class)
    tokens dropped, and passed through the ViT's final norm when ``final_norm`` is set (so the
    last block's level is the encoder output Segmenter reads); pass ``dynamic_img_size=True`` so
    any input size divisible by the patch size works.

    Args:
        name: timm model name, e.g. ``resnet50``, ``hrnet_w48``, ``pvt_v2_b2``,
            ``vit_base_patch16_224``.
        pretrained: start from ImageNet weights: ``weights_path`` when given, else the file a
            package ships for this model (:data:`picoseg.models.pretrained.PACKAGED_WEIGHTS`,
            offline), else timm's download (needs network access; a failed download is a
            :class:`RuntimeError` that says what to do). ``name`` may pin timm's weights with a
            tag, e.g. ``hrnet_w48.ms_in1k``.
        weights_path: a local checkpoint of the full timm model (``.pth``/``.pt``/``.safetensors``,
            optionally nested under ``state_dict`` or ``model``), loaded whether or not
            ``pretrained`` is set; see :func:`load_backbone_weights` for which of its keys may
            go unused.
        out_indices: which feature levels to return (timm's numbering: 0 = stem for CNNs, the
            first stage for ``pvt_v2``, block indices for ViTs).
        output_stride: dilate the last stages so features stop at this stride (8 or 16 for the
            DeepLab convention); ``None`` keeps the model's own (usually 32).
        final_norm: plain ViTs only: apply the model's final norm to every returned level
            (timm's ``FeatureGetterNet(norm=True)``; its weights then load from a checkpoint).
        **kwargs: passed to ``timm.create_model`` (e.g. ``feature_location=""`` for HRNet, which
            is set automatically for ``hrnet_*`` models so all four branches are returned).

    Attributes:
        channels: channels of each returned level.
        reductions: stride of each returned level relative to the input.
        size_divisor: what input heights and widths must be multiples of (a ViT's patch size;
            1 for convolutional stems).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights_path: str | None = None,
        out_indices: Sequence[int] | None = None,
        output_stride: int | None = None,
        final_norm: bool = False,
        **kwargs,
    ) -> None:
        super().__init__()
        if name.startswith("hrnet"):
            # timm's HRNet feature mode defaults to the classification ("incre") features.
            kwargs.setdefault("feature_location", "")
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if final_norm:
            if output_stride is not None:
                raise ValueError(f"{name}: final_norm=True takes no output_stride")
            indices = kwargs.pop("out_indices", 3)
        else:
            kwargs["features_only"] = True
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        self.name = name
        if pretrained and weights_path is None:
            weights_path = packaged_weights_file(name)
            if weights_path is not None:
                log.info("%s: ImageNet weights from %s", name, weights_path)
        download = bool(pretrained) and weights_path is None
        try:
            model = timm.create_model(name, pretrained=download, **kwargs)
        except Exception as error:
            if not download:
                raise
            # Tell a failed download from a bad architecture: the latter fails without weights too.
            timm.create_model(name, pretrained=False, **kwargs)
            raise download_error(name, error) from None
        if final_norm:
            # timm's features_only ViT prunes the final norm, and its builder takes no
            # feature_cfg from the caller, so wrap the full model here with the norm kept.
            if not (hasattr(model, "forward_intermediates") and hasattr(model, "blocks")):
                raise ValueError(
                    f"{name}: final_norm=True is for plain ViTs (timm vit_* models); this model "
                    "has no block-wise forward_intermediates"
                )
            model = FeatureGetterNet(model, indices, norm=True)
        self.model = model
        if weights_path is not None:
            load_backbone_weights(self.model, weights_path, name)
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())
        self.size_divisor: int = _size_divisor(self.model)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, channels[i], H / reductions[i], W / reductions[i]) per level."""
        return self.model(images)


def _size_divisor(model: nn.Module) -> int:
    """What input sides must be multiples of: the patch size of a ViT's patch embedding (timm's
    ``PatchEmbed`` asserts divisibility unless it pads itself), 1 for convolutional stems, which
    take any size."""
    divisor = 1
    for module in model.modules():
        if isinstance(module, PatchEmbed) and not module.dynamic_img_pad:
            for side in module.patch_size:
                divisor = math.lcm(divisor, int(side))
    return divisor


def load_backbone_weights(
    model: nn.Module, path: str | Path, model_name: str | None = None
) -> list[str]:
    """Load a local checkpoint of a full timm model into its features-only twin.

    A checkpoint in EfficientNet-PyTorch's layout (``_conv_stem``, ``_blocks``) is first renamed
    to timm ``model_name``'s keys (:func:`~picoseg.models.pretrained.convert_efficientnet_pytorch`).

    The checkpoint's keys are first renamed as timm's feature wrappers rename modules: a
    flattened first-level ``nn.Sequential`` (``stages.0.x`` -> ``stages_0.x``, as in ``pvt_v2``)
    and the model held as ``.model`` (``blocks.0.x`` -> ``model.blocks.0.x``, ViTs). A key may
    then go unused only when it is classifier weights or belongs to a module the features-only
    model does not have: a top-level module timm's wrapper leaves out (what follows the last
    returned level, e.g. ``head``, HRNet's ``final_layer``, MobileNet's ``conv_head``), or one it
    replaced by ``nn.Identity`` (the final ``norm``/``fc_norm`` of a ViT, whose levels are taken
    before the norm). Any other missing or unexpected key is an error, e.g. the blocks after
    the last returned one, which timm removes from a features-only ViT (return the last block
    when loading a full checkpoint).

    Returns:
        the checkpoint's unused keys (as in the file), sorted.

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
    if is_efficientnet_pytorch(state):
        if model_name is None:
            raise ValueError(
                f"{path}: weights in EfficientNet-PyTorch's layout (_conv_stem, _blocks); give "
                "the timm model name they belong to (e.g. tf_efficientnet_lite0)"
            )
        state = convert_efficientnet_pytorch(state, model_name, path)
    own = model.state_dict()
    renamed = {_feature_key(model, k): k for k in state}
    unused = {
        k
        for k, original in renamed.items()
        if k not in own
        and (original.startswith(_CLASSIFIER_PREFIXES) or _left_out_by_wrapper(model, k))
    }
    state = {k: state[original] for k, original in renamed.items() if k not in unused}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(renamed[k] for k in set(state) - set(own))
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
    unused_keys = sorted(renamed[k] for k in unused)
    if unused_keys:
        modules = sorted({k.split(".")[0] for k in unused_keys})
        log.info("%s: %d keys of %s unused by the backbone", path, len(unused_keys), modules)
    return unused_keys


def _feature_key(model: nn.Module, key: str) -> str:
    """The name of a full model's state-dict key in timm's features-only wrapper ``model``."""
    if isinstance(model, FeatureGetterNet):
        return f"model.{key}"
    parts = key.split(".", 2)
    if (
        len(parts) == 3
        and parts[0] not in model._modules
        and f"{parts[0]}_{parts[1]}" in model._modules
    ):
        return f"{parts[0]}_{parts[1]}.{parts[2]}"
    return key


def _left_out_by_wrapper(model: nn.Module, key: str) -> bool:
    """Whether the (renamed) key belongs to a module timm's wrapper dropped or replaced by
    ``nn.Identity``; a missing module deeper inside a kept one (e.g. a block a deeper
    checkpoint has) is a real mismatch."""
    names = key.split(".")[:-1]
    module = model
    if isinstance(model, FeatureGetterNet):
        module, names = model.model, names[1:]
    for depth, name in enumerate(names):
        child = module._modules.get(name)
        if child is None:
            return depth == 0
        if isinstance(child, nn.Identity):
            return True
        module = child
    return False
