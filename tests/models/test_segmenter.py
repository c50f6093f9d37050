import pytest
import torch
import torch.nn.functional as F

from picoseg.models import Backbone, Segmentor
from picoseg.models.heads.segmenter import SegmenterHead


@pytest.fixture(scope="module")
def vit_small():
    return Backbone("vit_small_patch16_224", dynamic_img_size=True, out_indices=(2, 5, 8, 11))


def test_shapes_and_backward_on_vit_small(vit_small):
    torch.manual_seed(0)
    net = Segmentor(vit_small, SegmenterHead, num_classes=5)
    out = net(torch.randn(2, 3, 64, 64))
    # Segmenter-S: d_model is the encoder width, heads of width 64
    assert net.head.channels == net.feature_channels == 384 and net.head.num_heads == 6
    assert net.head.reduction == 16
    assert out.logits.shape == (2, 5, 4, 4)
    assert out.features.shape == (2, 384, 4, 4)
    torch.testing.assert_close(out.features.norm(dim=1), torch.ones(2, 4, 4))
    out.logits.square().mean().backward()
    first = net.backbone.model.model.patch_embed.proj.weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    # no 1x1 classifier: every parameter of the head takes part (nothing unused for DDP)
    assert net.head.classifier is None
    assert all(p.grad is not None for p in net.head.parameters())


def test_builds_and_runs_on_resnet18_last_level():
    backbone = Backbone("resnet18")
    head = SegmenterHead(backbone.channels, backbone.reductions, num_classes=3, num_layers=1)
    assert head.channels == 512 and head.num_heads == 8 and head.reduction == 32
    out = head(backbone(torch.randn(1, 3, 64, 96)))
    assert out.logits.shape == (1, 3, 2, 3) and out.features.shape == (1, 512, 2, 3)


def test_masks_are_layernormed_products_of_normalised_embeddings():
    torch.manual_seed(0)
    num_classes = 7
    head = SegmenterHead([32], [16], num_classes, d_model=24, num_heads=3).eval()
    with torch.no_grad():
        head.mask_norm.weight.normal_()
        head.mask_norm.bias.normal_()
    captured = {}

    def keep(name):
        return lambda module, args, output: captured.__setitem__(name, (args[0], output))

    head.blocks[0].register_forward_hook(keep("block"))
    head.project_patches.register_forward_hook(keep("patches"))
    head.project_classes.register_forward_hook(keep("classes"))
    x = torch.randn(2, 32, 3, 5)
    out = head([x])
    tokens, _ = captured["block"]
    assert tokens.shape == (2, 3 * 5 + num_classes, 24)  # patch tokens then one per class
    torch.testing.assert_close(tokens[:, 15:], head.class_tokens.expand(2, -1, -1))
    patches = F.normalize(captured["patches"][1], dim=-1)  # (2, 15, 24)
    classes = F.normalize(captured["classes"][1], dim=-1)  # (2, 7, 24)
    masks = torch.zeros(2, 15, num_classes)
    for b in range(2):
        for n in range(15):
            for k in range(num_classes):
                masks[b, n, k] = (patches[b, n] * classes[b, k]).sum()
    mean = masks.mean(-1, keepdim=True)
    var = masks.var(-1, unbiased=False, keepdim=True)
    logits = (masks - mean) / torch.sqrt(var + head.mask_norm.eps)
    logits = logits * head.mask_norm.weight + head.mask_norm.bias
    torch.testing.assert_close(out.logits, logits.transpose(1, 2).reshape(2, num_classes, 3, 5))
    torch.testing.assert_close(out.features, patches.transpose(1, 2).reshape(2, 24, 3, 5))


def test_permuting_class_tokens_permutes_the_classes():
    # No position embedding in the decoder: attention is permutation-equivariant over tokens.
    torch.manual_seed(0)
    head = SegmenterHead([16], [16], num_classes=4, d_model=16, num_heads=2).eval()
    x = torch.randn(1, 16, 4, 4)
    before = head([x]).logits
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        head.class_tokens.copy_(head.class_tokens[:, order])
    torch.testing.assert_close(head([x]).logits, before[:, order])


def test_heads_must_divide_d_model():
    with pytest.raises(ValueError, match="d_model=30.*num_heads=4"):
        SegmenterHead([16], [16], num_classes=2, d_model=30, num_heads=4)
