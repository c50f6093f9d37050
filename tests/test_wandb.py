"""Weights & Biases: the mask conversion, the media callback, multirun naming, and one offline
run of the debug config whose transaction log must hold the curves, config and media."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from torch import nn

from picoseg.wandb_media import WandbMediaCallback, validation_media, wandb_mask

NAMES = ["a", "b", "c"]


def test_wandb_mask_maps_ignore_to_its_own_named_id():
    labels = np.array([[0, 1, 2], [255, 2, 0]])
    out = wandb_mask(labels, NAMES, ignore_index=255)
    assert out["mask_data"].dtype == np.uint8
    np.testing.assert_array_equal(out["mask_data"], [[0, 1, 2], [3, 2, 0]])
    assert out["class_labels"] == {0: "a", 1: "b", 2: "c", 3: "ignore"}
    # a negative ignore label too; class 0 stays 0, and the legend is the same without ignores
    out = wandb_mask(np.array([[-1, 0], [1, -1]]), NAMES, ignore_index=-1)
    np.testing.assert_array_equal(out["mask_data"], [[3, 0], [1, 3]])
    assert wandb_mask(np.zeros((2, 2), int), NAMES, 255)["class_labels"][3] == "ignore"
    with pytest.raises(ValueError, match="found ids from 0 to 5"):
        wandb_mask(np.array([[0, 5]]), NAMES, ignore_index=255)
    with pytest.raises(ValueError, match="256 classes"):
        wandb_mask(np.zeros((2, 2), int), [str(i) for i in range(256)], ignore_index=255)


class SignNetwork(nn.Module):
    """Two-class logits from the first channel: class 0 where it is positive, else class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(logits=torch.stack([images[:, 0], -images[:, 0]], dim=1))


def _trainer(loggers, fn=TrainerFn.FITTING, epoch=0, sanity=False):
    return SimpleNamespace(
        loggers=loggers,
        sanity_checking=sanity,
        is_global_zero=True,
        state=SimpleNamespace(fn=fn),
        current_epoch=epoch,
        global_step=7,
        datamodule=SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
    )


def _batch(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(2, 3, 4, 5, generator=gen),
        "mask": torch.randint(0, 2, (2, 4, 5), generator=gen),
    }


def test_callback_is_a_no_op_without_a_wandb_logger(tmp_path):
    network = SignNetwork()
    # no last_val_scores, class_names, ...: reading any of them would fail
    module = SimpleNamespace(network=network, inference=None)
    callback = WandbMediaCallback(num_images=3)
    for loggers in ([], [CSVLogger(tmp_path)]):
        trainer = _trainer(loggers)
        callback.on_validation_epoch_start(trainer, module)
        callback.on_validation_batch_end(trainer, module, None, _batch(0), 0)
        callback.on_validation_end(trainer, module)
    assert network.calls == 0 and callback._samples == []


def test_callback_collects_the_first_images_when_due(tmp_path):
    network = SignNetwork()
    module = SimpleNamespace(network=network, inference=None)
    callback = WandbMediaCallback(num_images=3, every_n_epochs=2)
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True)  # no run started yet
    active = {
        "first epoch": _trainer([wandb_logger], epoch=0),
        "second epoch": _trainer([wandb_logger], epoch=1),
        "sanity check": _trainer([wandb_logger], epoch=1, sanity=True),
        "trainer.validate": _trainer([wandb_logger], fn=TrainerFn.VALIDATING, epoch=0),
    }
    for name, trainer in active.items():
        callback.on_validation_epoch_start(trainer, module)
        assert callback._active == (name in ("second epoch", "trainer.validate")), name
    batches = [_batch(0), _batch(1), _batch(2)]
    for i, batch in enumerate(batches):
        callback.on_validation_batch_end(active["second epoch"], module, None, batch, i)
    assert network.calls == 2  # the third batch is not needed for 3 images
    images = torch.cat([b["image"] for b in batches])[:3]
    masks = torch.cat([b["mask"] for b in batches])[:3]
    assert len(callback._samples) == 3
    for (image, labels, predictions), x, y in zip(callback._samples, images, masks, strict=True):
        expected = np.round(np.clip(x.double().numpy().transpose(1, 2, 0) * 0.25 + 0.5, 0, 1) * 255)
        np.testing.assert_array_equal(image, expected.astype(np.uint8))
        np.testing.assert_array_equal(labels, y.numpy())
        np.testing.assert_array_equal(predictions, (x[0] < 0).long().numpy())


def test_validation_media_table_holds_the_per_class_iou():
    scores = {"iou": torch.tensor([0.5, float("nan"), 0.25]), "confusion": torch.eye(3) * 4}
    sample = (np.zeros((4, 5, 3), np.uint8), np.full((4, 5), 255), np.zeros((4, 5), int))
    media = validation_media(scores, NAMES, 255, [sample, sample])
    table = media["val/iou_table"]
    assert table.columns == ["class", "iou"]
    assert table.data == [["a", 0.5], ["b", None], ["c", 0.25]]
    assert len(media["val/predictions"]) == 2
    assert "val/predictions" not in validation_media(scores, NAMES, 255, [])


def test_multirun_groups_runs_by_sweep_directory(compose_config, tmp_path):
    cfg = compose_config(["logger=wandb"])
    assert cfg.logger.wandb.group is None and cfg.logger.wandb.name is None
    assert cfg.callbacks.wandb_media._target_ == "picoseg.wandb_media.WandbMediaCallback"
    cfg = compose_config(
        [
            "logger=wandb",
            "hydra.mode=MULTIRUN",
            f"hydra.sweep.dir={tmp_path / 'sweeps' / 'lambda'}",
            "hydra.job.num=3",
        ]
    )
    assert cfg.logger.wandb.group == "lambda" and cfg.logger.wandb.name == "3"
    cfg = compose_config(["logger=[csv,wandb]"])
    assert set(cfg.logger) == {"csv", "wandb"} and "wandb_media" in cfg.callbacks
    assert "wandb_media" not in compose_config([]).callbacks


