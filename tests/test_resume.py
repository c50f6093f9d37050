"""Resuming a run: which checkpoint ``ckpt_path=last`` means, the random states a checkpoint
carries, and 2 epochs == 1 epoch + resume + 1 epoch on the CPU."""

from __future__ import annotations

import csv
import io
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from picoseg.contrast import NegativeSynthesis, PixelContrastLoss, PixelSampler
from picoseg.random_state import RandomStateCallback, load_rng_state, rng_state
from picoseg.system import SegmentationSystem
from picoseg.train import resolve_ckpt_path, train


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_ckpt_path_last_is_this_run_then_the_newest_sibling_run(tmp_path):
    runs = tmp_path / "outputs" / "train" / "runs"
    older = _touch(runs / "2026-01-01_10-00-00" / "checkpoints" / "last.ckpt", 1_000_000)
    newer = _touch(runs / "2026-01-02_10-00-00" / "checkpoints" / "last.ckpt", 2_000_000)
    _touch(runs / "2026-01-03_10-00-00" / "checkpoints" / "best.ckpt", 3_000_000)  # no last
    new_run = runs / "2026-01-04_10-00-00"
    assert resolve_ckpt_path(None, new_run) is None
    assert resolve_ckpt_path("last", new_run) == str(newer)
    # Resuming in place (hydra.run.dir=<old run>) takes that run's own last.ckpt.
    assert resolve_ckpt_path("last", older.parents[1]) == str(older)
    assert resolve_ckpt_path(str(older), new_run) == str(older)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        resolve_ckpt_path(str(runs / "missing.ckpt"), new_run)
    with pytest.raises(FileNotFoundError, match="ckpt_path=last"):
        resolve_ckpt_path("last", tmp_path / "elsewhere" / "run")


@pytest.fixture
def contrast_system(tiny_system) -> Callable[[], SegmentationSystem]:
    """``contrast_system()``: a new tiny PiCo system, its sampler and synthesis with private
    generators (seeds 3 and 4)."""

    def build() -> SegmentationSystem:
        contrast = PixelContrastLoss(PixelSampler(seed=3), NegativeSynthesis(seed=4), num_classes=3)
        return tiny_system(channels=8, projection_dim=8, contrast=contrast)

    return build


def _draws(system: SegmentationSystem) -> list:
    cpu = torch.device("cpu")
    return [
        torch.rand(4),
        np.random.rand(4),
        random.random(),
        torch.rand(4, generator=system.contrast.sampler.generator(cpu)),
        torch.rand(4, generator=system.contrast.synthesis._generator(cpu)),
    ]


def _assert_same_draws(actual: list, expected: list) -> None:
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_rng_state_restores_global_sampler_and_synthesis_generators_in_a_new_system(
    contrast_system,
):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    system = contrast_system()
    _draws(system)  # the private generators exist and have moved on from their seeds
    buffer = io.BytesIO()
    torch.save(rng_state(system), buffer)  # as a checkpoint holds it
    expected = _draws(system)
    _draws(system)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # what Lightning's resume loads
    resumed = contrast_system()  # a new process: fresh generators seeded from the config
    load_rng_state(resumed, state)
    _assert_same_draws(_draws(resumed), expected)
    # Without the state, the fresh system would start again from the seeds: different draws.
    fresh = contrast_system()
    assert not torch.equal(_draws(fresh)[3], expected[3])


def test_loading_a_checkpoint_outside_fit_leaves_the_random_state_alone(contrast_system):
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    system = contrast_system()
    checkpoint: dict = {}
    system.skipped_steps = 3
    system.on_save_checkpoint(checkpoint)
    callback = RandomStateCallback()
    callback.on_save_checkpoint(None, system, checkpoint)
    assert checkpoint["picoseg_skipped_steps"] == 3 and "global" in checkpoint["picoseg_rng"]
    other = contrast_system()
    torch.rand(2)
    before = torch.get_rng_state()
    other.on_load_checkpoint(checkpoint)  # no trainer: e.g. evaluation tools
    validating = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.VALIDATING))
    callback.on_load_checkpoint(validating, other, checkpoint)
    assert torch.equal(torch.get_rng_state(), before) and other.skipped_steps == 0
    fitting = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    callback.on_load_checkpoint(fitting, other, checkpoint)  # a resumed fit: restored
    assert torch.equal(torch.get_rng_state(), checkpoint["picoseg_rng"]["global"]["torch"])


def test_the_system_attaches_the_callbacks_its_training_needs(contrast_system):
    from types import SimpleNamespace

    from picoseg.contrast import MemoryBank, MemoryBankCallback
    from picoseg.wandb_run import WandbRunId

    system = contrast_system()
    assert [type(c) for c in system.configure_callbacks()] == [RandomStateCallback, WandbRunId]
    system.memory = MemoryBank(3, 8, 5, 5, 2)
    assert MemoryBankCallback in [type(c) for c in system.configure_callbacks()]
    # A trainer that already holds some of them (its fit attached them; now it validates) gets
    # only the missing ones: nothing for Lightning to replace and report as an override.
    system._trainer = SimpleNamespace(callbacks=[WandbRunId(), MemoryBankCallback()])
    assert [type(c) for c in system.configure_callbacks()] == [RandomStateCallback]


