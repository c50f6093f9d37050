"""Training throughput and memory on a GPU, with and without PiCo (called by gpu_check.sh).

For each model (the default ResNet-18 + FCN, and HRNet-W48 + OCRNet) it builds the training
system from picoseg's own configs with Cityscapes' 19 classes, then trains it with Lightning for
``--steps`` steps at the paper's crop (512 x 1024, batch 8) in bf16 mixed precision, once with
cross-entropy only (``loss=ce``) and once with PiCo (``loss=pico``: seg-aware sampling, pixel +
region memory of the reference sizes, both syntheses, contrast weighted from the first step).
The data are random images and random label maps made on the device (no dataset is needed; the
time is the model's and the loss's, not the data loader's).

Prints one line per run and a Markdown table: median step time after ``--warmup`` steps, images
per second, and peak GPU memory (``torch.cuda.max_memory_allocated``).

Usage: ``python scripts/gpu_check.py [--steps 200] [--warmup 20] [--batch 8] [--crop 512 1024]
[--precision bf16-mixed] [--models default hrnet48_ocr] [--device cuda]``. ``--device cpu`` with a
tiny crop checks the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from picoseg.contrast import MemoryBankCallback

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODELS = {
    "default": [],
    "hrnet48_ocr": ["backbone=hrnet48", "head=ocr"],
}


class RandomScenes(Dataset):
    """``length`` random (image, label) pairs of one size, 19 classes, 5 % ignored pixels."""

    def __init__(self, length: int, size: tuple[int, int], num_classes: int) -> None:
        self.length, self.size, self.num_classes = length, size, num_classes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        # Blocky labels (16 x 16 cells) so classes form regions, as in real data.
        cells = torch.randint(
            0, self.num_classes, (self.size[0] // 16, self.size[1] // 16), generator=generator
        )
        mask = cells.repeat_interleave(16, 0).repeat_interleave(16, 1)
        mask[torch.rand(self.size, generator=generator) < 0.05] = 255
        return {"image": torch.randn(3, *self.size, generator=generator), "mask": mask}


class StepTimer(L.Callback):
    """Wall time of every training step (synchronised with the device)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def run(name: str, loss: str, args: argparse.Namespace) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["dataset=cityscapes", f"loss={loss}", *MODELS[name], *args.overrides],
        )
    model = instantiate(cfg.model)
    if loss != "ce":
        model.contrast_warmup_steps = 0  # measure the contrast from the first step
    data = RandomScenes(args.steps * args.batch, tuple(args.crop), cfg.dataset.num_classes)
    loader = DataLoader(data, batch_size=args.batch, num_workers=2, pin_memory=True)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, MemoryBankCallback()],
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, train_dataloaders=loader)
    measured = timer.times[args.warmup :] or timer.times
    step = statistics.median(measured)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {
        "model": name,
        "loss": loss,
        "steps": len(timer.times),
        "step_s": step,
        "images_s": args.batch / step,
        "peak_gib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=[512, 1024])
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device visible (use --device cpu to test)")
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.models:
        for loss in ("ce", "pico"):
            row = run(name, loss, args)
            rows.append(row)
            print(
                f"{name} {loss}: {row['step_s']:.3f} s/step, {row['images_s']:.1f} images/s, "
                f"peak {row['peak_gib']:.2f} GiB ({row['steps']} steps)",
                flush=True,
            )
    crop = f"{args.crop[0]} x {args.crop[1]}"
    print(f"\n| model | loss | s/step | images/s | peak GiB |  (batch {args.batch}, crop {crop}, "
          f"{args.precision})")  # fmt: skip
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['loss']} | {r['step_s']:.3f} | {r['images_s']:.1f} "
            f"| {r['peak_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
