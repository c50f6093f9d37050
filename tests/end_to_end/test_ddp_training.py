"""Two CPU processes (DDP over gloo) train through the real entry point for a few steps.

``python -m picoseg.train debug=fast trainer=ddp_cpu`` runs in a subprocess: Lightning starts the
second rank by re-running the module with rank 0's Hydra run directory. The callback in
tests/ddp_dump.py makes every rank write what it trained on and what it holds after training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
MEMORY_BUFFERS = {"keys", "pixel_pointer", "pixel_count", "region_pointer", "region_count"}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, run_module):
    """Trains 2 epochs of debug=fast (8 training images, 2 per rank and step: 4 steps) on 2
    ranks. No ``hydra.run.dir``: the default one holds the start time, which rank 1 must not
    recompute."""
    root = tmp_path_factory.mktemp("ddp")
    dump = root / "dump"
    pythonpath = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(pythonpath)}
    args = [
        "debug=fast",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        # small queues (16 images x 10 pixels fit): small checkpoints
        "memory.pixel_size=200",
        "memory.region_size=200",
        f"paths.data_dir={root / 'data'}",
        f"paths.log_dir={root / 'logs'}",
        "+callbacks.dump._target_=ddp_dump.DumpRankState",
        f"+callbacks.dump.path={dump}",
    ]
    proc = run_module("picoseg.train", args, root, env, timeout=300)
    return root, dump, proc


def _train_states(dump: Path) -> list[dict]:
    return [
        torch.load(dump / f"rank{rank}_train.pt", map_location="cpu", weights_only=False)
        for rank in (0, 1)
    ]


def test_ranks_train_on_disjoint_halves_of_the_data(ddp_run):
    _, dump, _ = ddp_run
    states = _train_states(dump)
    assert [s["global_rank"] for s in states] == [0, 1]
    assert all(s["world_size"] == 2 for s in states)
    # 8 images / (2 ranks x batch 2) = 2 steps per epoch, 2 epochs.
    assert [s["global_step"] for s in states] == [4, 4]
    names = [s["batch_names"] for s in states]
    assert [len(n) for n in names] == [4, 4]
    for epoch in (0, 1):
        seen = [{name for batch in n[2 * epoch : 2 * epoch + 2] for name in batch} for n in names]
        assert len(seen[0]) == len(seen[1]) == 4
        assert not seen[0] & seen[1]  # each rank its own half of the 8 images


def test_ranks_hold_identical_weights_and_memory_after_training(ddp_run):
    root, dump, _ = ddp_run
    first, second = _train_states(dump)
    parameters = first["parameters"]
    assert parameters == second["parameters"]
    assert any(n.startswith("network.") for n in parameters)
    assert any(n.startswith("projection.") for n in parameters)
    for name in parameters:
        assert torch.equal(first["state"][name], second["state"][name]), name
    # Training moved the weights (identical weights are not just the identical seeded init).
    moved = [
        n for n in parameters if float(first["state"][n].double().sum()) != first["initial_sums"][n]
    ]
    assert len(moved) == len(parameters)
    # The memory is not broadcast by DDP: each rank pushed the gathered keys of both ranks.
    memory = {n.removeprefix("memory."): n for n in first["state"] if n.startswith("memory.")}
    assert set(memory) == MEMORY_BUFFERS
    for name in memory.values():
        assert torch.equal(first["state"][name], second["state"][name]), name
    # Independent count of what both ranks' batches held: every image pushes one region key
    # per class present and min(V, pixels of the class) pixel keys (the queues never fill here).
    state = first["state"]
    num_classes = state["memory.region_count"].numel()
    per_image = [image for s in (first, second) for b in s["batch_class_pixels"] for image in b]
    assert len(per_image) == 16  # 4 steps x 2 ranks x 2 images
    (run,) = (root / "logs" / "train" / "runs").iterdir()
    memory_cfg = OmegaConf.load(run / ".hydra" / "config.yaml").memory
    assert (
        memory_cfg.pixel_size >= 16 * memory_cfg.pixels_per_image and memory_cfg.region_size >= 16
    )
    per_image_keys = memory_cfg.pixels_per_image
    regions = [sum(c in image for image in per_image) for c in range(num_classes)]
    pixels = [
        sum(min(per_image_keys, image.get(c, 0)) for image in per_image) for c in range(num_classes)
    ]
    assert state["memory.region_count"].tolist() == regions
    assert state["memory.pixel_count"].tolist() == pixels
    assert torch.equal(state["memory.region_pointer"], state["memory.region_count"])
    assert sum(regions) > 0 and float(state["memory.keys"].abs().sum()) > 0


def test_validation_miou_is_synced_across_ranks(ddp_run):
    root, dump, _ = ddp_run
    val = [json.loads((dump / f"rank{rank}_val.json").read_text()) for rank in (0, 1)]
    # Each rank validated its own 2 of the 4 images, yet both computed the same confusion
    # matrix over all the labelled pixels of both ranks.
    assert [v["local_images"] for v in val] == [2, 2]
    total = val[0]["local_pixels"] + val[1]["local_pixels"]
    for v in val:
        confusion = torch.tensor(v["confusion"])
        assert int(confusion.sum()) == total > v["local_pixels"]
    assert val[0]["confusion"] == val[1]["confusion"]
    assert val[0]["miou"] == val[1]["miou"]
    (run,) = (root / "logs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(val[0]["miou"], abs=1e-7)


def test_only_rank_zero_writes_the_run_directory(ddp_run):
    root, _, proc = ddp_run
    # One run directory although rank 1 started later: it reused rank 0's, no second one
    # (and nothing under the working directory).
    runs = list((root / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    assert sorted(p.name for p in root.iterdir()) == ["data", "dump", "logs"]
    run = runs[0]
    assert (run / ".hydra" / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["hparams.yaml", "metrics.csv"]
    assert [p.relative_to(root) for p in root.rglob("metrics.json")] == [
        run.relative_to(root) / "metrics.json"
    ]
    for name in ("per_class_iou.csv", "confusion_matrix.csv", "val_predictions.png"):
        assert (run / name).is_file(), name
    # The report is printed (and written) once: by rank 0 alone.
    assert proc.stdout.count("pixel acc") == 1
    # Rank 1 keeps only its own Hydra log beside rank 0's.
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log", "train_ddp_process_1.log"]
