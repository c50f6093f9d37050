"""Where PiCo's projection head attaches: the decoder features, or the fused backbone levels the
head reads (the reference code's point), for every head that offers the choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

SIZE = 64
# (head, backbone, extra overrides): the heads that take contrast_input.
HEADS = [
    ("fcn", "resnet18", []),
    ("hrnet", "hrnet18_small", []),
    ("ocr", "hrnet18_small", []),
    ("deeplabv3", "resnet18", ["backbone.output_stride=8"]),
    ("segformer", "mit_b0", []),
]
IDS = [f"{head}-{backbone}" for head, backbone, _ in HEADS]


def _fused_by_hand(levels, head) -> torch.Tensor:
    """The head's levels upsampled (bilinear, half-pixel centres) to the finest and stacked."""
    chosen = [levels[i] for i in head.in_index]
    size = min((x.shape[-2:] for x in chosen), key=lambda s: -s[0])
    return torch.cat(
        [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in chosen], 1
    )


@pytest.mark.parametrize(("head", "backbone", "extra"), HEADS, ids=IDS)
def test_fused_attachment_reads_the_backbone_levels(compose_config, head, backbone, extra):
    torch.manual_seed(0)
    overrides = [f"head={head}", f"backbone={backbone}", *extra]
    fused_cfg = compose_config([*overrides, "head.contrast_input=fused"])
    model = instantiate(fused_cfg.model).eval()
    head_module = model.network.head
    images = torch.randn(2, 3, SIZE, SIZE)
    out = model.network(images)
    levels = model.network.backbone(images)
    expected = _fused_by_hand(levels, head_module)
    torch.testing.assert_close(out.projection_input, expected)
    assert out.projection_input.shape[-2:] == out.features.shape[-2:]
    # The projection head is built for those channels.
    first_conv = next(m for m in model.projection.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == expected.shape[1] == model.network.contrast_channels
    # The contrast's gradient reaches the backbone but none of the head's own layers.
    model.train()
    model.zero_grad()
    model.projection(model.network(images).projection_input).square().mean().backward()
    head_grads = [p.grad for n, p in head_module.named_parameters() if "classifier" not in n]
    assert all(g is None or g.abs().sum() == 0 for g in head_grads)
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.network.backbone.parameters()
    )
    # The default reads the decoder features: then the head's layers get the gradient.
    decoder = instantiate(compose_config(overrides).model).train()
    out = decoder.network(images)
    assert out.projection_input is out.features
    decoder.projection(out.projection_input).square().mean().backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in decoder.network.head.named_parameters()
        if "classifier" not in n
    )


def test_unknown_attachment_is_an_error(compose_config):
    cfg = compose_config(["head.contrast_input=backbone"])
    with pytest.raises(Exception, match="contrast_input='backbone'"):
        instantiate(cfg.model)
