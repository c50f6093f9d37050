"""Shared fixtures: composing picoseg's Hydra configs as the entry points do."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from picoseg.config import drop_disabled_settings

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def compose_config(tmp_path):
    """``compose_config(overrides, config_name="train")`` -> a config whose paths point into
    ``tmp_path`` and whose ``hydra:`` interpolations resolve, as under ``@hydra.main``."""

    def _compose(overrides: list[str], config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                config_name=config_name,
                overrides=[
                    f"paths.data_dir={tmp_path / 'data'}",
                    f"paths.log_dir={tmp_path / 'logs'}",
                    f"hydra.run.dir={tmp_path / 'run'}",
                    *overrides,
                ],
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        if config_name == "train":
            drop_disabled_settings(cfg)  # as picoseg.train does before building anything
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
