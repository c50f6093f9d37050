"""Every option of every config group composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from picoseg.data import SegmentationDataModule
from picoseg.models import Backbone
from picoseg.models.pretrained import input_normalization, packaged_weights_file
from picoseg.system import SegmentationSystem

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list[str]:
    """The option names of a config group (its yaml files; ``_*.yaml`` are shared bases that
    the options build on, not options)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


FOLDER = ["dataset.root=/data/mine", "dataset.num_classes=3", "dataset.class_names=[a,b,c]"]
# Dilated and large backbones only instantiate in these tests (no forward pass).
LARGE = {
    "resnet50", "resnet101", "resnet50c", "resnet101c", "hrnet32", "hrnet48",
    "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "vit_small", "vit_base",
}  # fmt: skip


def _build_model(cfg) -> SegmentationSystem:
    model = instantiate(cfg.model)
    assert isinstance(model, SegmentationSystem)
    assert model.num_classes == cfg.dataset.num_classes
    return model


@pytest.mark.parametrize("option", group_options("dataset"))
def test_dataset(compose_config, option):
    cfg = compose_config([f"dataset={option}", *(FOLDER if option == "folder" else [])])
    datamodule = instantiate(cfg.dataset.datamodule)
    assert isinstance(datamodule, SegmentationDataModule)
    assert len(cfg.dataset.class_names) == cfg.dataset.num_classes
    if cfg.dataset.get("palette"):
        assert len(cfg.dataset.palette) == cfg.dataset.num_classes


@pytest.mark.parametrize("option", group_options("backbone"))
def test_backbone(compose_config, option):
    cfg = compose_config([f"backbone={option}"])
    backbone = instantiate(cfg.backbone)
    assert isinstance(backbone, Backbone)
    if cfg.backbone.get("output_stride"):
        assert backbone.reductions[-1] == cfg.backbone.output_stride
    else:  # the model's own: 32 for CNNs and MiT, 16 for ViT/16
        assert backbone.reductions[-1] in (16, 32)
    if option.startswith("hrnet"):
        assert backbone.model.default_cfg["architecture"] == f"hrnet_w{option[5:]}"
    if option not in LARGE:
        model = _build_model(cfg)
        out = model.network(torch.randn(1, 3, 64, 64))
        assert out.logits.shape[1] == cfg.dataset.num_classes


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in ("head", "loss", "sampler", "synthesis", "memory") for o in group_options(g)],
)
def test_model_groups(compose_config, group, option):
    cfg = compose_config([f"{group}={option}"])
    model = _build_model(cfg)
    if group == "loss" and option == "ce":
        assert model.contrast is None and model.projection is None and model.memory is None
    elif group == "memory" and option == "none":
        assert model.memory is None
    elif group == "memory":
        assert model.memory is not None
    if group == "synthesis":
        assert (model.contrast.synthesis is None) == (option == "none")


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in ("optimizer", "scheduler") for o in group_options(g)]
)
def test_optimisation_groups(compose_config, group, option):
    cfg = compose_config([f"{group}={option}"])
    model = _build_model(cfg)
    # what SegmentationSystem.configure_optimizers does with the partials
    optimizer = model.optimizer_factory(model.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    if model.scheduler_factory is not None:
        scheduler = model.scheduler_factory(optimizer=optimizer, total_steps=10)
        for _ in range(5):
            optimizer.step()
            scheduler.step()
        assert 0 < optimizer.param_groups[0]["lr"] < cfg.optimizer.lr


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in ("trainer", "logger", "callbacks") for o in group_options(g)],
)
def test_run_groups(compose_config, group, option):
    cfg = compose_config([f"{group}={option}"])
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    if group == "trainer" and cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # GPU trainers cannot be built without a GPU; check they compose to what they say.
        assert cfg.trainer.precision == "bf16-mixed"
        return
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert isinstance(trainer, L.Trainer)


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in ("experiment", "debug") for o in group_options(g)]
)
def test_experiments(compose_config, group, option):
    cfg = compose_config([f"{group}={option}"])
    if cfg.backbone.pretrained and packaged_weights_file(cfg.backbone.name) is None:
        # timm would download these weights (offline here): build the same model without them.
        cfg = compose_config([f"{group}={option}", "backbone.pretrained=false"])
    _build_model(cfg)
    instantiate(cfg.dataset.datamodule)


