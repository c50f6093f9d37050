import functools
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from picoseg.mask_classification import MaskClassificationLoss
from picoseg.models import Backbone, ProjectionHead, Segmentor
from picoseg.models.heads.maskformer import MaskFormerHead, sine_positional_encoding
from picoseg.system import SegmentationSystem, masked_cross_entropy

TINY = {
    "conv_dim": 32,
    "mask_dim": 32,
    "hidden_dim": 32,
    "num_queries": 10,
    "num_layers": 2,
    "num_heads": 4,
    "ffn_dim": 64,
}


def _network(**kwargs) -> Segmentor:
    torch.manual_seed(0)
    return Segmentor(
        Backbone("resnet18"), functools.partial(MaskFormerHead, **{**TINY, **kwargs}), 3
    )


@pytest.fixture(scope="module")
def network() -> Segmentor:
    return _network()


def test_output_shapes_and_strides(network):
    out = network(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 3, 16, 16)
    assert out.features.shape == (2, 32, 16, 16)
    assert out.class_logits.shape == (2, 10, 4)
    assert out.mask_logits.shape == (2, 10, 16, 16)
    assert out.aux_logits == {}
    head = network.head
    assert head.reduction == 4 == 64 // out.logits.shape[-1]
    assert head.in_reductions == [4, 8, 16, 32]
    assert network.feature_channels == 32 == out.features.shape[1]
    # The queries attend to the coarsest level read: resnet18's stride-32 level, 512 channels.
    assert head.input_proj.in_channels == network.backbone.channels[4] == 512


def test_deep_supervision_outputs_every_earlier_layer_in_training_only():
    network = _network(num_layers=3)
    images = torch.randn(1, 3, 64, 64)
    out = network(images)
    assert len(out.aux_mask_outputs) == 2
    for class_logits, mask_logits in out.aux_mask_outputs:
        assert class_logits.shape == (1, 10, 4) and mask_logits.shape == (1, 10, 16, 16)
        assert not torch.allclose(mask_logits, out.mask_logits)
    network.eval()
    assert network(images).aux_mask_outputs == []
    assert _network(deep_supervision=False)(images).aux_mask_outputs == []
    with pytest.raises(ValueError, match="num_layers >= 1, got 0"):
        _network(num_layers=0)


def test_levels_are_read_finest_first_whatever_the_order():
    backbone = Backbone("resnet18")
    head = MaskFormerHead(backbone.channels, backbone.reductions, 3, in_index=[-1, 2], **TINY)
    assert head.in_index == [2, 4] and head.reduction == 8
    out = head(backbone(torch.randn(1, 3, 64, 64)))
    assert out.mask_logits.shape == (1, 10, 8, 8)


def test_logits_are_the_papers_semantic_inference(network):
    network.eval()
    with torch.no_grad():
        out = network(torch.randn(2, 3, 64, 64))
    network.train()
    probs = out.class_logits.softmax(-1)
    scores = torch.zeros_like(out.logits)
    for b in range(2):
        for c in range(3):
            for q in range(10):
                scores[b, c] += probs[b, q, c] * out.mask_logits[b, q].sigmoid()
    torch.testing.assert_close(out.logits.softmax(1), scores / scores.sum(1, keepdim=True))
    assert torch.equal(out.logits.argmax(1), scores.argmax(1))


def test_sine_positional_encoding_values():
    pos = sine_positional_encoding(2, 3, 8, torch.device("cpu"))
    assert pos.shape == (6, 8)
    # pixel (row 1, col 2): row angle (1.5 / 2) * 2 pi, column angle (2.5 / 3) * 2 pi; base 10000
    row, col = 1.5 / 2 * 2 * torch.pi, 2.5 / 3 * 2 * torch.pi
    expected = [
        *(torch.tensor([row, row / 100]).sin()), *(torch.tensor([row, row / 100]).cos()),
        *(torch.tensor([col, col / 100]).sin()), *(torch.tensor([col, col / 100]).cos()),
    ]  # fmt: skip
    torch.testing.assert_close(pos[1 * 3 + 2], torch.stack(expected))
    with pytest.raises(ValueError, match="divisible by 4, got 6"):
        sine_positional_encoding(2, 2, 6, torch.device("cpu"))


