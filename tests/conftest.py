"""Shared fixtures: composing picoseg's Hydra configs as the entry points do, running an entry
point in a subprocess, importing a script of ``scripts/``, and building a tiny system."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

# Offline tests: timm must never reach the Hugging Face hub (set before it is imported). The
# library leaves this to the user, so that backbone.pretrained=true downloads for them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer

    from picoseg.models import Segmentor
    from picoseg.system import SegmentationSystem

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"


def _run_module(
    module: str,
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``python -m module *args`` in ``cwd`` with this environment plus ``env``; with ``check``,
    a non-zero exit fails the test showing the ends of stdout and stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts are not a package). As when it
    runs as ``python scripts/<name>.py``, its folder is on the import path while it loads, so
    its imports of sibling modules (``timing``) resolve."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPTS_DIR))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS_DIR))
    return module


@pytest.fixture(scope="session")
def run_module():
    """``run_module(module, args, cwd, env=None, timeout=600, check=True)``: an entry point such
    as ``picoseg.train`` in a subprocess (session-scoped, so module fixtures can use it)."""
    return _run_module


def _write_folder_tree(
    root: Path,
    num_train: int = 4,
    num_val: int = 2,
    size: tuple[int, int] = (32, 48),
    num_classes: int = 3,
    seed: int = 0,
) -> Path:
    """A ``dataset=folder`` tree of random RGB PNGs and class-id masks (class ``i`` fills the
    i-th band of rows, so every class is present) under ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    for split, count in (("train", num_train), ("val", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            mask = (np.arange(height)[:, None] * num_classes // height).repeat(width, 1)
            Image.fromarray(image).save(root / "images" / split / f"{split}_{i}.png")
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / split / f"{split}_{i}.png")
    return root


@pytest.fixture(scope="session")
def folder_tree():
    """``folder_tree(root, num_train=4, num_val=2, size=(32, 48), num_classes=3)`` -> root."""
    return _write_folder_tree


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)``: ``scripts/<name>.py`` as a module."""
    return _load_script


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
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def write_checkpoint():
    """``write_checkpoint(cfg, model, path) -> run_config``: a checkpoint of ``model`` holding
    what ``picoseg.train`` stores (weights and the resolved run configuration, without the
    ``hydra`` node), for the entry points that rebuild a run from it."""

    def _write(cfg: DictConfig, model, path: Path) -> dict:
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.pop("hydra", None)
        run_config = OmegaConf.to_container(cfg, resolve=True)
        import torch

        torch.save({"state_dict": model.state_dict(), "picoseg_config": run_config}, path)
        return run_config

    return _write


def _tiny_network(channels: int = 16, **head_kwargs: Any) -> Segmentor:
    """A randomly initialised ``Segmentor``: resnet18 and an FCN head of ``channels`` channels
    (``head_kwargs`` go to ``FCNHead``), for 3 classes."""
    import functools

    from picoseg.models import Backbone, Segmentor
    from picoseg.models.heads import FCNHead

    return Segmentor(
        Backbone("resnet18"), functools.partial(FCNHead, channels=channels, **head_kwargs), 3
    )


def _tiny_system(
    network: nn.Module | None = None,
    *,
    channels: int = 16,
    class_names: Sequence[str] | None = None,
    optimizer: Callable[..., Optimizer] | None = None,
    lr: float | None = 0.1,
    projection_dim: int | None = None,
    normalize: bool | None = None,
    **kwargs: Any,
) -> SegmentationSystem:
    """A 3-class ``SegmentationSystem`` (class names ``a, b, c``) of ``network``, by default
    ``_tiny_network(channels)``.

    The optimizer is ``optimizer`` (default SGD) with ``lr``, or the bare ``optimizer`` when
    ``lr`` is None. ``projection_dim`` makes the projection a ``ProjectionHead`` of that ``dim``
    (and ``normalize``, when given). The other keyword arguments (``contrast``, ``memory``,
    ``contrast_warmup_steps``, ...) go to ``SegmentationSystem`` as they are."""
    import functools

    import torch

    from picoseg.models import ProjectionHead
    from picoseg.system import SegmentationSystem

    if network is None:
        network = _tiny_network(channels)
    optimizer = optimizer if optimizer is not None else torch.optim.SGD
    if lr is not None:
        optimizer = functools.partial(optimizer, lr=lr)
    if projection_dim is not None:
        options = {} if normalize is None else {"normalize": normalize}
        kwargs["projection"] = functools.partial(ProjectionHead, dim=projection_dim, **options)
    names = list(class_names) if class_names is not None else ["a", "b", "c"]
    return SegmentationSystem(network, 3, names, optimizer, **kwargs)


@pytest.fixture(scope="session")
def tiny_network() -> Callable[..., Segmentor]:
    """``tiny_network(channels=16, **head_kwargs)`` -> a resnet18 + FCN-head ``Segmentor``."""
    return _tiny_network


@pytest.fixture(scope="session")
def tiny_system() -> Callable[..., SegmentationSystem]:
    """``tiny_system(network=None, *, channels=16, class_names=None, optimizer=None, lr=0.1,
    projection_dim=None, normalize=None, **system_kwargs)`` -> a 3-class
    ``SegmentationSystem`` (see ``_tiny_system``)."""
    return _tiny_system