PAPER_RECIPES = [o for o in group_options("experiment") if o.endswith(("_cityscapes", "_ade20k"))]


@pytest.mark.parametrize("option", PAPER_RECIPES)
def test_paper_recipes_start_from_imagenet_weights(compose_config, option):
    cfg = compose_config([f"experiment={option}"])
    assert cfg.backbone.pretrained is True
    # A pinned pretrained tag that timm knows, so the download is the paper's weights.
    assert cfg.backbone.name in timm.list_pretrained(cfg.backbone.name)
    mean, std = input_normalization(cfg.backbone.name)
    assert list(cfg.dataset.datamodule.mean) == list(mean)
    assert list(cfg.dataset.datamodule.std) == list(std)


def test_design_card_names(compose_config):
    cfg = compose_config(["backbone=hrnet48"])
    assert cfg.backbone.name == "hrnet_w48"


def test_evaluate_config_composes(compose_config):
    cfg = compose_config(["ckpt_path=x.ckpt"], config_name="evaluate")
    assert cfg.ckpt_path == "x.ckpt" and cfg.get("dataset") is None
    cfg = compose_config(["ckpt_path=x.ckpt", "dataset=scenes"], config_name="evaluate")
    assert cfg.dataset.num_classes == 9


def test_inference_nodes_compose_and_match(compose_config):
    slide = ["inference.mode=slide", "inference.scales=[0.5,0.75,1.0,1.25,1.5,1.75]"]
    evaluate = compose_config(["ckpt_path=x.ckpt", *slide, "inference.flip=true"], "evaluate")
    assert evaluate.inference.mode == "slide" and evaluate.inference.flip is True
    assert len(evaluate.inference.scales) == 6
    base = compose_config(["ckpt_path=x.ckpt"], config_name="evaluate").inference
    predict = compose_config(["ckpt_path=x.ckpt", "input=in", "output=out"], "predict")
    assert predict.inference == base
    assert compose_config([]).inference == base  # validation during training reads the same
    # the window is the checkpoint's training crop unless given
    assert base.mode == "whole" and base.window is None and base.stride is None
    assert base.flip is False


@pytest.mark.parametrize(
    "option", [o for o in group_options("experiment") if o.endswith(("_cityscapes", "_ade20k"))]
)
def test_paper_recipes_state_their_test_protocol(compose_config, option):
    inference = compose_config([f"experiment={option}"]).inference
    assert inference.mode == ("slide" if option.startswith("segmenter") else "whole")


@pytest.mark.parametrize("option", [o for o in group_options("experiment") if "ablation" in o])
def test_ablation_sweeps_compose_for_every_value(compose_config, option):
    cfg = compose_config([f"experiment={option}"])
    params = dict(cfg.hydra.sweeper.params)
    assert params, f"experiment/{option}.yaml defines no sweep"
    for key, values in params.items():
        for value in str(values).split(","):
            swept = compose_config([f"experiment={option}", f"{key}={value}"])
            model = _build_model(swept)
            if key == "loss":
                assert (model.contrast is None) == (value == "ce")
                if value != "ce":
                    assert model.contrast.pixel_to_pixel == (value != "pico_region")
                    assert model.contrast.pixel_to_region == (value != "pico_pixel")
            elif key == "memory":
                assert (model.memory is None) == (value == "none")
            elif key == "synthesis":
                assert (model.contrast.synthesis is None) == (value == "none")
            elif key == "sampler":
                assert model.contrast.sampler.anchor_strategy == swept.sampler.anchor_strategy
            elif key == "memory.pixel_size":
                assert model.memory.pixel_size == model.memory.region_size == int(value)
            elif key == "model.contrast_weight":
                assert model.contrast_weight == float(value)
            elif key == "model.contrast.temperature":
                assert model.contrast.temperature == float(value)
            else:
                raise AssertionError(f"no check for swept key {key}")