def test_criterion_gradient_reaches_every_parameter():
    network = _network()
    labels = torch.randint(0, 3, (2, 64, 64))
    labels[0, :8] = 255
    terms = MaskClassificationLoss(3)(network(torch.randn(2, 3, 64, 64)), labels)
    sum(terms.values()).backward()
    missing = [n for n, p in network.named_parameters() if p.grad is None]
    assert missing == []
    assert network.backbone.model.conv1.weight.grad.abs().sum() > 0


def _system(network, **kwargs) -> tuple[SegmentationSystem, dict]:
    system = SegmentationSystem(
        network,
        3,
        ["a", "b", "c"],
        functools.partial(torch.optim.SGD, lr=0.1),
        criterion=MaskClassificationLoss(3),
        **kwargs,
    )
    logged: dict = {}
    system.log = lambda name, value, **_: logged.__setitem__(name, value)
    optimizer = torch.optim.SGD(system.parameters(), lr=0.1)
    system._trainer = SimpleNamespace(optimizers=[optimizer], global_step=5, world_size=1)
    return system, logged


def _batch():
    torch.manual_seed(1)
    labels = torch.randint(0, 3, (2, 64, 64))
    labels[1, 10:20] = 255
    return {"image": torch.randn(2, 3, 64, 64), "mask": labels}


def test_training_step_loss_is_the_sum_of_the_criterion_terms():
    # Training mode (deep supervision on) without dropout: batch-norm uses the batch statistics,
    # so the step and the reference below see the same function.
    system, logged = _system(_network(dropout=0.0))
    batch = _batch()
    loss = system.training_step(batch, 0)["loss"]
    with torch.no_grad():
        out = system.network(batch["image"])
        terms = MaskClassificationLoss(3)(out, batch["mask"])
    assert set(terms) == {
        "mask_ce", "mask_focal", "mask_dice", "aux_mask_ce", "aux_mask_focal", "aux_mask_dice"
    }  # fmt: skip
    torch.testing.assert_close(loss, sum(terms.values()))
    for name, value in terms.items():
        torch.testing.assert_close(logged[f"train/{name}"], value)
    ce = masked_cross_entropy(out.logits, batch["mask"], 255)
    torch.testing.assert_close(logged["train/ce"], ce)
    assert not logged["train/ce"].requires_grad and loss.requires_grad


class _RecordingContrast:
    """A stand-in for PixelContrastLoss: mean squared projection, recording its inputs."""

    def __call__(self, projections, labels, predictions, memory):
        self.labels, self.predictions = labels, predictions
        loss = projections.pow(2).mean()
        zero = torch.zeros(())
        return SimpleNamespace(
            loss=loss, pixel_loss=loss, region_loss=zero, num_anchors=torch.tensor(4)
        )


def test_training_step_adds_the_contrast_on_the_per_pixel_embeddings():
    contrast = _RecordingContrast()
    system, logged = _system(
        _network(),
        projection=functools.partial(ProjectionHead, dim=8),
        contrast=contrast,
        contrast_weight=0.5,
    )
    system.eval()
    batch = _batch()
    loss = system.training_step(batch, 0)["loss"]
    with torch.no_grad():
        out = system.network(batch["image"])
        terms = MaskClassificationLoss(3)(out, batch["mask"])
        nce = system.projection(out.features).pow(2).mean()
    assert system.projection.layers[0].in_channels == 32
    torch.testing.assert_close(loss, sum(terms.values()) + 0.5 * nce)
    assert torch.equal(contrast.predictions, out.logits.argmax(1))
    assert contrast.labels.shape == (2, 16, 16)


def test_maskformer_config_sets_head_and_criterion(compose_config):
    cfg = compose_config(
        ["head=maskformer", "dataset.num_classes=4", "dataset.class_names=[a,b,c,d]"]
    )
    model = instantiate(cfg.model)
    assert isinstance(model.criterion, MaskClassificationLoss)
    assert model.criterion.num_classes == 4
    assert model.criterion.ignore_index == cfg.dataset.ignore_index
    head = model.network.head
    assert isinstance(head, MaskFormerHead) and head.reduction == 4
    assert head.class_head.out_features == 5 and head.query_embed.num_embeddings == 100
    assert len(head.layers) == 6 and model.projection.layers[0].in_channels == 256
    assert instantiate(compose_config([]).model).criterion is None
