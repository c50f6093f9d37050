import pytest
import timm
import torch
from safetensors.torch import save_file

from picoseg.models import Backbone, load_backbone_weights

# ViT-S/16 as conf/backbone/vit_small.yaml builds it: blocks 3, 6, 9, 12, any input size.
VIT = {"dynamic_img_size": True, "out_indices": (2, 5, 8, 11)}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {}),
        ("resnet18", {"output_stride": 8}),
        ("mobilenetv3_large_100", {}),
        ("hrnet_w18_small", {}),
        ("pvt_v2_b0", {}),
        ("vit_small_patch16_224", VIT),
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


def test_mit_stages_are_pvt_v2_strides_and_widths():
    backbone = Backbone("pvt_v2_b0")
    assert backbone.reductions == [4, 8, 16, 32]
    assert backbone.channels == [32, 64, 160, 256]  # MiT-B0's widths


@pytest.mark.parametrize("size", [(64, 64), (48, 112)])
def test_vit_levels_are_block_outputs_without_class_token(size):
    backbone = Backbone("vit_small_patch16_224", **VIT).eval()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        levels = backbone(images)
        # Reference: run timm's ViT by hand and reshape the patch tokens of blocks 3, 6, 9, 12.
        vit = backbone.model.model
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        expected = []
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if i in VIT["out_indices"]:
                patches = tokens[:, vit.num_prefix_tokens :]
                grid = (size[0] // 16, size[1] // 16)
                expected.append(patches.transpose(1, 2).reshape(2, 384, *grid))
    assert backbone.reductions == [16] * 4 and backbone.channels == [384] * 4
    assert len(levels) == 4
    for level, reference in zip(levels, expected, strict=True):
        torch.testing.assert_close(level, reference)


def test_pvt_v2_local_weights_file_is_loaded(tmp_path):
    full = timm.create_model("pvt_v2_b0", pretrained=False)
    with torch.no_grad():
        full.stages[0].blocks[0].attn.q.weight.fill_(0.5)
        full.stages[3].norm.bias.fill_(-1.0)
    path = tmp_path / "pvt_v2_b0.pth"
    torch.save(full.state_dict(), path)
    backbone = Backbone("pvt_v2_b0", weights_path=str(path))
    # timm's wrapper flattens ``stages.0`` into ``stages_0``.
    assert torch.equal(
        backbone.model.stages_0.blocks[0].attn.q.weight, full.stages[0].blocks[0].attn.q.weight
    )
    assert torch.equal(backbone.model.stages_3.norm.bias, full.stages[3].norm.bias)
    assert load_backbone_weights(backbone.model, path) == ["head.bias", "head.weight"]


def test_vit_local_weights_leave_only_classifier_and_final_norm_unused(tmp_path):
    full = timm.create_model("vit_small_patch16_224", img_size=64, depth=3)
    with torch.no_grad():
        full.pos_embed.fill_(0.125)
        full.blocks[2].mlp.fc2.weight.fill_(0.25)
    path = tmp_path / "vit.safetensors"
    save_file(full.state_dict(), str(path))
    kwargs = {"img_size": 64, "depth": 3, "out_indices": (0, 2), "dynamic_img_size": True}
    backbone = Backbone("vit_small_patch16_224", weights_path=str(path), **kwargs)
    assert torch.equal(backbone.model.model.pos_embed, full.pos_embed)
    assert torch.equal(backbone.model.model.blocks[2].mlp.fc2.weight, full.blocks[2].mlp.fc2.weight)
    # the levels are taken before the final norm, which timm's wrapper replaces by Identity
    unused = load_backbone_weights(backbone.model, path)
    assert unused == ["head.bias", "head.weight", "norm.bias", "norm.weight"]


def test_extra_blocks_inside_kept_modules_are_an_error(tmp_path):
    # resnet34 holds every resnet18 key with the same shape plus extra blocks: not a fit.
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet34.pth.*unexpected keys \['layer1.2"):
        Backbone("resnet18", weights_path=str(path))
    # while the stages a features model leaves out (here layer3, layer4) may go unused
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    unused = load_backbone_weights(Backbone("resnet18", out_indices=(1, 2)).model, path)
    assert {k.split(".")[0] for k in unused} == {"fc", "layer3", "layer4"}


def test_vit_final_norm_levels_are_the_normed_block_outputs_and_the_last_is_the_encoder_output():
    backbone = Backbone("vit_small_patch16_224", final_norm=True, **VIT).eval()
    with torch.no_grad():
        vit = backbone.model.model
        vit.norm.weight.uniform_(0.5, 1.5)  # not the identity-like initial affine
        vit.norm.bias.uniform_(-0.5, 0.5)
        images = torch.randn(2, 3, 48, 64)
        levels = backbone(images)
        # Reference 1: timm's own forward of the full encoder, final norm included.
        encoded = vit.forward_features(images)[:, vit.num_prefix_tokens :]
        # Reference 2: blocks by hand, each selected output through the same norm.
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        expected = []
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if i in VIT["out_indices"]:
                patches = vit.norm(tokens)[:, vit.num_prefix_tokens :]
                expected.append(patches.transpose(1, 2).reshape(2, 384, 3, 4))
    assert backbone.channels == [384] * 4 and backbone.reductions == [16] * 4
    for level, reference in zip(levels, expected, strict=True):
        torch.testing.assert_close(level, reference)
    torch.testing.assert_close(levels[-1], encoded.transpose(1, 2).reshape(2, 384, 3, 4))


def test_vit_final_norm_loads_the_norm_weights_and_is_refused_for_other_models(tmp_path):
    full = timm.create_model("vit_small_patch16_224", img_size=64, depth=3)
    with torch.no_grad():
        full.norm.weight.fill_(0.75)
    path = tmp_path / "vit.pth"
    torch.save(full.state_dict(), path)
    kwargs = {"img_size": 64, "depth": 3, "out_indices": (0, 2), "dynamic_img_size": True}
    backbone = Backbone("vit_small_patch16_224", weights_path=str(path), final_norm=True, **kwargs)
    assert torch.equal(backbone.model.model.norm.weight, full.norm.weight)
    assert load_backbone_weights(backbone.model, path) == ["head.bias", "head.weight"]
    with pytest.raises(ValueError, match="resnet18: final_norm=True is for plain ViTs"):
        Backbone("resnet18", final_norm=True)
