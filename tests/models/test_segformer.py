import pytest
import torch
import torch.nn.functional as F

from picoseg.models import Backbone, Segmentor
from picoseg.models.heads.segformer import SegFormerHead


@pytest.fixture(scope="module")
def mit_b0():
    return Backbone("pvt_v2_b0")


def test_shapes_and_backward_on_mit_b0(mit_b0):
    torch.manual_seed(0)
    net = Segmentor(mit_b0, lambda **kw: SegFormerHead(**kw, channels=48, embed_dim=32), 5)
    out = net(torch.randn(2, 3, 64, 64))
    assert net.head.in_index == [0, 1, 2, 3] and net.head.reduction == 4
    assert out.logits.shape == (2, 5, 16, 16)
    assert out.features.shape == (2, 48, 16, 16) and net.feature_channels == 48
    out.logits.square().mean().backward()
    first = net.backbone.model.patch_embed.proj.weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.head.parameters())


def test_reads_the_last_four_levels_of_resnet18():
    backbone = Backbone("resnet18")
    head = SegFormerHead(backbone.channels, backbone.reductions, num_classes=3, embed_dim=16)
    assert head.in_index == [1, 2, 3, 4] and head.reduction == 4
    out = head(backbone(torch.randn(1, 3, 64, 64)))
    assert out.logits.shape == (1, 3, 16, 16)


def _randomise_batchnorm(bn: torch.nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()


def test_decoder_equals_hand_composition():
    torch.manual_seed(0)
    channels, reductions = [8, 16, 24, 32], [4, 8, 16, 32]
    head = SegFormerHead(channels, reductions, num_classes=3, channels=12, embed_dim=10).eval()
    _randomise_batchnorm(head.fuse[1])
    levels = [
        torch.randn(2, c, 32 // r, 48 // r) for c, r in zip(channels, reductions, strict=True)
    ]
    out = head(levels)
    # Reference: per-pixel linear maps as matrix products, bilinear upsampling to the stride-4
    # grid (8 x 12), concatenation, 1x1 conv, BatchNorm with running statistics, ReLU, classifier.
    embedded = []
    for x, linear in zip(levels, head.linears, strict=True):
        y = torch.einsum("bchw,ec->behw", x, linear.weight[:, :, 0, 0])
        y = y + linear.bias[:, None, None]
        embedded.append(F.interpolate(y, size=(8, 12), mode="bilinear", align_corners=False))
    fused = torch.einsum("bchw,oc->bohw", torch.cat(embedded, 1), head.fuse[0].weight[:, :, 0, 0])
    bn = head.fuse[1]
    fused = (fused - bn.running_mean[:, None, None]) / torch.sqrt(
        bn.running_var[:, None, None] + bn.eps
    )
    features = torch.relu(fused * bn.weight[:, None, None] + bn.bias[:, None, None])
    logits = torch.einsum("bchw,kc->bkhw", features, head.classifier.weight[:, :, 0, 0])
    logits = logits + head.classifier.bias[:, None, None]
    torch.testing.assert_close(out.features, features)
    torch.testing.assert_close(out.logits, logits)


def test_single_level_needs_no_resize():
    torch.manual_seed(0)
    head = SegFormerHead([8, 16], [8, 16], num_classes=2, in_index=1, channels=4, embed_dim=6)
    head.eval()
    x = torch.randn(1, 16, 5, 7)
    out = head([torch.randn(1, 8, 10, 14), x])
    assert head.reduction == 16 and out.logits.shape == (1, 2, 5, 7)
    expected = head.fuse(head.linears[0](x))
    torch.testing.assert_close(out.features, expected)
