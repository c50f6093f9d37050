"""The model zoo as users select it: every architecture on the backbones it serves, from configs.

Each case composes ``conf/train.yaml`` with ``head=`` and ``backbone=`` exactly as the command line
does, builds the training system (PiCo on) and checks the documented strides of the logits and of
the decoder embeddings that the projection head reads, that gradients reach the backbone through
both, and that the inference network is the CE-only network, parameter for parameter.
Only the smallest variant of each backbone family runs a forward pass here (64 x 64 inputs);
the large ones only instantiate in ``tests/test_configs.py``.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from picoseg.system import SegmentationSystem

SIZE = 64
# (head, backbone, extra overrides, stride of logits and embeddings as documented in the configs)
ZOO = [
    ("fcn", "resnet18", [], 4),
    ("fcn", "mobilenetv2", [], 4),
    ("deeplabv3", "resnet18", ["backbone.output_stride=8"], 8),
    ("deeplabv3", "mobilenetv3", [], 32),
    ("hrnet", "hrnet18_small", [], 4),
    ("ocr", "hrnet18_small", [], 4),
    ("ocr", "resnet18", ["backbone.output_stride=8", "head.in_index=-1"], 8),
    ("segformer", "mit_b0", [], 4),
    ("segmenter", "vit_small", [], 16),
    ("maskformer", "resnet18", [], 4),
    ("maskformer", "mit_b0", [], 4),
]
IDS = [f"{head}-{backbone}" for head, backbone, _, _ in ZOO]


def _system(compose_config, overrides: list[str]) -> tuple[SegmentationSystem, int]:
    cfg = compose_config(overrides)
    model = instantiate(cfg.model)
    assert isinstance(model, SegmentationSystem)
    return model, cfg.dataset.num_classes


@pytest.mark.parametrize(("head", "backbone", "extra", "stride"), ZOO, ids=IDS)
def test_forward_strides_and_backward(compose_config, head, backbone, extra, stride):
    torch.manual_seed(0)
    model, num_classes = _system(compose_config, [f"head={head}", f"backbone={backbone}", *extra])
    images = torch.randn(2, 3, SIZE, SIZE)
    out = model.network(images)
    grid = (SIZE // stride, SIZE // stride)
    assert out.logits.shape == (2, num_classes, *grid)
    assert out.features.shape == (2, model.network.feature_channels, *grid)
    projections = model.projection(out.features)
    assert projections.shape[-2:] == grid
    # The backbone's levels match its advertised metadata (what heads are built from).
    levels = model.network.backbone(images)
    assert [x.shape[1] for x in levels] == model.network.backbone.channels
    assert [SIZE // x.shape[-1] for x in levels] == model.network.backbone.reductions
    # Gradients reach the backbone through the classifier path and through the projection path.
    first = next(p for p in model.network.backbone.parameters() if p.requires_grad)
    out.logits.square().mean().backward(retain_graph=True)
    assert first.grad is not None and first.grad.abs().sum() > 0
    first.grad = None
    projections.square().mean().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize(("head", "backbone", "extra", "stride"), ZOO, ids=IDS)
def test_inference_network_is_the_ce_only_network(compose_config, head, backbone, extra, stride):
    overrides = [f"head={head}", f"backbone={backbone}", *extra]
    pico, _ = _system(compose_config, [*overrides, "loss=pico"])
    ce, _ = _system(compose_config, [*overrides, "loss=ce"])
    assert ce.projection is None and pico.projection is not None

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(pico.network) == count(ce.network)
    assert count(pico) == count(ce) + count(pico.projection)
    assert not any("projection" in name for name in pico.network.state_dict())
    assert pico.network.state_dict().keys() == ce.network.state_dict().keys()
