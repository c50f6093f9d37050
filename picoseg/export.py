"""Export the inference network of a checkpoint:
``python -m picoseg.export ckpt_path=PATH format=onnx|torchscript [output=FILE]``.

Only the network is exported (backbone, decoder head, classifier): PiCo's projection head, the
memory bank and the losses stay behind, so the exported model costs exactly what the CE-only model
costs. The exported graph takes normalised RGB images (B, 3, H, W), float32, and returns class
logits (B, num_classes, H, W) upsampled to the input size; batch, height and width are dynamic
(height and width should be multiples of the backbone's largest stride, 32, or 16 for ViT).
The normalisation is the run's (the backbone's pretrained statistics), written beside the model
as ``<model>.preprocessing.json``: ``(rgb / 255 - mean) / std`` per channel, with the class names.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from picoseg.checkpoint import load_run
from picoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from picoseg.inference import pick_device

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportedSegmentor(nn.Module):
    """images (B, 3, H, W) -> logits (B, num_classes, H, W): the network's logits, bilinearly
    upsampled to the input size, as a plain tensor (no dataclass) so tracers can follow it."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.network(images).logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def export_network(
    network: nn.Module,
    path: str | Path,
    format: str = "onnx",
    input_size: tuple[int, int] = (512, 512),
    opset: int = 18,
    device: str | torch.device = "cpu",
) -> Path:
    """Write ``network`` (a :class:`~picoseg.models.Segmentor`) to ``path``.

    Args:
        network: the inference network, in eval mode.
        path: output file.
        format: ``onnx`` (torch's dynamo exporter, dynamic batch/height/width) or ``torchscript``
            (``torch.jit.trace``; shapes stay dynamic for convolutional networks).
        input_size: (H, W) of the example input used for tracing.
        opset: ONNX opset version.
        device: where the network runs while it is traced (the file does not depend on it).

    Returns:
        The path written.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {FORMATS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ExportedSegmentor(network).to(device).eval()
    example = torch.randn(1, 3, *input_size, device=device)
    with torch.no_grad():
        if format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notice
                traced = torch.jit.trace(model, example, check_trace=False)
            traced.save(str(path))
            return path
        batch, height, width = (torch.export.Dim(n) for n in ("batch", "height", "width"))
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: batch, 2: height, 3: width}},
            opset_version=opset,
            external_data=False,
        )
        program.save(str(path))
    return path


def export(cfg: DictConfig) -> Path:
    """Rebuild the run of ``cfg.ckpt_path`` and export its network; the default output is
    ``<checkpoint dir>/../export/model.{onnx,pt}``."""
    run_cfg, model = load_run(cfg.ckpt_path)
    output = cfg.get("output")
    if output is None:
        output = (
            Path(cfg.ckpt_path).resolve().parent.parent
            / "export"
            / f"model{SUFFIXES.get(cfg.format, '')}"
        )
    path = export_network(
        model.network.eval(), output, cfg.format, tuple(cfg.input_size), cfg.opset, pick_device(cfg)
    )
    datamodule = run_cfg.dataset.datamodule
    preprocessing = {
        "input": "RGB, (B, 3, H, W) float32: (pixel / 255 - mean) / std per channel",
        "mean": list(datamodule.get("mean") or IMAGENET_MEAN),
        "std": list(datamodule.get("std") or IMAGENET_STD),
        "class_names": list(model.class_names),
        "ignore_index": int(model.ignore_index),
    }
    preprocessing_path = path.with_name(path.name + ".preprocessing.json")
    preprocessing_path.write_text(json.dumps(preprocessing, indent=2))
    log.info(
        "%s model written to %s (input normalisation: %s)", cfg.format, path, preprocessing_path
    )
    print(path)
    return path


@hydra.main(version_base="1.3", config_path="pkg://picoseg.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
