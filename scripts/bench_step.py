"""Where PiCo's training time goes: the `make train` step, CE vs PiCo, in one process.

Both runs are `make train`'s model (EfficientNet-Lite0 + FCN, `experiment=lite0_scenes_ce` and
`lite0_scenes_pico`), on the same `scenes` data, seed and thread count, fitted by Lightning for
``--steps`` optimiser steps (logger off). A callback times each step from batch start to batch end
(forward, backward, optimiser step, the memory push); the first ``--warmup`` steps are left out
and the median is reported. Inside PiCo's steps, the time spent in each part is accumulated by
wrapping the functions that do it:

- projection + contrast forward: ``SegmentationSystem.contrast_term``, of which
  - anchor sampling: ``PixelSampler.sample_anchors``,
  - key selection: ``PixelSampler.select_keys``,
  - hard negative synthesis: ``NegativeSynthesis.similarities``,
  - the rest of the loss forward (InfoNCE, gathers): ``PixelContrastLoss.forward`` minus those;
- memory push: ``MemoryBankCallback.on_train_batch_end``;
- logging: ``LightningModule.log`` (both runs).

What is left of PiCo's extra time after these is the backward pass of the projection and the
loss and everything else per step. Forward-only wrappers need no synchronisation on the CPU; on a
GPU the figures of the parts are launch times, not kernel times (the step medians stay right).

Usage: ``python scripts/bench_step.py [--steps 60] [--warmup 20] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from picoseg.contrast import MemoryBankCallback, NegativeSynthesis, PixelSampler  # noqa: E402
from picoseg.contrast.loss import PixelContrastLoss  # noqa: E402
from picoseg.system import SegmentationSystem  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
#: (label, owner, attribute) of the timed functions.
PARTS = (
    ("projection + contrast forward", SegmentationSystem, "contrast_term"),
    ("anchor sampling", PixelSampler, "sample_anchors"),
    ("key selection", PixelSampler, "select_keys"),
    ("negative synthesis", NegativeSynthesis, "similarities"),
    ("loss forward (all of it)", PixelContrastLoss, "forward"),
    ("memory push", MemoryBankCallback, "on_train_batch_end"),
    ("logging (self.log)", L.LightningModule, "log"),
)


_TOTALS: dict[str, float] = defaultdict(float)


def _timed(label: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _TOTALS[label] += time.perf_counter() - start

    return wrapper


class _Recorder(L.Callback):
    """Step wall time from one batch start to the next (so the module's own memory callback,
    which runs after every trainer callback, is inside), and the parts of that interval."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.parts: list[dict[str, float]] = []
        self._start: float | None = None

    def _close(self) -> None:
        now = time.perf_counter()
        if self._start is not None:
            self.steps.append(now - self._start)
            self.parts.append(dict(_TOTALS))
        _TOTALS.clear()
        self._start = now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._close()

    def on_train_end(self, trainer, pl_module):
        self._close()


def _run(experiment: str, steps: int, data_dir: Path, output: Path) -> _Recorder:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"experiment={experiment}",
                f"paths.data_dir={data_dir}",
                f"paths.output_dir={output}",
                "dataset.datamodule.num_workers=0",
            ],
        )
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.dataset.datamodule)
    model = instantiate(cfg.model)
    recorder = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        callbacks=[recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return recorder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the medians")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--output", type=Path, default=Path("outputs/bench_step"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for label, owner, name in PARTS:
        setattr(owner, name, _timed(label, getattr(owner, name)))

    results = {}
    for method in ("ce", "pico"):
        recorder = _run(f"lite0_scenes_{method}", args.steps, args.data_dir, args.output / method)
        kept = slice(args.warmup, None)
        steps, parts = recorder.steps[kept], recorder.parts[kept]
        medians = {
            label: statistics.median(p.get(label, 0.0) for p in parts) for label, *_ in PARTS
        }
        results[method] = (statistics.median(steps), medians, len(steps))

    ce, pico = results["ce"][0], results["pico"][0]
    print(
        f"make train's step (EfficientNet-Lite0 + FCN, batch 8, 128 x 128 crops), "
        f"{args.threads} threads, medians of {results['pico'][2]} steps after {args.warmup}"
    )
    print(f"{'step':<34} {'CE ms':>8} {'PiCo ms':>8}")
    print(f"{'whole step':<34} {1000 * ce:>8.1f} {1000 * pico:>8.1f}")
    print(f"PiCo / CE = {pico / ce:.2f} (overhead {100 * (pico / ce - 1):+.0f} %)")
    print()
    extra = pico - ce
    print(f"{'part of the PiCo step':<34} {'ms':>8} {'% of CE step':>12} {'% of extra':>10}")
    parts = results["pico"][1]
    inner = sum(parts[k] for k in ("anchor sampling", "key selection", "negative synthesis"))
    rows = [
        *[(label, parts[label]) for label, *_ in PARTS],
        ("  loss forward minus the three above", parts["loss forward (all of it)"] - inner),
        (
            "projection + loss backward, rest",
            extra
            - parts["projection + contrast forward"]
            - parts["memory push"]
            - (parts["logging (self.log)"] - results["ce"][1]["logging (self.log)"]),
        ),
    ]
    for label, seconds in rows:
        print(
            f"{label:<34} {1000 * seconds:>8.1f} {100 * seconds / ce:>12.1f} "
            f"{100 * seconds / extra if extra > 0 else float('nan'):>10.1f}"
        )


if __name__ == "__main__":
    main()
