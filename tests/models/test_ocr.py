"""OCRNet head, the HRNetV2 head config, deep-stem dilated ResNets and dilated MobileNetV2."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from picoseg.models import Backbone, Segmentor
from picoseg.models.heads.fcn import FCNHead
from picoseg.models.heads.ocr import ObjectAttention, OCRHead, gather_regions, region_attention
from picoseg.system import SegmentationSystem

SIZE = 64


@pytest.fixture(scope="module")
def resnet18():
    return Backbone("resnet18")


@pytest.fixture(scope="module")
def hrnet():
    return Backbone("hrnet_w18_small")


def _first_param(backbone: Backbone) -> torch.nn.Parameter:
    return next(p for p in backbone.parameters() if p.requires_grad)


# (backbone fixture, head kwargs, stride of logits/features, stride of the region logits)
CASES = [
    ("resnet18", {"in_index": [1, 2, 3, 4]}, 4, 4),
    ("resnet18", {"in_index": -1, "aux_in_index": -2, "aux_kernel_size": 3}, 32, 16),
    ("hrnet", {"in_index": [1, 2, 3, 4]}, 4, 4),
]


@pytest.mark.parametrize(
    ("backbone_name", "kwargs", "stride", "aux_stride"),
    CASES,
    ids=["resnet18-all", "resnet18-last-aux-layer3", "hrnet_w18_small-all"],
)
def test_ocr_shapes_and_gradients(request, backbone_name, kwargs, stride, aux_stride):
    torch.manual_seed(0)
    backbone = request.getfixturevalue(backbone_name)
    backbone.zero_grad()
    head = functools.partial(OCRHead, channels=32, key_channels=16, **kwargs)
    net = Segmentor(backbone, head, num_classes=5)
    out = net(torch.randn(2, 3, SIZE, SIZE))
    grid = (SIZE // stride, SIZE // stride)
    assert net.head.reduction == stride
    assert out.logits.shape == (2, 5, *grid)
    assert out.features.shape == (2, 32, *grid) and net.feature_channels == 32
    assert set(out.aux_logits) == {"ocr_regions"}
    assert out.aux_logits["ocr_regions"].shape == (2, 5, SIZE // aux_stride, SIZE // aux_stride)
    first = _first_param(backbone)
    # main path: the backbone, and the region branch through the spatial gather
    out.logits.square().mean().backward(retain_graph=True)
    assert first.grad is not None and first.grad.abs().sum() > 0
    region_classifier = net.head.regions[-1].weight
    assert region_classifier.grad is not None and region_classifier.grad.abs().sum() > 0
    # aux path alone reaches the backbone too
    backbone.zero_grad()
    out.aux_logits["ocr_regions"].square().mean().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_gather_regions_matches_loop_over_classes():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 3, 4)
    logits = torch.randn(2, 3, 3, 4) * 3
    regions = gather_regions(features, logits)
    assert regions.shape == (2, 3, 5)
    for b in range(2):
        feats = features[b].reshape(5, -1)  # (C, N)
        for k in range(3):
            scores = logits[b, k].reshape(-1)
            weights = scores.exp() / scores.exp().sum()
            expected = sum(weights[i] * feats[:, i] for i in range(feats.shape[1]))
            torch.testing.assert_close(regions[b, k], expected)
    with pytest.raises(ValueError, match="must share the spatial size"):
        gather_regions(features, torch.randn(2, 3, 2, 2))


def test_region_attention_matches_per_pixel_loop():
    torch.manual_seed(0)
    queries, keys, values = torch.randn(2, 4, 6), torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    out = region_attention(queries, keys, values)
    assert out.shape == (2, 5, 6)
    for b in range(2):
        for i in range(6):
            scores = [float(queries[b, :, i] @ keys[b, :, k]) / math.sqrt(4) for k in range(3)]
            weights = torch.tensor(scores).softmax(0)
            expected = sum(weights[k] * values[b, :, k] for k in range(3))
            torch.testing.assert_close(out[b, :, i], expected)


def _randomise_batchnorm(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@torch.no_grad()
def test_object_attention_matches_naive_per_pixel_computation():
    torch.manual_seed(0)
    block = ObjectAttention(channels=6, key_channels=4)
    _randomise_batchnorm(block)
    block.eval()
    pixels, regions = torch.randn(2, 6, 2, 3), torch.randn(2, 3, 6)
    out = block(pixels, regions)
    assert out.shape == (2, 6, 2, 3)

    def apply(layer: torch.nn.Module, vector: torch.Tensor) -> torch.Tensor:
        """A 1x1 transform applied to one (C,) vector on its own."""
        return layer(vector[None, :, None, None])[0, :, 0, 0]

    for b in range(2):
        keys = [apply(block.key, regions[b, k]) for k in range(3)]
        values = [apply(block.value, regions[b, k]) for k in range(3)]
        for y in range(2):
            for x in range(3):
                query = apply(block.query, pixels[b, :, y, x])
                scores = torch.stack([query @ key / 2.0 for key in keys])  # sqrt(4) = 2
                weights = scores.softmax(0)
                context = sum(w * v for w, v in zip(weights, values, strict=True))
                torch.testing.assert_close(out[b, :, y, x], apply(block.out, context))


def test_training_step_adds_the_region_ce(monkeypatch, resnet18):
    torch.manual_seed(0)
    head = functools.partial(OCRHead, in_index=-1, channels=16, key_channels=8)
    net = Segmentor(resnet18, head, num_classes=3)
    system = SegmentationSystem(
        net, 3, ["a", "b", "c"], functools.partial(torch.optim.SGD, lr=0.1)
    ).eval()  # eval: no dropout, BN from running stats, so both calls see the same network
    monkeypatch.setattr(system, "log", lambda *args, **kwargs: None)
    optimizer = torch.optim.SGD(system.parameters(), lr=0.1)
    system._trainer = SimpleNamespace(optimizers=[optimizer], world_size=1)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[:, :8] = 255
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": labels}

    losses = {}
    with torch.no_grad():
        for weight in (0.0, 0.4, 1.0):
            system.aux_weight = weight
            losses[weight] = system.training_step(batch, 0)["loss"]
        region_logits = net(batch["image"]).aux_logits["ocr_regions"]
    upsampled = F.interpolate(region_logits, size=(32, 32), mode="bilinear", align_corners=False)
    valid = labels != 255
    log_probs = upsampled.log_softmax(1).permute(0, 2, 3, 1)[valid]
    region_ce = -log_probs.gather(1, labels[valid][:, None]).mean()
    assert region_ce > 0
    torch.testing.assert_close(losses[1.0] - losses[0.0], region_ce)
    torch.testing.assert_close(losses[0.4] - losses[0.0], 0.4 * region_ce)


def test_ocr_config_defaults(compose_config):
    cfg = compose_config(["head=ocr", "backbone=hrnet18_small"])
    head = instantiate(cfg.model).network.head
    assert isinstance(head, OCRHead)
    assert head.in_index == [1, 2, 3, 4] and head.aux_index == [1, 2, 3, 4]
    assert head.channels == 512 and head.attention.query[-1][0].out_channels == 256
    # the region branch keeps the width of the concatenated branches: 16 + 32 + 64 + 128
    assert head.regions[0][0].in_channels == head.regions[0][0].out_channels == 240


def test_hrnet_head_width_is_the_sum_of_the_branches(compose_config):
    cfg = compose_config(["head=hrnet", "backbone=hrnet18_small"])
    net = instantiate(cfg.model).network
    assert isinstance(net.head, FCNHead)
    assert net.feature_channels == 16 + 32 + 64 + 128
    # upsample, concatenate, one 1x1 conv-BN-ReLU of the same width, classifier
    (fuse,) = net.head.convs
    assert fuse[0].kernel_size == (1, 1) and fuse[0].in_channels == fuse[0].out_channels == 240
    out = net(torch.randn(1, 3, SIZE, SIZE))
    assert out.features.shape == (1, 240, SIZE // 4, SIZE // 4)
    # HRNet-W48's channels (stem, then the four branches): the original's 720-wide head
    w48 = FCNHead([64, 48, 96, 192, 384], [2, 4, 8, 16, 32], 19, [1, 2, 3, 4], None, num_convs=0)
    assert w48.channels == 720 and w48.classifier.in_channels == 720
    assert FCNHead([8, 16, 32], [2, 4, 8], 3, -1, None).channels == 32


@pytest.mark.parametrize("option", ["resnet50c", "resnet101c"])
def test_deep_stem_resnets_are_v1c_at_output_stride_8(compose_config, option):
    backbone = instantiate(compose_config([f"backbone={option}"]).backbone)
    model = backbone.model
    assert backbone.reductions == [2, 4, 8, 8, 8]
    assert backbone.channels == [64, 256, 512, 1024, 2048]
    convs = [m for m in model.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [c.out_channels for c in convs] == [32, 32, 64]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    # no avg-down: the shortcut is a strided 1x1 conv (the "D" variant pools first)
    shortcut = model.layer2[0].downsample
    assert isinstance(shortcut[0], torch.nn.Conv2d) and shortcut[0].stride == (2, 2)
    assert not any(isinstance(m, torch.nn.AvgPool2d) for m in model.modules())
    assert model.layer3[-1].conv2.dilation == (2, 2)
    assert model.layer4[-1].conv2.dilation == (4, 4)
    assert len(model.layer3) == {"resnet50c": 6, "resnet101c": 23}[option]


@pytest.mark.parametrize(
    ("option", "stride"), [("mobilenetv2", 32), ("mobilenetv3", 32), ("mobilenetv2_d8", 8)]
)
def test_mobilenets_with_deeplabv3(compose_config, option, stride):
    cfg = compose_config([f"backbone={option}", "head=deeplabv3", "loss=ce"])
    net = instantiate(cfg.model).network
    expected = [2, 4, 8, 16, 32] if stride == 32 else [2, 4, 8, 8, 8]
    assert net.backbone.reductions == expected
    images = torch.randn(1, 3, SIZE, SIZE)
    assert [SIZE // x.shape[-1] for x in net.backbone(images)] == expected
    out = net.eval()(images)
    assert out.logits.shape == (1, cfg.dataset.num_classes, SIZE // stride, SIZE // stride)
