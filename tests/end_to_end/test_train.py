"""The real entry points in subprocesses: train with the debug config, then evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from picoseg.checkpoint import load_checkpoint, load_run
from picoseg.inference import inference_settings, predict_probabilities
from picoseg.predict import load_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, run_module):
    root = tmp_path_factory.mktemp("train")
    run_dir = root / "run"
    proc = run_module(
        "picoseg.train",
        ["debug=fast", f"paths.data_dir={root / 'data'}", f"hydra.run.dir={run_dir}"],
        cwd=root,
    )
    return run_dir, proc


def test_train_writes_checkpoints_metrics_and_report(trained_run):
    run_dir, proc = trained_run
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0
    assert set(metrics["iou"]) == {
        "road", "sidewalk", "building", "vegetation", "sky",
        "pole", "traffic_sign", "person", "car",
    }  # fmt: skip
    with open(run_dir / "per_class_iou.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows][-1] == "mean"
    assert float(rows[-1]["iou"]) == pytest.approx(metrics["miou"], abs=1e-6)
    assert "mean" in proc.stdout and "IoU" in proc.stdout
    # fit, then validate of the best checkpoint by the same trainer: the callbacks the system
    # attaches are attached once, without Lightning's "will override" report.
    assert "will override" not in proc.stdout + proc.stderr
    # stdout is a pipe here, as in `make train > log`: plain progress lines, one per epoch end
    progress = [line for line in proc.stdout.splitlines() if "picoseg.progress" in line]
    assert sum("step 4/8 " in line or "step 8/8 " in line for line in progress) == 2
    assert all("ETA" in line for line in progress if " step " in line)
    assert sum("validation | val/miou" in line for line in progress) == 2
    assert (run_dir / "val_predictions.png").stat().st_size > 0
    assert (run_dir / "curves.png").stat().st_size > 0
    assert "curves (losses, contrast terms, validation mIoU, learning rate)" in proc.stdout
    with open(run_dir / "csv" / "metrics.csv") as f:
        logged = list(csv.DictReader(f))
    assert any(r.get("train/ce") for r in logged)
    assert any(r.get("train/nce") for r in logged)
    assert float([r for r in logged if r.get("train/memory_fill")][-1]["train/memory_fill"]) > 0
    assert any(r.get("val/miou") for r in logged)


def test_checkpoint_holds_config_and_memory(trained_run):
    run_dir, _ = trained_run
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["picoseg_config"]["backbone"]["name"] == "resnet18"
    state = ckpt["state_dict"]
    # the callback pushed every step's keys: 8 images x 2 epochs, 10 pixels per class each
    assert state["memory.pixel_count"].sum() > 0 and state["memory.region_count"].sum() > 0
    assert any(k.startswith("projection.") for k in state)  # training state, not the export


def test_evaluate_from_checkpoint_reproduces_the_training_score(trained_run, tmp_path, run_module):
    run_dir, _ = trained_run
    eval_dir = tmp_path / "eval"
    run_module(
        "picoseg.evaluate",
        [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"hydra.run.dir={eval_dir}"],
        cwd=run_dir.parent,
    )
    trained = json.loads((run_dir / "metrics.json").read_text())
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["miou"] == pytest.approx(trained["miou"], abs=1e-6)
    assert (eval_dir / "val_predictions.png").is_file()
    assert (eval_dir / "confusion_matrix.png").stat().st_size > 0
    with open(eval_dir / "confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "ground_truth" and rows[0][1:] == list(evaluated["iou"])
    assert [r[0] for r in rows[1:]] == list(evaluated["iou"])
    present = [r for r in rows[1:] if r[1] != ""]
    assert present
    for row in present:
        assert sum(float(v) for v in row[1:]) == pytest.approx(1.0, abs=1e-4)


def test_slide_takes_the_training_crop_and_predict_agrees_with_evaluate(
    trained_run, tmp_path, run_module
):
    run_dir, _ = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"

    def evaluate(name: str, *overrides: str) -> dict:
        out = tmp_path / name
        run_module(
            "picoseg.evaluate",
            [f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "num_visualize=1", *overrides],
            cwd=run_dir.parent,
        )
        return json.loads((out / "metrics.json").read_text())

    slide = ["inference.mode=slide", "inference.flip=true"]
    default = evaluate("default_window", *slide)
    # debug=fast trains on 64 x 64 crops of 64 x 128 images: windows 64 x 64 every 42 pixels
    crop = evaluate("crop_window", *slide, "inference.window=[64,64]", "inference.stride=[42,42]")
    assert default == crop
    smaller = evaluate("small_window", *slide, "inference.window=[32,32]")
    assert smaller["iou"] != default["iou"]

    # In process: an image read by predict and the same image from evaluate's datamodule give
    # the same probabilities, and the same sliding windows.
    run_cfg, model = load_run(ckpt)
    assert list(run_cfg.train_crop_size) == [64, 64]
    datamodule = instantiate(run_cfg.dataset.datamodule)
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    settings = inference_settings({"mode": "slide", "flip": True}, run_cfg.train_crop_size)
    from_datamodule = predict_probabilities(model.network, batch["image"][:1], **settings)
    path = Path(run_cfg.dataset.root) / "images" / "val" / f"{batch['name'][0]}.png"
    image = load_image(path, run_cfg.dataset.datamodule.mean, run_cfg.dataset.datamodule.std)
    from_file = predict_probabilities(model.network, image[None], **settings)
    torch.testing.assert_close(from_file, from_datamodule, atol=1e-6, rtol=0)


def test_predict_writes_id_and_colour_masks(trained_run, tmp_path, run_module):
    run_dir, _ = trained_run
    images, out = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"first": (40, 56), "second": (64, 48)}
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(images / "first.png")
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(images / "second.jpg")
    run_module(
        "picoseg.predict",
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
            f"input={images}",
            f"output={out}",
            f"hydra.run.dir={tmp_path / 'predict_run'}",
            "device=cpu",
        ],
        cwd=run_dir.parent,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "first.png", "first_color.png", "second.png", "second_color.png",
    ]  # fmt: skip
    for name, (height, width) in sizes.items():
        with Image.open(out / f"{name}.png") as mask:
            assert mask.mode == "L"
            ids = np.asarray(mask)
        assert ids.shape == (height, width) and ids.max() < 9
        with Image.open(out / f"{name}_color.png") as colour:
            assert colour.mode == "RGB" and colour.size == (width, height)


def test_export_cli_writes_an_onnx_model_equal_to_the_checkpoint(trained_run, tmp_path, run_module):
    ort = pytest.importorskip("onnxruntime")
    from picoseg.export import ExportedSegmentor

    run_dir, _ = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    run_module(
        "picoseg.export",
        [f"ckpt_path={ckpt}", "input_size=[64,64]", f"hydra.run.dir={tmp_path / 'export_run'}"],
        cwd=run_dir.parent,
    )
    path = run_dir / "export" / "model.onnx"
    assert path.is_file()
    _, model = load_run(ckpt)
    images = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        expected = ExportedSegmentor(model.network.eval())(images)
    (logits,) = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)


def test_embeddings_cli_writes_scores_and_plots(trained_run, tmp_path, run_module):
    run_dir, _ = trained_run
    out = tmp_path / "embeddings"
    proc = run_module(
        "picoseg.embeddings",
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
            "pixels_per_class=15",
            f"output={out}",
            f"hydra.run.dir={tmp_path / 'embeddings_run'}",
        ],
        cwd=run_dir.parent,
    )
    scores = json.loads((out / "separation.json").read_text())
    # The debug run trains PiCo, so both the decoder and the projection embeddings are scored.
    assert set(scores) == {"decoder", "projection"}
    for source, s in scores.items():
        assert -1.0 <= s["inter"] <= s["intra"] + 1.0 and -1.0 <= s["silhouette"] <= 1.0
        assert s["num_pixels"] <= 15 * 9
        assert (out / f"{source}_tsne.png").is_file()
        assert f"{source}: intra" in proc.stdout.replace("  ", " ").replace("  ", " ")
    with open(out / "separation.csv") as f:
        assert [row["source"] for row in csv.DictReader(f)] == ["decoder", "projection"]


def test_last_checkpoint_is_the_end_of_training(trained_run):
    run_dir, _ = trained_run
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    # debug=fast: 2 epochs of 4 steps; last.ckpt holds the final step whichever epoch was best.
    assert last["global_step"] == 8 and last["epoch"] == 1
    assert best["global_step"] in (4, 8)


def test_training_without_validation_finishes_and_says_so(tmp_path, run_module):
    run_dir = tmp_path / "run"
    proc = run_module(
        "picoseg.train",
        ["debug=fast", "trainer.limit_val_batches=0", f"paths.data_dir={tmp_path / 'data'}",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["validated"] is False and metrics["miou"] is None
    assert "no validation ran" in proc.stderr + proc.stdout


def test_tensorboard_logger_writes_event_files_that_read_back(tmp_path, run_module):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    run_dir = tmp_path / "run"
    run_module(
        "picoseg.train",
        [
            "debug=fast",
            "logger=[csv,tensorboard]",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # one event file for fitting, one for the final validation: read the folder
    accumulator = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/ce", "train/nce", "val/miou"} <= tags
    with open(run_dir / "csv" / "metrics.csv") as f:
        logged = [float(r["val/miou"]) for r in csv.DictReader(f) if r.get("val/miou")]
    from_events = [e.value for e in accumulator.Scalars("val/miou")]
    assert from_events == pytest.approx(logged)  # the same values in both logs


@pytest.mark.parametrize("debug", ["fdr", "limit"])
def test_debug_options_run_on_a_folder_dataset(tmp_path, run_module, folder_tree, debug):
    root = folder_tree(tmp_path / "mine", num_train=10, num_val=3, size=(64, 96))
    run_dir = tmp_path / "run"
    run_module(
        "picoseg.train",
        [
            "dataset=folder",
            f"dataset.root={root}",
            "dataset.num_classes=3",
            "dataset.class_names=[a,b,c]",
            "dataset.datamodule.crop_size=[64,64]",
            "dataset.datamodule.batch_size=2",
            f"debug={debug}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and set(metrics["iou"]) == {"a", "b", "c"}
    if debug == "limit":
        # 10 images in batches of 2 are 5 batches an epoch, limited to 4; 2 epochs
        assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 8
        assert (run_dir / "curves.png").is_file()
    else:
        assert not (run_dir / "checkpoints").exists()  # fast_dev_run writes no checkpoint