# debug=fast with its random crops, flips and colour jitter: the data order and the
# augmentations are functions of (seed, epoch, index) (picoseg/data/resumable.py), and the
# checkpoint holds the seed and the position in the epoch.
_OVERRIDES = [
    "debug=fast",
    "report=false",
    # Small queues that wrap around during the run; private sampler and synthesis generators
    # (the memory bank draws from the global one).
    "memory.pixel_size=30",
    "memory.region_size=4",
    "sampler.seed=1",
    "synthesis.seed=2",
]
_LOGGED = ("train/loss", "train/ce", "train/nce", "train/lr", "train/memory_fill")


def _fit(compose_config, run_dir: Path, overrides: list[str]) -> None:
    cfg = compose_config([*_OVERRIDES, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        del cfg["hydra"]  # as under @hydra.main, where the job's config has no hydra node
    train(cfg)


def _logged(run_dir: Path) -> dict[tuple[int, str], float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {
        (int(row["step"]), key): float(row[key]) for row in rows for key in _LOGGED if row.get(key)
    }


def _checkpoint_file(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _checkpoint(run_dir: Path) -> dict:
    return _checkpoint_file(run_dir / "checkpoints" / "last.ckpt")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_epochs_equal_one_epoch_then_resume_last_and_one_more(compose_config, tmp_path):
    full, first, resumed = tmp_path / "full" / "a", tmp_path / "runs" / "b", tmp_path / "runs" / "c"
    _fit(compose_config, full, ["trainer.max_epochs=2"])
    # The same 2-epoch run (same schedule), stopped after its first epoch as if killed there:
    # early stopping on a threshold val/miou always passes.
    stop = "+callbacks.stop_after_first_epoch"
    _fit(
        compose_config,
        first,
        [
            "trainer.max_epochs=2",
            f"{stop}._target_=lightning.pytorch.callbacks.EarlyStopping",
            f"{stop}.monitor=val/miou",
            f"{stop}.mode=max",
            f"{stop}.stopping_threshold=-1.0",
        ],
    )
    # A new run directory next to the first: `last` finds runs/b/checkpoints/last.ckpt.
    _fit(compose_config, resumed, ["trainer.max_epochs=2", "ckpt_path=last"])

    reference, continued = _logged(full), _logged(resumed)
    steps_per_epoch = _checkpoint(first)["global_step"]
    assert steps_per_epoch == 4  # 8 debug images, batch 2
    assert {step for step, _ in continued} == set(range(steps_per_epoch, 2 * steps_per_epoch))
    assert {key for _, key in continued} == set(_LOGGED)
    for (step, key), value in continued.items():
        # CPU kernels are deterministic for equal inputs and thread counts: equal to rounding.
        assert value == pytest.approx(reference[(step, key)], rel=1e-6, abs=1e-7), (step, key)

    _assert_same_end(full, resumed, 2 * steps_per_epoch)


def _assert_same_end(full: Path, resumed: Path, steps: int) -> None:
    """The two runs' last checkpoints hold the same weights, memory, optimiser and RNG states."""
    a, c = _checkpoint(full), _checkpoint(resumed)
    assert a["global_step"] == c["global_step"] == steps
    assert a["state_dict"].keys() == c["state_dict"].keys()
    for name, tensor in a["state_dict"].items():  # weights and the memory bank's queues
        torch.testing.assert_close(c["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    (a_opt,), (c_opt,) = a["optimizer_states"], c["optimizer_states"]
    assert c_opt["param_groups"] == a_opt["param_groups"]  # learning rates included
    torch.testing.assert_close(c_opt["state"], a_opt["state"], rtol=1e-5, atol=1e-6)
    assert c["lr_schedulers"] == a["lr_schedulers"]
    assert c["picoseg_skipped_steps"] == a["picoseg_skipped_steps"] == 0
    for holder in ("sampler", "synthesis"):  # the private generators drew the same numbers
        a_state, c_state = a["picoseg_rng"][holder], c["picoseg_rng"][holder]
        assert a_state.keys() == c_state.keys() == {"cpu"}
        assert torch.equal(a_state["cpu"], c_state["cpu"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_resume_from_the_middle_of_an_epoch_continues_exactly(compose_config, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    # 3 epochs of 4 steps, 2 persistent loader workers. The uninterrupted run also keeps a
    # checkpoint of every 3rd step: step 6 is the middle of the second epoch, so the resumed
    # run starts mid-epoch and then crosses an epoch end and a validation, its process's first.
    run = ["trainer.max_epochs=3", "dataset.datamodule.num_workers=2"]
    keep = "+callbacks.every_3_steps"
    _fit(
        compose_config,
        full,
        [
            *run,
            f"{keep}._target_=lightning.pytorch.callbacks.ModelCheckpoint",
            f"{keep}.dirpath={tmp_path / 'steps'}",
            f"{keep}.filename='{{step}}'",
            f"{keep}.every_n_train_steps=3",
            f"{keep}.save_top_k=-1",
        ],
    )
    middle = tmp_path / "steps" / "step=6.ckpt"
    assert _checkpoint_file(middle)["global_step"] == 6
    _fit(compose_config, resumed, [*run, f"ckpt_path='{middle}'"])

    reference, continued = _logged(full), _logged(resumed)
    assert {step for step, _ in continued} == set(range(6, 12))
    for (step, key), value in continued.items():
        assert value == pytest.approx(reference[(step, key)], rel=1e-6, abs=1e-7), (step, key)
    # Validation after each epoch, and train()'s final one of best.ckpt: all equal.
    assert len(_val_miou(full)) == 4 and _val_miou(resumed) == _val_miou(full)[1:]
    _assert_same_end(full, resumed, 12)


def _val_miou(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row["val/miou"]) for row in csv.DictReader(f) if row.get("val/miou")]
