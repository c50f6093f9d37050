"""Test-time inference: sliding window, flips and scales against hand-computed passes."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from picoseg.inference import (
    default_stride,
    inference_settings,
    is_single_whole_pass,
    predict_labels,
    predict_probabilities,
)
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
    [
        {"mode": "tiles"},
        {"scales": ()},
        {"scales": (0.0,)},
        {"mode": "slide", "window": (0, 4)},
        {"mode": "slide"},
        {"mode": "slide", "window": (8, 8), "batch_size": 0},
    ],
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


def _naive_slide(net, images, window, stride):
    """The reference protocol written out: every window (the last one meeting each border)
    predicted on its own, probabilities summed and divided by how many windows cover a pixel."""
    height, width = images.shape[-2:]
    win_h, win_w = min(window[0], height), min(window[1], width)

    def starts(size, win, step):
        offsets = list(range(0, max(size - win, 0) + 1, step))
        return offsets if offsets[-1] == size - win else [*offsets, size - win]

    total = torch.zeros(images.shape[0], NUM_CLASSES, height, width)
    count = torch.zeros(height, width)
    for top in starts(height, win_h, stride[0]):
        for left in starts(width, win_w, stride[1]):
            crop = images[..., top : top + win_h, left : left + win_w]
            with torch.no_grad():
                total[..., top : top + win_h, left : left + win_w] += _whole(net, crop)
            count[top : top + win_h, left : left + win_w] += 1
    return total / count


@pytest.fixture(scope="module")
def segmentor() -> Segmentor:
    torch.manual_seed(0)
    return Segmentor(Backbone("resnet18"), partial(FCNHead, channels=8), NUM_CLASSES).eval()


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_slide_on_a_segmentor_equals_the_window_by_window_reference(segmentor, batch_size):
    images = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    slide = predict_probabilities(
        segmentor, images, mode="slide", window=(32, 32), stride=(20, 20), batch_size=batch_size
    )
    expected = _naive_slide(segmentor, images, (32, 32), (20, 20))
    torch.testing.assert_close(slide, expected, atol=1e-5, rtol=0)
    # the windows overlap and the network is not pointwise: sliding is not the whole pass
    assert (slide - predict_probabilities(segmentor, images)).abs().max() > 1e-3


def test_a_window_larger_than_the_image_is_clipped_not_padded(segmentor):
    images = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    whole = predict_probabilities(segmentor, images)
    slide = predict_probabilities(segmentor, images, mode="slide", window=(64, 64))
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=0)
    # what padding up to the window (the former behaviour) gives instead: a different answer
    with torch.no_grad():
        padded = _whole(segmentor, F.pad(images, (0, 8, 0, 24)))[..., :40, :56]
    assert (padded - whole).abs().max() > 1e-4  # far above float noise (1e-6)


class _DivisibleOnly(TinyNet):
    """A TinyNet that, like a ViT cutting 4-pixel patches, takes only sides divisible by 4."""

    size_divisor = 4

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        assert images.shape[-2] % 4 == 0 and images.shape[-1] % 4 == 0, images.shape
        return super().forward(images)


def test_inputs_are_padded_to_the_size_divisor_and_cropped_back():
    net = _DivisibleOnly().eval()
    images = torch.randn(2, 3, 18, 22, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = _whole(net, F.pad(images, (0, 2, 0, 2)))[..., :18, :22]
    torch.testing.assert_close(predict_probabilities(net, images), expected, atol=1e-6, rtol=0)
    slide = predict_probabilities(net, images, mode="slide", window=(10, 10), stride=(7, 7))
    assert slide.shape == (2, NUM_CLASSES, 18, 22)


def test_backbone_size_divisor_is_a_vit_patch_and_one_for_a_cnn():
    assert Backbone("resnet18").size_divisor == 1
    vit = Backbone("vit_tiny_patch16_224", dynamic_img_size=True, out_indices=[11])
    assert vit.size_divisor == 16
    with pytest.raises(AssertionError, match="divisible by patch size"):
        vit(torch.randn(1, 3, 40, 48))
    segmentor = Segmentor(vit, partial(FCNHead, channels=8), NUM_CLASSES).eval()
    assert segmentor.size_divisor == 16
    probs = predict_probabilities(segmentor, torch.randn(1, 3, 40, 48))
    assert probs.shape == (1, NUM_CLASSES, 40, 48)


def test_inference_settings_take_the_window_from_the_training_crop():
    node = {"mode": "slide", "window": None, "stride": None, "scales": [1.0], "flip": False}
    settings = inference_settings(node, [512, 1024])
    assert settings["window"] == [512, 1024] and settings["stride"] is None
    assert default_stride(settings["window"]) == (341, 682)  # 2/3, the Cityscapes protocol
    assert inference_settings({**node, "window": [64, 96]}, [512, 1024])["window"] == [64, 96]
    with pytest.raises(ValueError, match="inference.window"):
        inference_settings(node, None)
    assert inference_settings(None, [512, 1024]) is None
    assert is_single_whole_pass({**node, "mode": "whole"})
    assert not is_single_whole_pass(node)
    assert not is_single_whole_pass({**node, "mode": "whole", "flip": True})
    assert not is_single_whole_pass({**node, "mode": "whole", "scales": [0.5, 1.0]})


def test_predict_labels_is_the_argmax_of_the_resized_probabilities(images):
    net = TinyNet().eval()
    settings = {"mode": "slide", "window": (8, 8), "flip": True}
    probs = predict_probabilities(net, images, **settings)
    assert torch.equal(predict_labels(net, images, **settings), probs.argmax(1))
    larger = F.interpolate(probs, size=(32, 40), mode="bilinear", align_corners=False)
    labels = predict_labels(net, images, size=(32, 40), **settings)
    assert labels.shape == (2, 32, 40) and torch.equal(labels, larger.argmax(1))
