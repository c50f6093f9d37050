import pytest
import timm
import torch

from picoseg.models import Backbone, load_backbone_weights


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {}),
        ("resnet18", {"output_stride": 8}),
        ("mobilenetv3_large_100", {}),
        ("hrnet_w18_small", {}),
    ],
)
def test_metadata_matches_real_outputs(name, kwargs):
    backbone = Backbone(name, **kwargs).eval()
    levels = backbone(torch.randn(1, 3, 64, 96))
    assert len(levels) == len(backbone.channels) == len(backbone.reductions)
    for x, channels, reduction in zip(levels, backbone.channels, backbone.reductions, strict=True):
        assert x.shape[1] == channels
        assert x.shape[-2:] == (64 // reduction, 96 // reduction)


def test_hrnet_returns_all_four_branches_not_classification_features():
    backbone = Backbone("hrnet_w18_small")
    # stem + four branches at strides 4..32 with HRNet's doubling widths
    assert backbone.reductions == [2, 4, 8, 16, 32]
    assert backbone.channels[1:] == [16, 32, 64, 128]


def test_output_stride_8_dilates_last_stages():
    assert Backbone("resnet18", output_stride=8).reductions == [2, 4, 8, 8, 8]


def test_local_weights_file_is_loaded(tmp_path):
    full = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        full.conv1.weight.fill_(0.25)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    backbone = Backbone("resnet18", weights_path=str(path))
    assert torch.equal(backbone.model.conv1.weight, full.conv1.weight)
    assert torch.equal(backbone.model.layer4[1].bn2.running_var, full.layer4[1].bn2.running_var)


def test_wrong_weights_file_names_the_file(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv2_100").state_dict(), path)
    with pytest.raises(ValueError, match="mobilenet.pth.*do not fit"):
        Backbone("resnet18", weights_path=str(path))
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_backbone_weights(Backbone("resnet18").model, tmp_path / "nothere.pth")
