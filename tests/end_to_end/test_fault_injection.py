"""Fault injection: a PiCo training killed with SIGKILL at random moments, once in the middle of
a checkpoint write, and resumed each time with ``ckpt_path=last``, ends with exactly the weights,
memory bank, optimiser state and validation mIoU of an uninterrupted run (on the CPU)."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from picoseg.checkpoint import load_checkpoint

EPOCHS, STEPS_PER_EPOCH = 3, 5  # 10 training images in batches of 2


def _args(root: Path, run_dir: Path, workers: int) -> list[str]:
    return [
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.num_classes=3",
        "dataset.class_names=[a,b,c]",
        "dataset.datamodule.crop_size=[32,32]",
        "dataset.datamodule.batch_size=2",
        f"dataset.datamodule.num_workers={workers}",
        "backbone=resnet18",
        "head.channels=16",
        "model.contrast_warmup_steps=1",
        # Queues small enough to wrap around; sampler and synthesis on private generators.
        "memory.pixel_size=40",
        "memory.region_size=4",
        "sampler.seed=1",
        "synthesis.seed=2",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.log_every_n_steps=1",
        "+trainer.enable_progress_bar=false",
        "callbacks.last_checkpoint.every_n_train_steps=1",  # a resume point at every step
        "report=false",
        f"hydra.run.dir={run_dir}",
    ]


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "picoseg.train", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-4000:]


def _step(last: Path) -> int:
    return int(load_checkpoint(last)["global_step"]) if last.is_file() else -1


def _temporaries(folder: Path) -> list[Path]:
    return list(folder.glob(".last.ckpt.tmp*")) if folder.is_dir() else []


def _kill_during_write(proc: subprocess.Popen, folder: Path, deadline: float) -> bool:
    """SIGKILL the moment this process's temporary checkpoint file appears (not one an earlier
    kill left); True if it was still there after the kill."""
    own = folder / f".last.ckpt.tmp{proc.pid}"
    while time.monotonic() < deadline and proc.poll() is None:
        if own.exists():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return own.exists()
        time.sleep(0.0005)
    return False


def _kill_after_progress(
    proc: subprocess.Popen, last: Path, rng: random.Random, deadline: float
) -> None:
    """SIGKILL a random moment (0-1.5 s) after the run has saved a new step."""
    before = _step(last)
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _step(last) > before:
                break
        except ValueError:  # read while being replaced: try again
            pass
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key`` in the run's metrics.csv, in file order."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, folder_tree):
    root = folder_tree(tmp_path / "tree", num_train=10, num_val=3, size=(40, 48))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    log = tmp_path / "train.log"
    # The uninterrupted run loads in the main process; the killed one with 2 workers: the
    # batches are a function of (seed, epoch, index), not of the worker count.
    _wait(_start(_args(root, reference, workers=0), tmp_path, log), log)

    rng = random.Random(18)
    folder, last = killed / "checkpoints", killed / "checkpoints" / "last.ckpt"
    kills, mid_write = [], False
    for attempt in range(5):
        resume = ["ckpt_path=last"] if last.is_file() else []
        proc = _start([*_args(root, killed, workers=2), *resume], tmp_path, log)
        deadline = time.monotonic() + 300
        if attempt == 1:
            mid_write = _kill_during_write(proc, folder, deadline)
        else:
            _kill_after_progress(proc, last, rng, deadline)
        assert proc.returncode == -signal.SIGKILL, f"the run ended before kill {attempt}"
        kills.append(_step(last))  # a complete checkpoint survives every kill
    assert mid_write, "no kill landed while a checkpoint was being written"
    assert kills == sorted(kills) and kills[0] >= 0 and kills[-1] < EPOCHS * STEPS_PER_EPOCH
    _wait(_start([*_args(root, killed, workers=2), "ckpt_path=last"], tmp_path, log), log)

    a = load_checkpoint(reference / "checkpoints" / "last.ckpt")
    b = load_checkpoint(last)
    assert a["global_step"] == b["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any("memory" in name for name in a["state_dict"])
    for name, tensor in a["state_dict"].items():  # weights, memory queues and their pointers
        assert torch.equal(b["state_dict"][name], tensor), name
    (a_opt,), (b_opt,) = a["optimizer_states"], b["optimizer_states"]
    for key, state in a_opt["state"].items():
        for field, value in state.items():
            assert torch.equal(torch.as_tensor(b_opt["state"][key][field]), torch.as_tensor(value))
    assert b["lr_schedulers"] == a["lr_schedulers"]
    # The logs of the stopped processes were kept, and the replayed steps logged once. Lightning
    # hands a step's training metrics to the loggers after that step's checkpoint is written,
    # so a kill before the next flush can lose that one row (at most one per kill); every row
    # that is there equals the uninterrupted run's, and so does every validation.
    assert _series(killed, "val/miou") == _series(reference, "val/miou")
    for key in ("train/loss", "train/nce"):
        kept, expected = _series(killed, key), dict(_series(reference, key))
        assert [step for step, _ in kept] == sorted({step for step, _ in kept}), key
        assert all(expected[step] == value for step, value in kept), key
        assert len(expected) - len(kept) <= len(kills), key
    assert len(_series(reference, "val/miou")) == EPOCHS + 1  # and train()'s final validation
    assert not _temporaries(folder)  # the killed writes' temporary files were cleaned up
    # The resumed runs replaced best.ckpt and last.ckpt (no best-v1.ckpt beside a stale one),
    # and the best checkpoints hold the same weights.
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    a_best = load_checkpoint(reference / "checkpoints" / "best.ckpt")["state_dict"]
    b_best = load_checkpoint(folder / "best.ckpt")["state_dict"]
    assert all(torch.equal(b_best[name], tensor) for name, tensor in a_best.items())
