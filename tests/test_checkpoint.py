"""Checkpoints open weights-only at every entry point: a file whose unpickling would run code is
refused with one clear error, and the code never runs."""

from __future__ import annotations

import pathlib

import pytest
import torch

from picoseg.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


class _CreatesFile:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: code run by opening the file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def crafted(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "picoseg_config": {"payload": _CreatesFile(marker)}}, path)
    return path, marker


def test_crafted_checkpoint_is_refused_without_running_its_code(crafted):
    path, marker = crafted
    with pytest.raises(ValueError, match=r"crafted\.ckpt: refused, it holds objects other than"):
        load_checkpoint(path)
    assert not marker.exists()
    # The file really runs code when unpickled without the weights-only guard.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_and_foreign_files_get_one_clear_error(tmp_path):
    path = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}, "picoseg_config": {"a": 1}}, path)
    assert load_checkpoint(path)["picoseg_config"] == {"a": 1}
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.ckpt: cannot be read as a checkpoint"):
        load_checkpoint(cut)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.ckpt: not a picoseg checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("picoseg.train", ["debug=fast"]),
        ("picoseg.evaluate", []),
        ("picoseg.predict", ["input=.", "output=out"]),
        ("picoseg.export", ["format=torchscript"]),
        ("picoseg.embeddings", []),
    ],
)
def test_every_entry_point_refuses_the_crafted_checkpoint(crafted, run_module, module, args):
    path, marker = crafted
    proc = run_module(
        module,
        [f"ckpt_path={path}", *args, f"hydra.run.dir={path.parent / 'run'}",
         f"paths.data_dir={path.parent / 'data'}"],
        cwd=path.parent, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "refused, it holds objects other than" in proc.stderr
    assert not marker.exists()
