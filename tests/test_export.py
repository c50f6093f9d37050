"""Export of the inference network: ONNX (checked with onnxruntime) and TorchScript."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from picoseg.export import ExportedSegmentor, export, export_network


def _default_system(compose_config):
    cfg = compose_config([])
    system = instantiate(cfg.model)
    torch.manual_seed(0)
    for module in system.network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return system


def test_onnx_matches_pytorch_and_has_no_projection_head(compose_config, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    system = _default_system(compose_config)
    network = system.network.eval()
    path = export_network(network, tmp_path / "model.onnx", "onnx", input_size=(64, 64))
    # Every weight of the graph is a network weight: the projection head is not exported.
    graph = onnx.load(str(path)).graph
    exported = sum(int(torch.tensor(list(t.dims)).prod()) for t in graph.initializer)
    network_params = sum(p.numel() for p in network.parameters())
    buffers = sum(b.numel() for b in network.buffers())
    projection = sum(p.numel() for p in system.projection.parameters())
    assert exported <= network_params + buffers
    assert exported < network_params + projection
    session = ort.InferenceSession(str(path))
    # Another batch and size than the tracing example: the axes are dynamic.
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = ExportedSegmentor(network)(images)
    (logits,) = session.run(None, {"images": images.numpy()})
    assert logits.shape == (2, 9, 96, 128)
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)


def test_torchscript_matches_pytorch(compose_config, tmp_path):
    network = _default_system(compose_config).network.eval()
    path = export_network(network, tmp_path / "model.pt", "torchscript", input_size=(64, 64))
    loaded = torch.jit.load(str(path))
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), ExportedSegmentor(network)(images))


def test_unknown_format_is_an_error(compose_config, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_network(torch.nn.Identity(), tmp_path / "m", "tflite")


def test_export_writes_the_input_normalisation_of_the_run(
    compose_config, write_checkpoint, tmp_path
):
    # EfficientNet-Lite0's TF weights expect mean = std = 0.5, not ImageNet's statistics.
    cfg = compose_config(["backbone=efficientnet_lite0", "loss=ce"])
    write_checkpoint(cfg, instantiate(cfg.model), tmp_path / "run.ckpt")
    export_cfg = {
        "ckpt_path": str(tmp_path / "run.ckpt"),
        "output": str(tmp_path / "model.pt"),
        "format": "torchscript",
        "input_size": [64, 64],
        "opset": 18,
    }
    path = export(OmegaConf.create(export_cfg))
    preprocessing = json.loads((tmp_path / "model.pt.preprocessing.json").read_text())
    assert path == tmp_path / "model.pt"
    assert preprocessing["mean"] == [0.5, 0.5, 0.5] and preprocessing["std"] == [0.5, 0.5, 0.5]
    assert preprocessing["class_names"] == list(cfg.dataset.class_names)
