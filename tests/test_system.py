import dataclasses
import functools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from picoseg.contrast.grid_labels import resize_labels
from picoseg.models import Segmentor
from picoseg.optim import poly_schedule
from picoseg.system import masked_cross_entropy


def test_resize_labels_is_nearest_and_keeps_ignore():
    labels = torch.tensor([[[0, 0, 3, 3], [0, 0, 3, 3], [255, 255, 1, 1], [255, 255, 1, 1]]])
    small = resize_labels(labels, (2, 2))
    assert small.tolist() == [[[0, 3], [255, 1]]]
    # the stride is taken from the requested size, whatever it is
    assert resize_labels(labels, (4, 2)).tolist() == [[[0, 3], [0, 3], [255, 1], [255, 1]]]


def test_masked_cross_entropy_matches_mean_over_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6)
    labels = torch.randint(0, 4, (2, 6, 6))
    labels[0, :3] = 255
    loss = masked_cross_entropy(logits, labels, 255)
    valid = labels != 255
    log_probs = logits.log_softmax(1).permute(0, 2, 3, 1)[valid]
    expected = -log_probs.gather(1, labels[valid][:, None]).mean()
    torch.testing.assert_close(loss, expected)


def test_masked_cross_entropy_is_zero_not_nan_when_all_ignored():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((1, 4, 4), 255), 255)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_masked_cross_entropy_upsamples_logits_to_labels():
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.randint(0, 3, (1, 8, 8))
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        masked_cross_entropy(logits, labels, 255), F.cross_entropy(up, labels)
    )


def test_poly_schedule_values():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = poly_schedule(opt, total_steps=10, power=2.0, warmup_steps=0)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.25)
    assert lrs[10] == pytest.approx(0.0)


def test_inference_network_has_no_projection_head(tiny_system):
    ce_only = tiny_system()
    assert ce_only.projection is None
    with_projection = tiny_system(projection_dim=8, contrast=torch.nn.Identity())
    assert with_projection.projection.layers[0].in_channels == 16
    n_network = sum(p.numel() for p in ce_only.network.parameters())
    assert sum(p.numel() for p in with_projection.network.parameters()) == n_network
    assert sum(p.numel() for p in with_projection.parameters()) > n_network


class _FeaturesOnly(torch.nn.Module):
    """A network written against the older contract: ``feature_channels`` and nothing else."""

    def __init__(self, network: Segmentor) -> None:
        super().__init__()
        self.inner = network

    @property
    def feature_channels(self) -> int:
        return self.inner.feature_channels

    def forward(self, images):
        return dataclasses.replace(self.inner(images), contrast_features=None)


def test_a_network_without_contrast_channels_projects_its_features(tiny_network, tiny_system):
    net = tiny_network(channels=12, contrast_input="fused")
    assert net.contrast_channels != net.feature_channels == 12
    own = tiny_system(net, projection_dim=8, contrast=torch.nn.Identity())
    assert own.projection.layers[0].in_channels == net.contrast_channels
    wrapped = tiny_system(_FeaturesOnly(net), projection_dim=8, contrast=torch.nn.Identity())
    assert wrapped.projection.layers[0].in_channels == 12
    out = wrapped.network(torch.randn(1, 3, 64, 64))
    assert wrapped.projection(out.projection_input).shape[:2] == (1, 8)


def test_class_names_must_match_num_classes(tiny_network, tiny_system):
    net = tiny_network(channels=8)
    with pytest.raises(ValueError, match="class_names has 2 entries but num_classes is 3"):
        tiny_system(net, class_names=["a", "b"])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_validation_with_an_inference_setting_keeps_the_confusion(tiny_system):
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))}
    system = tiny_system().eval()
    with torch.no_grad():
        system.validation_step(batch, 0)
        system.on_validation_epoch_end()
        default = system.last_val_scores
        system.inference = {"mode": "slide", "window": [32, 32], "stride": [16, 16]}
        system.validation_step(batch, 0)
        system.on_validation_epoch_end()
    confusion = system.last_val_scores["confusion"]
    assert confusion.shape == (3, 3) and int(confusion.sum()) == 2 * 32 * 32
    assert torch.equal(confusion, default["confusion"])


