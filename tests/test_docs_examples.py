"""The examples of docs/extending.md: their files compile, parse, compose and build.

Every fenced ``python`` or ``yaml`` block of the page whose first line is ``# <path>`` is written
to a temporary project folder, as a reader would save it. The configs are composed with
``hydra.searchpath`` pointing at that folder, and each part is built and run on tiny inputs.
Nothing is trained; the page itself records the training commands that were run.
"""

from __future__ import annotations

import py_compile
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from PIL import Image

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
PATH_LINE = re.compile(r"# (\S+\.(?:py|yaml))")
# The toy trees hold 4 training images: one batch of 2 fits.
SMALL = ["dataset.datamodule.batch_size=2"]


def doc_files() -> dict[str, str]:
    """``{relative path: text}`` of the page's blocks that start with a ``# <path>`` line."""
    files = {}
    for lang, body in BLOCK.findall(DOC.read_text()):
        match = PATH_LINE.fullmatch(body.split("\n", 1)[0])
        if lang in ("python", "yaml") and match:
            assert match.group(1) not in files, f"{match.group(1)} appears twice in {DOC}"
            files[match.group(1)] = body
    return files


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The page's files in a fresh folder on ``sys.path`` (``myseg`` importable)."""
    root = tmp_path_factory.mktemp("myproject")
    for rel, text in doc_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "myseg" / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == "myseg" or m.startswith("myseg.")]:
        del sys.modules[name]


def compose_with(compose_config, project: Path, overrides: list[str]):
    return compose_config([f"hydra.searchpath=[file://{project / 'myconf'}]", *overrides])


def test_page_has_every_example():
    assert set(doc_files()) == {
        "myseg/pairs.py",
        "myseg/fpn.py",
        "myseg/sampling.py",
        "make_pairs.py",
        "myconf/dataset/mine.yaml",
        "myconf/dataset/pairs.yaml",
        "myconf/backbone/convnext_atto.yaml",
        "myconf/head/fpn.yaml",
        "myconf/sampler/seg_aware_hardest.yaml",
        "myconf/sampler/rare_anchors.yaml",
    }


def test_python_compiles_and_yaml_parses(project):
    for rel in doc_files():
        path = project / rel
        if path.suffix == ".py":
            py_compile.compile(str(path), doraise=True)
        else:
            assert isinstance(yaml.safe_load(path.read_text()), dict), rel


def test_folder_dataset_with_other_directory_names(project, compose_config, folder_tree, tmp_path):
    toy = folder_tree(tmp_path / "toy", num_classes=3)
    (tmp_path / "data" / "mine").mkdir(parents=True)
    (toy / "images").rename(tmp_path / "data" / "mine" / "img")
    (toy / "masks").rename(tmp_path / "data" / "mine" / "ann")
    cfg = compose_with(
        compose_config,
        project,
        ["dataset=mine", "dataset.num_classes=3", "dataset.class_names=[a,b,c]", *SMALL],
    )
    assert cfg.dataset.datamodule.dataset.image_dir == "img"
    datamodule = instantiate(cfg.dataset.datamodule)
    datamodule.setup("fit")
    assert len(datamodule.train_dataset) == 4 and len(datamodule.val_dataset) == 2
    assert datamodule.val_dataset[0]["mask"].max() == 2


def test_pairs_dataset(project, compose_config, folder_tree, tmp_path, monkeypatch):
    folder_tree(tmp_path / "data" / "toy", num_classes=3)
    monkeypatch.chdir(tmp_path)  # make_pairs.py reads data/toy and writes data/pairs
    runpy.run_path(str(project / "make_pairs.py"))
    pairs = tmp_path / "data" / "pairs"
    assert len(list((pairs / "train").glob("*_label.png"))) == 4
    cfg = compose_with(
        compose_config,
        project,
        ["dataset=pairs", "dataset.num_classes=3", "dataset.class_names=[a,b,c]", *SMALL],
    )
    datamodule = instantiate(cfg.dataset.datamodule)
    datamodule.setup("fit")
    item = datamodule.val_dataset[0]
    original = np.array(Image.open(tmp_path / "data" / "toy" / "masks" / "val" / "val_0.png"))
    assert torch.equal(item["mask"], torch.from_numpy(original).long())
    # A raw 0 is unlabelled: it becomes the ignore label.
    from myseg.pairs import PairsDataset

    label = pairs / "val" / "val_0_label.png"
    raw = np.array(Image.open(label))
    raw[0, :] = 0
    Image.fromarray(raw).save(label)
    mask = PairsDataset(pairs, "val", num_classes=3)[0]["mask"]
    assert (mask[0] == 255).all() and torch.equal(mask[1:], torch.from_numpy(original[1:]).long())


def test_backbone(project, compose_config):
    cfg = compose_with(compose_config, project, ["backbone=convnext_atto"])
    backbone = instantiate(cfg.backbone)
    assert backbone.channels == [40, 80, 160, 320]
    assert backbone.reductions == [4, 8, 16, 32]


def test_head(project, compose_config):
    cfg = compose_with(compose_config, project, ["head=fpn"])
    network = instantiate(cfg.model.network)
    assert type(network.head).__name__ == "FPNHead"
    network.eval()
    out = network(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 9, 16, 16)
    assert out.features.shape == (2, 128, 16, 16)


def test_samplers(project, compose_config):
    cfg = compose_with(compose_config, project, ["sampler=seg_aware_hardest"])
    sampler = instantiate(cfg.sampler)
    assert (sampler.anchor_strategy, sampler.key_strategy) == ("seg_aware", "hardest")
    assert sampler.max_anchors == 1024  # from picoseg's conf/sampler/_base.yaml

    cfg = compose_with(compose_config, project, ["sampler=rare_anchors", "sampler.seed=0"])
    sampler = instantiate(cfg.sampler)
    assert type(sampler).__name__ == "ClassSubsetSampler"
    labels = torch.randint(0, 9, (2, 16, 16))
    sample = sampler.sample_anchors(labels, predictions=labels)
    drawn = set(sample.labels[sample.valid].tolist())
    assert drawn and drawn <= {5, 6, 7}
