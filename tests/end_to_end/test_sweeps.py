"""Sweeps through the real entry point: an Optuna search, and the SLURM launcher's submission.

Both need the `sweep` / `slurm` extras (in `dev`); without them the tests are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

SWEPT = {"model.contrast_weight", "model.contrast.temperature", "optimizer.lr"}


def _overrides(job: Path) -> dict[str, str]:
    lines = OmegaConf.load(job / ".hydra" / "overrides.yaml")
    return dict(str(line).split("=", 1) for line in lines)


def test_optuna_search_runs_trials_and_records_the_best(tmp_path, run_module):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper")
    sweep = tmp_path / "sweep"
    run_module(
        "picoseg.train",
        [
            "-m",
            "hparams_search=optuna",
            "debug=fast",
            "hydra.sweeper.n_trials=2",
            "trainer.max_epochs=1",
            "logger=none",
            # no checkpoints and a small memory: the trials only train, validate and report
            "+trainer.enable_checkpointing=false",
            "callbacks.model_checkpoint=null",
            "callbacks.last_checkpoint=null",
            "memory.pixel_size=200",
            "memory.region_size=200",
            f"hydra.sweep.dir={sweep}",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    sampled, mious = [], []
    for job in jobs:
        values = {k: float(v) for k, v in _overrides(job).items() if k in SWEPT}
        assert set(values) == SWEPT
        assert 0.01 <= values["model.contrast_weight"] <= 1.0
        assert values["model.contrast.temperature"] in (0.05, 0.07, 0.1, 0.2, 0.4)
        assert 5e-4 <= values["optimizer.lr"] <= 1e-2
        # the trial's values are the ones the job trained with
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert config.model.contrast_weight == values["model.contrast_weight"]
        assert config.model.contrast.temperature == values["model.contrast.temperature"]
        assert config.optimizer.lr == values["optimizer.lr"]
        sampled.append(values)
        mious.append(json.loads((job / "metrics.json").read_text())["miou"])
    assert sampled[0]["model.contrast_weight"] != sampled[1]["model.contrast_weight"]
    assert sampled[0]["optimizer.lr"] != sampled[1]["optimizer.lr"]
    # Optuna maximised what picoseg.train returned: the best job's mIoU and values.
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.best_value == pytest.approx(max(mious), abs=1e-9)
    best = dict(result.best_params)
    assert set(best) == SWEPT
    assert any(
        best == pytest.approx(values) and miou == pytest.approx(max(mious), abs=1e-9)
        for values, miou in zip(sampled, mious, strict=True)
    )


def test_slurm_launcher_submits_the_requested_resources(tmp_path, run_module):
    """With stand-ins for `srun` and `sbatch` (which copies the job script and refuses it), the
    sweep gets as far as the submission: the script asks SLURM for what the config says."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher.submitit_launcher")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    submitted = tmp_path / "submitted.sh"
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" "{submitted}"\necho "sbatch: error: not a cluster" >&2\nexit 1\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    proc = run_module(
        "picoseg.train",
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.nodes=2",
            "hydra.launcher.tasks_per_node=4",
            "hydra.launcher.gpus_per_node=4",
            "trainer=slurm",
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0  # the stand-in sbatch refused the job
    assert "not a cluster" in proc.stdout + proc.stderr
    lines = submitted.read_text().splitlines()
    for flag in (
        "--partition=gpu",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=1440",
        "--job-name=train",
        "--array=0-1%2",  # one array task per job of the sweep (seed=0,1)
    ):
        assert f"#SBATCH {flag}" in lines, flag
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 1 and "-m submitit.core._submit" in srun[0]


def test_only_slurm_task_0_writes_hydra_outputs_and_each_task_its_own_log(tmp_path, run_module):
    """Every task of a multi-task SLURM job runs the script in one run directory: task 0 writes
    `.hydra/` and `train.log`, task 1 only `train_task1.log`. The run stops at once on a missing
    checkpoint, after Hydra has set up its outputs."""
    env = {"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "picoseg"}
    missing = tmp_path / "missing.ckpt"
    for task in ("1", "0"):
        run_dir = tmp_path / f"task{task}"
        args = [f"hydra.run.dir={run_dir}", f"ckpt_path={missing}", f"paths.data_dir={tmp_path}"]
        proc = run_module(
            "picoseg.train", args, tmp_path, {**env, "SLURM_PROCID": task}, timeout=300, check=False
        )
        assert proc.returncode != 0 and "no such checkpoint file" in proc.stderr, proc.stderr
        logs = sorted(p.name for p in run_dir.glob("*.log"))
        assert logs == (["train_task1.log"] if task == "1" else ["train.log"])
        assert (run_dir / ".hydra").is_dir() == (task == "0")
    # Outside a multi-task job (and with SLURM_PROCID alone) nothing changes.
    run_module(
        "picoseg.train",
        [f"hydra.run.dir={tmp_path / 'single'}", f"ckpt_path={missing}"],
        tmp_path,
        {"SLURM_NTASKS": "1", "SLURM_PROCID": "0"},
        timeout=300,
        check=False,
    )
    assert (tmp_path / "single" / ".hydra").is_dir() and (
        tmp_path / "single" / "train.log"
    ).is_file()


def test_slurm_task_resolver_rejects_unknown_parts_and_bad_environment(monkeypatch):
    import picoseg  # noqa: F401  (registers the resolver)

    cfg = OmegaConf.create(
        {"a": "${picoseg.slurm_task:rank}", "b": "${picoseg.slurm_task:log_suffix}"}
    )
    with pytest.raises(Exception, match="expected output_subdir or log_suffix"):
        _ = cfg.a
    monkeypatch.setenv("SLURM_NTASKS", "four")
    with pytest.raises(Exception, match="SLURM_NTASKS='four'"):
        _ = cfg.b
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert cfg.b == "_task3"
