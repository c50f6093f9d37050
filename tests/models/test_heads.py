import functools

import pytest
import torch

from picoseg.models import Backbone, ProjectionHead, Segmentor
from picoseg.models.heads import DeepLabV3Head, FCNHead


@pytest.fixture(scope="module")
def backbone():
    return Backbone("resnet18")


@pytest.mark.parametrize(
    ("head", "stride"),
    [
        (functools.partial(FCNHead, in_index=[1, 2, 3, 4], channels=32), 4),
        (functools.partial(FCNHead, in_index=-1, channels=32), 32),
        (functools.partial(FCNHead, in_index=[2, 3], channels=32, num_convs=0), 8),
        (functools.partial(DeepLabV3Head, channels=32, rates=(1, 2, 3)), 32),
    ],
)
def test_segmentor_shapes_and_backward(backbone, head, stride):
    net = Segmentor(backbone, head, num_classes=5)
    images = torch.randn(2, 3, 64, 64)
    out = net(images)
    assert net.head.reduction == stride
    assert out.logits.shape == (2, 5, 64 // stride, 64 // stride)
    assert out.features.shape == (2, net.feature_channels, 64 // stride, 64 // stride)
    out.logits.sum().backward()
    assert net.backbone.model.conv1.weight.grad is not None
    probs = net.eval().predict(images)
    assert probs.shape == (2, 5, 64, 64)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 64, 64))


def test_projection_head_is_unit_norm_and_has_dim():
    head = ProjectionHead(32, dim=16)
    out = head(torch.randn(2, 32, 5, 7))
    assert out.shape == (2, 16, 5, 7)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 5, 7))
    raw = ProjectionHead(32, dim=16, normalize=False)
    raw.load_state_dict(head.state_dict())
    head.eval(), raw.eval()
    x = torch.randn(1, 32, 3, 3)
    torch.testing.assert_close(torch.nn.functional.normalize(raw(x), dim=1), head(x))


def test_level_indices_out_of_range_are_an_error_not_a_wraparound():
    from picoseg.models.heads import resolve_levels

    assert resolve_levels([-4, -3, -2, -1], 5) == [1, 2, 3, 4]
    assert resolve_levels(-1, 4) == [3]
    # [1, 2, 3, 4] on a 4-level backbone (MiT, ViT) used to read level 0 as its last level.
    with pytest.raises(ValueError, match=r"\[4\] out of range for a backbone with 4 levels"):
        resolve_levels([1, 2, 3, 4], 4)
    with pytest.raises(ValueError, match="out of range"):
        FCNHead([8, 16], [2, 4], num_classes=3, in_index=[-3, -1])
