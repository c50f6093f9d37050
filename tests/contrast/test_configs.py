"""Every sampler / synthesis / memory option composes and instantiates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from picoseg.contrast import MemoryBank, NegativeSynthesis, PixelSampler

CONF = Path(__file__).resolve().parents[2] / "conf"
STUB = {"dataset": {"num_classes": 7, "ignore_index": 250}, "model": {"projection": {"dim": 32}}}

EXPECTED = {
    ("sampler", "random"): (PixelSampler, {"anchor_strategy": "random", "key_strategy": "random"}),
    ("sampler", "hardest"): (
        PixelSampler,
        {"anchor_strategy": "random", "key_strategy": "hardest"},
    ),
    ("sampler", "semi_hard"): (
        PixelSampler,
        {"anchor_strategy": "random", "key_strategy": "semi_hard", "semi_hard_fraction": 0.1},
    ),
    ("sampler", "seg_aware"): (
        PixelSampler,
        {"anchor_strategy": "seg_aware", "key_strategy": "semi_hard", "max_anchors": 1024},
    ),
    ("synthesis", "none"): (None, {}),
    ("synthesis", "neg_neg"): (NegativeSynthesis, {"num_neg_neg": 64, "num_neg_anchor": 0}),
    ("synthesis", "neg_anchor"): (
        NegativeSynthesis,
        {"num_neg_neg": 0, "num_neg_anchor": 64, "neg_anchor_mix": (0.0, 0.5)},
    ),
    ("synthesis", "both"): (NegativeSynthesis, {"num_neg_neg": 64, "num_neg_anchor": 64}),
    ("memory", "none"): (None, {}),
    ("memory", "pixel"): (MemoryBank, {"use_pixel": True, "use_region": False}),
    ("memory", "region"): (MemoryBank, {"use_pixel": False, "use_region": True}),
    ("memory", "pixel_region"): (
        MemoryBank,
        {"use_pixel": True, "use_region": True, "pixel_size": 5000, "region_size": 5000},
    ),
}


def test_every_option_is_listed():
    on_disk = {
        (group, path.stem)
        for group in ("sampler", "synthesis", "memory")
        for path in (CONF / group).glob("*.yaml")
        if not path.stem.startswith("_")  # shared bases the options build on
    }
    assert on_disk == set(EXPECTED)


def _check(obj, expected_type, attributes, group):
    if expected_type is None:
        assert obj is None
        return
    assert isinstance(obj, expected_type)
    for name, value in attributes.items():
        assert getattr(obj, name) == value, name
    if group == "memory":  # interpolated from the dataset and model configs
        assert obj.num_classes == 7 and obj.dim == 32 and obj.ignore_index == 250


def _load_option(group: str, option: str):
    """An option's file with its defaults list applied, as Hydra does: the listed files of the
    same group first, in order, then the option's own keys (``_self_`` last)."""
    node = OmegaConf.load(CONF / group / f"{option}.yaml")
    if "defaults" not in node:
        return node
    defaults = [d for d in node.pop("defaults") if d != "_self_"]
    return OmegaConf.merge(*(_load_option(group, d) for d in defaults), node)


@pytest.mark.parametrize("group,option", sorted(EXPECTED))
def test_option_merges_into_a_stub_and_instantiates(group, option):
    path = CONF / group / f"{option}.yaml"
    node = _load_option(group, option)
    is_global = path.read_text().startswith("# @package _global_")
    cfg = OmegaConf.merge(STUB, node if is_global else {group: node})
    OmegaConf.resolve(cfg)
    expected_type, attributes = EXPECTED[(group, option)]
    if expected_type is None:  # `none` is a node of the group that builds nothing
        assert not is_global and cfg[group]._target_ == "picoseg.contrast.disabled.disabled"
    _check(instantiate(cfg[group]), expected_type, attributes, group)


@pytest.mark.parametrize("group,option", sorted(EXPECTED))
def test_option_composes_with_hydra(tmp_path, group, option):
    """Hydra itself applies the package headers (every option lands on its group's key)."""
    for name in ("sampler", "synthesis", "memory"):
        shutil.copytree(CONF / name, tmp_path / name)
    (tmp_path / "config.yaml").write_text(
        "defaults:\n  - _self_\n  - sampler: seg_aware\n  - synthesis: both\n"
        "  - memory: pixel_region\n" + OmegaConf.to_yaml(STUB)
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={option}"])
    expected_type, attributes = EXPECTED[(group, option)]
    _check(instantiate(cfg[group]), expected_type, attributes, group)
    assert set(cfg) == {"sampler", "synthesis", "memory", "dataset", "model"}


def test_a_switched_off_component_builds_nothing_and_says_its_settings_are_unused(caplog):
    from picoseg.contrast.disabled import disabled

    with caplog.at_level("INFO", logger="picoseg.contrast.disabled"):
        assert disabled("memory") is None
        assert not caplog.records
        assert disabled("memory", pixel_size=2000, region_size=1000) is None
    assert "memory is switched off" in caplog.text and "pixel_size" in caplog.text
