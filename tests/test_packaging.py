"""The installable package: configs inside it (picoseg.conf), console commands, user config
folders. (scripts/check_wheel.sh, run by CI, checks a real wheel in a fresh environment.)"""

from __future__ import annotations

import importlib
import importlib.resources
import os
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # the standard library's from Python 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages(folder: Path, name: str) -> set[str]:
    """Dotted names of ``folder`` (as ``name``) and the folders below it that hold __init__.py."""
    return {
        ".".join([name, *Path(d).relative_to(folder).parts])
        for d, _, files in os.walk(folder)
        if "__init__.py" in files
    }


def test_every_package_and_config_group_is_listed_for_the_wheel():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    code = _packages(ROOT / "picoseg", "picoseg")
    groups = {
        "picoseg.conf." + os.path.relpath(d, ROOT / "conf").replace(os.sep, ".")
        for d, _, _ in os.walk(ROOT / "conf")
        if Path(d) != ROOT / "conf" and "__pycache__" not in d
    }
    assert listed == code | groups | {"picoseg.conf"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"picoseg.conf": "conf"}


def test_configs_are_found_through_the_package():
    # What the entry points read (config_path="pkg://picoseg.conf"): the files of conf/.
    conf = importlib.resources.files("picoseg.conf")
    for name in ("train", "evaluate", "predict", "export", "embeddings"):
        assert (
            conf.joinpath(f"{name}.yaml").read_text()
            == (ROOT / "conf" / f"{name}.yaml").read_text()
        )
    assert conf.joinpath("experiment", "hrnet48_cityscapes.yaml").is_file()


@pytest.mark.parametrize("name", ["train", "evaluate", "predict", "export", "embeddings"])
def test_console_commands_call_the_entry_points(name):
    target = PYPROJECT["project"]["scripts"][f"picoseg-{name}"]
    module, function = target.split(":")
    assert module == f"picoseg.{name}" and function == "main"
    assert callable(getattr(importlib.import_module(module), function))
    source = (ROOT / "picoseg" / f"{name}.py").read_text()
    assert 'config_path="pkg://picoseg.conf"' in source


def test_a_user_config_folder_adds_options(tmp_path, run_module):
    # From a folder outside the clone: the package's configs plus the user's own dataset file.
    (tmp_path / "myconf" / "dataset").mkdir(parents=True)
    (tmp_path / "myconf" / "dataset" / "mine.yaml").write_text(
        "defaults:\n  - scenes\nname: mine\nroot: /data/mine\nnum_classes: 9\n"
    )
    proc = run_module(
        "picoseg.train",
        ["--cfg", "job", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "dataset=mine"],
        cwd=tmp_path,
        timeout=120,
    )
    assert "name: mine" in proc.stdout and "root: /data/mine" in proc.stdout
    assert "class_names:" in proc.stdout  # the rest comes from the package's scenes.yaml
