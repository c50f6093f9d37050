"""Test-time inference: sliding window, flips and scales against hand-computed passes."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from picoseg.inference import predict_probabilities
from picoseg.models import Backbone, Segmentor
from picoseg.models.heads import FCNHead
from picoseg.predict import list_images, load_image

NUM_CLASSES = 4


class TinyNet(nn.Module):
    """The Segmentor contract: ``forward(images).logits``; logits at stride 2 (3x3 convs, not
    flip-equivariant) or at stride 1 from 1x1 convs only (pointwise, flip-equivariant)."""

    def __init__(self, pointwise: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        if pointwise:
            self.body = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 1))
        else:
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, NUM_CLASSES, 3, padding=1),
            )

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.body(images))


def _whole(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    logits = net(images).logits
    logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits.softmax(dim=1)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(1))


def test_whole_mode_is_the_plain_forward(images):
    net = TinyNet().eval()
    probs = predict_probabilities(net, images)
    assert probs.shape == (2, NUM_CLASSES, 16, 20)
    torch.testing.assert_close(probs, _whole(net, images), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 16, 20), atol=1e-5, rtol=0)


def test_slide_with_a_window_covering_the_image_equals_whole(images):
    net = TinyNet().eval()
    whole = predict_probabilities(net, images)
    slide = predict_probabilities(net, images, mode="slide", window=(16, 20), stride=(8, 8))
    torch.testing.assert_close(slide, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("window", "stride"), [((5, 7), (3, 4)), ((8, 8), (8, 8)), ((32, 32), (9, 9))]
)
def test_slide_on_a_pointwise_network_equals_whole(images, window, stride):
    net = TinyNet(pointwise=True).eval()
    whole = predict_probabilities(net, images)
    slide = predict_probabilities(net, images, mode="slide", window=window, stride=stride)
    assert slide.shape == whole.shape
    torch.testing.assert_close(slide, whole, atol=1e-6, rtol=0)


def test_flip_on_an_equivariant_network_changes_nothing(images):
    net = TinyNet(pointwise=True).eval()
    torch.testing.assert_close(
        predict_probabilities(net, images, flip=True),
        predict_probabilities(net, images),
        atol=1e-6,
        rtol=0,
    )


def test_flip_averages_the_two_passes(images):
    net = TinyNet().eval()
    plain = predict_probabilities(net, images)
    flipped = predict_probabilities(net, images, flip=True)
    assert (flipped - plain).abs().max() > 1e-4
    expected = (_whole(net, images) + _whole(net, images.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(flipped, expected, atol=1e-6, rtol=0)


def test_scales_average_the_resized_passes(images):
    net = TinyNet().eval()
    plain = predict_probabilities(net, images)
    torch.testing.assert_close(predict_probabilities(net, images, scales=(1.0,)), plain)
    half = F.interpolate(images, size=(8, 10), mode="bilinear", align_corners=False)
    half_probs = F.interpolate(
        _whole(net, half), size=(16, 20), mode="bilinear", align_corners=False
    )
    expected = (half_probs + _whole(net, images)) / 2
    multi = predict_probabilities(net, images, scales=(0.5, 1.0))
    torch.testing.assert_close(multi, expected, atol=1e-6, rtol=0)


def test_slide_with_scales_and_flip_returns_input_size_probabilities(images):
    probs = predict_probabilities(
        TinyNet().eval(),
        images,
        mode="slide",
        window=(8, 8),
        stride=(5, 5),
        scales=(0.5, 1.25),
        flip=True,
    )
    assert probs.shape == (2, NUM_CLASSES, 16, 20)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 16, 20), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "tiles"}, {"scales": ()}, {"scales": (0.0,)}, {"mode": "slide", "window": (0, 4)}],
)
def test_bad_settings_raise(images, kwargs):
    with pytest.raises(ValueError, match="inference"):
        predict_probabilities(TinyNet(), images, **kwargs)


def test_list_images_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        list_images(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no image"):
        list_images(tmp_path)
    (tmp_path / "b.PNG").write_bytes(b"not an image")
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    with pytest.raises(ValueError, match="b.PNG"):
        load_image(tmp_path / "b.PNG", (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))


def test_slide_on_a_segmentor_with_a_covering_window_equals_whole_and_predict(images):
    net = Segmentor(Backbone("resnet18"), partial(FCNHead, channels=8), NUM_CLASSES).eval()
    images = images[..., :16, :16]
    whole = predict_probabilities(net, images)
    slide = predict_probabilities(net, images, mode="slide", window=(16, 16), stride=(8, 8))
    torch.testing.assert_close(slide, whole, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(whole, net.predict(images), atol=1e-6, rtol=0)