def test_switching_off_a_component_sized_by_the_experiment(compose_config):
    # scenes_pico sizes the memory and the synthesis; the command line may still turn them off.
    cfg = compose_config(["experiment=scenes_pico", "memory=none", "synthesis=none"])
    # Off inside the group: the experiment's sizes land in the `none` node, which builds nothing.
    assert cfg.memory._target_ == cfg.synthesis._target_ == "picoseg.contrast.disabled.disabled"
    assert cfg.memory.pixel_size == 2000
    model = _build_model(cfg)
    assert model.memory is None and model.contrast.synthesis is None
    cfg = compose_config(["experiment=scenes_pico", "loss=ce"])
    assert _build_model(cfg).memory is None
    # Switched on, the experiment's sizes are used.
    cfg = compose_config(["experiment=scenes_pico"])
    model = _build_model(cfg)
    assert model.memory.pixel_size == 2000 and model.contrast.synthesis is not None


def test_experiments_override_the_primary_config(compose_config):
    # train.yaml lists _self_ first, so experiment files can set its own keys (model.*).
    assert compose_config([]).model.backbone_lr_mult == 1.0
    for option in ("segformer_b2_ade20k", "maskformer_r101_cityscapes"):
        cfg = compose_config([f"experiment={option}"])
        assert cfg.model.backbone_lr_mult == 0.1
    cfg = compose_config(["experiment=maskformer_r101_ade20k"])
    assert cfg.model.criterion._target_.endswith("MaskClassificationLoss")
    assert cfg.backbone.output_stride is None and cfg.trainer.max_steps == 160000


def test_hparams_search_space_builds_at_its_bounds(compose_config):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper")
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = compose_config(["hparams_search=optuna"]).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    parser = OverridesParser.create()
    bounds = {}
    for key, text in sweeper.params.items():
        sweep = parser.parse_override(f"{key}={text}").value()
        values = list(sweep.list) if hasattr(sweep, "list") else [sweep.start, sweep.end]
        bounds[key] = (min(values), max(values))
    assert set(bounds) == {"model.contrast_weight", "model.contrast.temperature", "optimizer.lr"}
    for end in (0, 1):
        chosen = {key: pair[end] for key, pair in bounds.items()}
        cfg = compose_config(["hparams_search=optuna", *(f"{k}={v}" for k, v in chosen.items())])
        model = _build_model(cfg)
        assert model.contrast_weight == chosen["model.contrast_weight"]
        assert model.contrast.temperature == chosen["model.contrast.temperature"]
        optimizer = model.optimizer_factory(model.parameters())
        assert optimizer.param_groups[0]["lr"] == chosen["optimizer.lr"]


#: What each option of a group with a shared base (``_base.yaml``) may set itself.
OWN_KEYS = {
    "sampler": {"anchor_strategy", "key_strategy"},
    "synthesis": {"num_neg_neg", "num_neg_anchor"},
    "memory": {"use_pixel", "use_region"},
}


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in OWN_KEYS for o in group_options(g) if o != "none"],
)
def test_options_differ_from_their_group_s_shared_base_only_in_their_own_keys(
    compose_config, group, option
):
    base = OmegaConf.load(CONF_DIR / group / "_base.yaml")
    composed = compose_config([f"{group}={option}"])[group]
    for key in base:
        if key not in OWN_KEYS[group]:
            assert OmegaConf.to_container(composed)[key] == OmegaConf.to_container(base)[key], key
    assert set(composed) == set(base)
    own = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    assert set(own) == {"defaults"} | OWN_KEYS[group]
