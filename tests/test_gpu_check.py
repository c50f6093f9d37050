"""scripts/gpu_check.py, run on the CPU with a tiny crop: the script itself works where no GPU is.

The GPU figures come from running ``scripts/gpu_check.sh`` on a GPU machine (README, Results).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_script_runs_ce_and_pico_on_the_cpu():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--precision", "32-true",
         "--steps", "3", "--warmup", "1", "--batch", "2", "--crop", "64", "64",
         "--models", "default"],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = re.findall(
        r"^default (ce|pico): ([0-9.]+) s/step, ([0-9.]+) images/s", proc.stdout, re.M
    )
    assert [loss for loss, _, _ in lines] == ["ce", "pico"]
    for _, step, images in lines:
        # images/s is the batch over the median step time, printed with one decimal (on a busy
        # machine a step takes seconds, and the rounding is then most of the difference)
        assert abs(float(images) - 2 / float(step)) <= 0.05 + 0.05 * 2 / float(step)
    assert "| default | pico |" in proc.stdout and "(3 steps)" in proc.stdout
