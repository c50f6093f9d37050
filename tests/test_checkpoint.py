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


def _picoseg_like(value: float, size: int = 10) -> dict:
    return {"state_dict": {"w": torch.full((size,), value)}, "picoseg_config": {"v": value}}


def test_atomic_write_keeps_the_old_checkpoint_when_a_write_fails(tmp_path, monkeypatch):
    import picoseg.checkpoint as module

    path = tmp_path / "last.ckpt"
    io = module.AtomicCheckpointIO()
    io.save_checkpoint(_picoseg_like(1.0), path)

    def torch_save_cut_short(obj, file):
        file.write(b"PK half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(module.torch, "save", torch_save_cut_short)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(_picoseg_like(2.0), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["picoseg_config"] == {"v": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    from picoseg.checkpoint import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_picoseg_like(1.0), path)
    writer = textwrap.dedent(
        """
        import sys, torch
        from picoseg.checkpoint import AtomicCheckpointIO
        big = {"state_dict": {"w": torch.ones(400_000_000, dtype=torch.uint8)},
               "picoseg_config": {"v": 2.0}}
        while True:
            AtomicCheckpointIO().save_checkpoint(big, sys.argv[1])
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(path)])
    try:
        deadline = time.monotonic() + 120
        # Kill it while the temporary file is being written (before its first rename).
        while not any(p.name.startswith(".last.ckpt.tmp") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Either the old checkpoint or (if a rename slipped in) the new complete one; never a cut one.
    assert load_checkpoint(path)["picoseg_config"] in ({"v": 1.0}, {"v": 2.0})


def test_a_write_removes_temporary_files_of_processes_that_are_gone(tmp_path):
    import os
    import subprocess
    import sys

    from picoseg.checkpoint import AtomicCheckpointIO

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = tmp_path / f".last.ckpt.tmp{int(gone.stdout)}"  # its process has exited
    alive = tmp_path / f".last.ckpt.tmp{os.getppid()}"  # a running process: may be writing
    other = tmp_path / f".best.ckpt.tmp{int(gone.stdout)}"  # another file's: not this write's
    for leftover in (dead, alive, other):
        leftover.write_bytes(b"PK cut short")
    AtomicCheckpointIO().save_checkpoint(_picoseg_like(1.0), tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.ckpt", alive.name, other.name]
    )


def test_an_unreadable_checkpoint_names_the_other_checkpoints_of_the_run(tmp_path):
    torch.save(_picoseg_like(1.0), tmp_path / "best.ckpt")
    (tmp_path / "last.ckpt").write_bytes((tmp_path / "best.ckpt").read_bytes()[:100])
    with pytest.raises(
        ValueError, match=r"last\.ckpt: cannot be read.*Other checkpoints.*best\.ckpt"
    ):
        load_checkpoint(tmp_path / "last.ckpt")
