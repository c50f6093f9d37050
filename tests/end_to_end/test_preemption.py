"""Preemption: SIGTERM to a real training process saves last.ckpt and a marker and exits 0; the
same run directory started again resumes from it without ckpt_path and trains to the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from picoseg.checkpoint import load_checkpoint
from picoseg.preemption import MARKER, clear_preemption, preempted_checkpoint


def test_preempted_checkpoint_reads_the_marker_and_needs_its_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert preempted_checkpoint(folder) is None
    (folder / MARKER).write_text(json.dumps({"global_step": 7, "epoch": 1}))
    with pytest.raises(FileNotFoundError, match=MARKER):
        preempted_checkpoint(folder)
    (folder / "last.ckpt").write_bytes(b"")
    marker = preempted_checkpoint(folder)
    assert marker["global_step"] == 7 and marker["checkpoint"] == str(folder / "last.ckpt")
    clear_preemption(folder)
    assert preempted_checkpoint(folder) is None


@pytest.mark.slow
def test_sigterm_saves_last_and_the_same_run_directory_resumes_to_the_end(tmp_path, run_module):
    run_dir = tmp_path / "run"
    args = ["debug=fast", f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}"]
    last = run_dir / "checkpoints" / "last.ckpt"
    # debug=fast: 8 training images in batches of 2, 4 steps an epoch; 200 epochs would take
    # minutes, so the run is still training when the signal comes.
    proc = subprocess.Popen(
        [sys.executable, "-m", "picoseg.train", *args, "trainer.max_epochs=200"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not last.is_file():  # the end of the first epoch
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    marker = json.loads((run_dir / "checkpoints" / MARKER).read_text())
    stopped = load_checkpoint(last)
    assert stopped["global_step"] == marker["global_step"] >= 4
    assert stopped["global_step"] < 200 * 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["preempted"] is True and metrics["miou"] is None

    # Started again with the same run directory and no ckpt_path: it resumes and finishes.
    epochs = stopped["epoch"] + 2
    proc = run_module("picoseg.train", [*args, f"trainer.max_epochs={epochs}"], cwd=tmp_path)
    assert "stopped by SIGTERM at step" in proc.stdout + proc.stderr
    final = load_checkpoint(last)
    assert final["global_step"] == epochs * 4  # no step lost or repeated across the stop
    assert not (run_dir / "checkpoints" / MARKER).exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and "preempted" not in metrics