def read_transaction_log(path: Path) -> list:
    """The records of a run's ``.wandb`` file.

    The file starts with a 7-byte header (``:W&B``, magic 0xBEE1, version 0) and is cut into
    32 KiB blocks of chunks, each behind a 7-byte header (CRC-32, length, type: 1 whole record,
    2 first, 3 middle, 4 last part); a block tail too short for a header is padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B log"
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return records


def history_rows(records: list) -> list[dict]:
    """One dict per ``wandb.log`` call: ``{key: value}``, media as ``{key: {field: value}}``."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict = {}
        for item in record.history.item:
            top, *rest = item.nested_key or [item.key]
            value = json.loads(item.value_json)
            if rest:
                row.setdefault(top, {})["/".join(rest)] = value
            else:
                row[top] = value
        rows.append(row)
    return rows


@pytest.mark.slow
def test_offline_run_holds_curves_config_and_media_and_a_resume_continues_it(tmp_path, run_module):
    run_dir = tmp_path / "run"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_DISABLE_GIT": "true",
        "WANDB_X_DISABLE_STATS": "true",
    }
    args = [
        "debug=fast",
        "logger=wandb",
        "report=false",
        "callbacks.wandb_media.num_images=3",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run_dir}",
    ]

    run_module("picoseg.train", args, tmp_path, env)
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")  # save_dir is the run directory
    files = wandb_run / "files"
    (log_path,) = wandb_run.glob("run-*.wandb")
    records = read_transaction_log(log_path)

    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "picoseg" and run.run_group == ""  # a single run: no group
    config: dict = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    names = config["dataset"]["class_names"]
    assert len(names) == 9 and names[0] == "road"
    assert config["backbone"]["name"] == "resnet18" and config["trainer"]["max_epochs"] == 2
    assert config["logger"]["wandb"]["group"] is None  # the resolved config, not ${...}

    rows = history_rows(records)
    keys = set().union(*rows)
    expected = {"train/ce", "train/nce", "train/lr", "train/memory_fill", "val/miou"}
    expected |= {"val/accuracy", "val/iou_table", "val/predictions", "val/confusion_matrix"}
    assert expected <= keys
    assert any(k.startswith("val/iou/") and k[8:] in names for k in keys)
    assert [r["train/memory_fill"] for r in rows if "train/memory_fill" in r][-1] > 0

    # media after each of the 2 epochs' validations and after trainer.validate of the best
    # checkpoint, each for the validation logged just before it (not the previous one)
    media_rows = [i for i, r in enumerate(rows) if "val/iou_table" in r]
    assert len(media_rows) == 3
    for i in media_rows:
        scores = [r for r in rows[:i] if "val/miou" in r][-1]
        assert rows[i]["trainer/global_step"] == scores["trainer/global_step"]
        table = json.loads((files / rows[i]["val/iou_table"]["path"]).read_text())
        assert table["columns"] == ["class", "iou"] and [r[0] for r in table["data"]] == names
        for name, iou in table["data"]:
            if iou is None:
                assert f"val/iou/{name}" not in scores
            else:
                assert iou == pytest.approx(scores[f"val/iou/{name}"], abs=1e-6)

        predictions = rows[i]["val/predictions"]
        assert predictions["count"] == 3
        assert (predictions["height"], predictions["width"]) == (64, 128)
        assert all((files / f).is_file() for f in predictions["filenames"])
        truth, predicted = set(), set()
        for masks in predictions["all_masks"]:
            with Image.open(files / masks["ground_truth"]["path"]) as mask:
                truth |= set(np.unique(np.asarray(mask)).tolist())
            with Image.open(files / masks["prediction"]["path"]) as mask:
                predicted |= set(np.unique(np.asarray(mask)).tolist())
        assert truth <= set(range(10)) and 9 in truth  # the ignore band of the scenes
        assert predicted <= set(range(9))
        with Image.open(files / rows[i]["val/confusion_matrix"]["path"]) as picture:
            assert picture.width > 200 and picture.height > 200

    class_labels = config["_wandb"]["mask/class_labels"]
    for key in ("ground_truth", "prediction"):
        legend = class_labels[f"val/predictions_wandb_delimeter_{key}"]["value"]
        assert legend == {**{str(c): n for c, n in enumerate(names)}, "9": "ignore"}

    # The checkpoint records its W&B run; resuming from it (one more epoch, in a new run
    # directory) logs into the same run id, after the steps the first run logged.
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["picoseg_wandb_run_id"] == run.run_id
    resumed_dir = tmp_path / "resumed"
    resume = [f"hydra.run.dir={resumed_dir}", f"ckpt_path={last}", "trainer.max_epochs=3"]
    run_module("picoseg.train", [*args[:-1], *resume], tmp_path, env)
    (resumed_run,) = (resumed_dir / "wandb").glob("offline-run-*")
    assert resumed_run.name.endswith(f"-{run.run_id}")
    (resumed_log,) = resumed_run.glob("run-*.wandb")
    resumed_records = read_transaction_log(resumed_log)
    (resumed,) = [r.run for r in resumed_records if r.WhichOneof("record_type") == "run"]
    assert resumed.run_id == run.run_id
    first_steps = [r["trainer/global_step"] for r in rows if "train/ce" in r]
    resumed_steps = [
        r["trainer/global_step"] for r in history_rows(resumed_records) if "train/ce" in r
    ]
    assert resumed_steps and min(resumed_steps) >= max(first_steps)