def test_backbone_lr_mult_makes_slower_backbone_groups_that_the_schedule_keeps(tiny_system):
    from picoseg.optim import poly_schedule

    system = tiny_system(projection_dim=8, contrast=torch.nn.Identity(), backbone_lr_mult=0.1)
    optimizer = system.configure_optimizers()
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["backbone", "backbone_no_decay", "rest", "rest_no_decay"]
    assert [g["lr"] for g in groups.values()] == pytest.approx([0.01, 0.01, 0.1, 0.1])
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    backbone = ids(groups["backbone"]["params"]) | ids(groups["backbone_no_decay"]["params"])
    rest = ids(groups["rest"]["params"]) | ids(groups["rest_no_decay"]["params"])
    assert backbone == ids(system.network.backbone.parameters())
    assert rest == ids(system.parameters()) - backbone
    assert ids(system.projection.parameters()) <= rest
    scheduler = poly_schedule(optimizer, total_steps=4, power=1.0)
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0075] * 2 + [0.075] * 2)


def test_biases_norms_and_embeddings_take_no_weight_decay(tiny_system):
    system = tiny_system(projection_dim=8, contrast=torch.nn.Identity())
    system.optimizer_factory = functools.partial(torch.optim.AdamW, lr=0.1, weight_decay=0.05)
    decay, no_decay = system.configure_optimizers().param_groups
    assert (decay["name"], decay["weight_decay"]) == ("decay", 0.05)
    assert (no_decay["name"], no_decay["weight_decay"]) == ("no_decay", 0.0)
    names = {id(p): n for n, p in system.named_parameters()}
    expected = {  # written out by kind: every bias and every norm's weight
        n
        for module_name, module in system.named_modules()
        for kind, p in module.named_parameters(recurse=False)
        if (n := f"{module_name}.{kind}") and (kind == "bias" or "Norm" in type(module).__name__)
    }
    assert {names[id(p)] for p in no_decay["params"]} == expected
    assert "network.backbone.model.conv1.weight" in {names[id(p)] for p in decay["params"]}
    system.decay_norm_and_bias = True  # the old behaviour: one group, decay everywhere
    (only,) = system.configure_optimizers().param_groups
    assert only["name"] == "all" and only["weight_decay"] == 0.05


def test_vit_position_embedding_and_class_token_take_no_weight_decay():
    import timm

    from picoseg.optim import no_weight_decay_names

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    names = no_weight_decay_names(vit)
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= names
    assert not {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} & names
    matrices = {n for n, p in vit.named_parameters() if p.ndim > 1}
    assert names & matrices == {"pos_embed", "cls_token"}


def test_compile_wraps_only_backbone_and_head_when_fitting_and_keeps_outputs(tiny_system):
    graphs = []

    def counting_backend(graph_module, example_inputs):  # an eager backend that counts graphs
        graphs.append(graph_module)
        return graph_module.forward

    torch.manual_seed(0)
    system = tiny_system(
        projection_dim=8,
        contrast=torch.nn.Identity(),
        compile=True,
        compile_backend=counting_backend,
    ).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = system.network(images)
    names = list(system.state_dict())
    system.setup("validate")  # evaluation does not compile
    assert system.network.backbone._compiled_call_impl is None
    system.setup("fit")
    try:
        assert system.network.backbone._compiled_call_impl is not None
        assert system.network.head._compiled_call_impl is not None
        assert system.network._compiled_call_impl is None
        assert system.projection._compiled_call_impl is None
        with torch.no_grad():
            compiled = system.network(images)
        assert graphs  # dynamo really traced the modules
        torch.testing.assert_close(compiled.logits, expected.logits)
        torch.testing.assert_close(compiled.features, expected.features)
        assert list(system.state_dict()) == names  # checkpoints keep their parameter names
    finally:
        torch._dynamo.reset()
    with pytest.raises(ValueError, match="compile=False"):
        tiny_system().compile_network()


@pytest.mark.parametrize("mode", ["nearest", "center", "pure"])
def test_contrast_labels_follow_label_resize(mode, tiny_system):
    # The labels the contrast and the memory see are the grid labels of the chosen mode; the
    # loss receives exactly those (a recording stand-in for the loss).
    seen = {}

    def record(projections, labels, predictions, memory):
        seen["labels"] = labels
        return SimpleNamespace(loss=projections.sum() * 0)

    system = tiny_system(projection_dim=8, contrast=record, label_resize=mode)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[:, :, :9] = 255
    out = system.network(images)
    _, projections, embedding_labels = system.contrast_term(out, labels)
    expected = resize_labels(labels, projections.shape[-2:], mode)
    assert torch.equal(embedding_labels, expected) and torch.equal(seen["labels"], expected)
    if mode == "pure":  # random labels: nearly every 4 x 4 cell mixes classes
        assert (expected == 255).float().mean() > 0.9


def test_unknown_label_resize_is_an_error(tiny_system):
    with pytest.raises(ValueError, match="label_resize='top_left'"):
        tiny_system(label_resize="top_left")
