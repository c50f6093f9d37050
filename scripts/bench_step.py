"""Where PiCo's training time goes: the `make train` step, CE vs PiCo, in one process.

Both runs are `make train`'s model (EfficientNet-Lite0 + FCN, `experiment=lite0_scenes_ce` and
`lite0_scenes_pico`), on the same `scenes` data, seed and thread count, fitted by Lightning for
``--steps`` optimiser steps (logger off). Before the PiCo fit its memory bank is filled to
capacity with random l2-normalised keys, so every timed step is a steady-state step (in `make
train` the region queues fill only after 125 of the 500 steps). A callback times each step from
batch start to batch end (forward, backward, optimiser step, the memory push); the first
``--warmup`` steps are left out and the median is reported.

The machine may be shared, so one CE fit followed by one PiCo fit can catch different loads.
``--rounds R`` alternates them R times (CE, PiCo, CE, PiCo, ...; each fit from the same seed) and
reports the PiCo / CE ratio of every round and their median; the step and part medians pool the
kept steps of all rounds. Inside PiCo's steps, the time spent in each part is accumulated by
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
Last, the floor of an exact semi-hard key selection on the run's shapes is timed on random data
(``max_anchors`` anchors against a full memory): the similarity product and the top-k that finds
each anchor's pool, the two operations no exact implementation avoids.

With ``--model paper`` the same CE vs PiCo step is timed on the paper's model instead: HRNet-W48
with the HRNetV2 head, Cityscapes' 19 classes, batch 2 (one GPU's share of the recipe's 4 x 2),
``--height`` x ``--width`` crops (512 x 1024), with the paper's PiCo settings: the composed config
of ``experiment=hrnet48_cityscapes`` for PiCo and of the same with ``loss=ce`` for CE, except that
it runs on one CPU device (no DDP, float32), without pretrained weights
(``backbone.pretrained=false``) and with ``model.contrast_warmup_steps=0``, so the contrast is on
from the first step. No dataset is read: the batches are random images and blocky random label
maps (8 x 16 blocks, each of one class, about 5 % of them the ignore label). Before timing, the
memory bank is filled to capacity with random l2-normalised keys (19 classes x 5000 pixel + 5000
region keys of dim 256), as in steady-state training; the push after each step keeps it full. A
step takes tens of seconds on a CPU, so the defaults there are ``--steps 4 --warmup 1``;
``--height 64 --width 128`` checks quickly that the mode runs.

``--profile`` adds one untimed CE fit and one PiCo fit under ``torch.profiler`` (from the first
step after the warm-up) and lists the operators whose self CPU time per step PiCo adds, largest
first: e.g. the matrix products and top-k's of the key selection.

Hydra overrides after the options change the PiCo run only (the CE run stays the reference),
e.g. ``memory.pixel_size=1000 memory.region_size=500`` for the overhead with half the memory.

Usage: ``python scripts/bench_step.py [--steps 60] [--warmup 20] [--rounds 3] [--profile]
[--threads 2] [override ...]``,
or ``python scripts/bench_step.py --model paper [--steps 4] [--warmup 1] [--height 512]
[--width 1024] [--threads 2] [override ...]``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from timing import median_time  # noqa: E402
from torch.profiler import ProfilerActivity  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from picoseg.contrast import (  # noqa: E402
    MemoryBank,
    MemoryBankCallback,
    MemoryCandidates,
    NegativeSynthesis,
    PixelSampler,
)
from picoseg.contrast.loss import PixelContrastLoss  # noqa: E402
from picoseg.system import SegmentationSystem  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
#: Steps, warm-up steps and rounds of each ``--model`` when not given.
DEFAULT_STEPS = {"default": (60, 20, 3), "paper": (4, 1, 1)}
#: Blocks of one class per synthetic label map (rows, columns), and the share of ignored ones.
LABEL_BLOCKS = (8, 16)
IGNORED_BLOCKS = 0.05
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
    which runs after every trainer callback, is inside), and the parts of that interval.

    With ``profile_from`` set, ``torch.profiler`` records every operator from that batch to the
    end of the fit, and ``operators`` holds each one's self CPU milliseconds per profiled step
    (the profiler slows the steps down: such a fit is not timed)."""

    def __init__(self, profile_from: int | None = None) -> None:
        self.steps: list[float] = []
        self.parts: list[dict[str, float]] = []
        self.operators: dict[str, float] = {}
        self._start: float | None = None
        self._profile_from = profile_from
        self._profiler: torch.profiler.profile | None = None
        self._profiled_steps = 0

    def _close(self) -> None:
        now = time.perf_counter()
        if self._start is not None:
            self.steps.append(now - self._start)
            self.parts.append(dict(_TOTALS))
        _TOTALS.clear()
        self._start = now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._close()
        if self._profiler is not None:
            self._profiled_steps += 1
        elif trainer.global_step == self._profile_from:
            self._profiler = torch.profiler.profile(activities=[ProfilerActivity.CPU])
            self._profiler.__enter__()
            self._profiled_steps = 1

    def on_train_end(self, trainer, pl_module):
        self._close()
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self.operators = {
                event.key: event.self_cpu_time_total / 1000 / self._profiled_steps
                for event in self._profiler.key_averages()
            }
            self._profiler = None


class _SyntheticBatches(Dataset):
    """Random images (3, H, W) and blocky random label maps (H, W), the same for every run:
    sample ``index`` is drawn from a generator seeded with ``index``."""

    def __init__(
        self, length: int, height: int, width: int, num_classes: int, ignore_index: int
    ) -> None:
        self.length = length
        self.size = (height, width)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        image = torch.randn(3, *self.size, generator=generator)
        blocks = torch.randint(0, self.num_classes, LABEL_BLOCKS, generator=generator)
        ignored = torch.rand(LABEL_BLOCKS, generator=generator) < IGNORED_BLOCKS
        blocks[ignored] = self.ignore_index
        mask = F.interpolate(blocks[None, None].float(), size=self.size, mode="nearest")
        return {"image": image, "mask": mask[0, 0].long()}


def fill_memory(memory: MemoryBank, seed: int = 0) -> None:
    """Fills every pixel and region queue of ``memory`` to capacity with random l2-normalised
    keys, through :meth:`MemoryBank.push` (one push per kind of queue)."""
    generator = torch.Generator().manual_seed(seed)
    classes, dim = memory.num_classes, memory.dim

    def keys(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, dim, generator=generator), dim=-1)

    if memory.use_pixel:  # one "image" holding pixel_size keys per class, no regions
        size = memory.pixel_size
        memory.push(
            MemoryCandidates(
                keys(1, classes, size),
                torch.ones(1, classes, size, dtype=torch.bool),
                torch.zeros(1, classes, dim),
                torch.zeros(1, classes, dtype=torch.bool),
            )
        )
    if memory.use_region:  # region_size "images" of one region key per class, no pixels
        size = memory.region_size
        memory.push(
            MemoryCandidates(
                torch.zeros(size, classes, 0, dim),
                torch.zeros(size, classes, 0, dtype=torch.bool),
                keys(size, classes),
                torch.ones(size, classes, dtype=torch.bool),
            )
        )
    fill = memory.fill_fraction()
    if not bool((fill == 1).all()):
        raise RuntimeError(f"fill_memory: the memory is not full after the pushes: {fill}")


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _fit(
    model: L.LightningModule,
    steps: int,
    trainer_options: dict | None = None,
    profile_from: int | None = None,
    **data: object,
) -> _Recorder:
    recorder = _Recorder(profile_from)
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
        **(trainer_options or {}),
    )
    trainer.fit(model, **data)
    return recorder


def _run(
    experiment: str,
    steps: int,
    data_dir: Path,
    output: Path,
    overrides: list[str],
    profile_from: int | None = None,
) -> tuple[_Recorder, str]:
    """One fit of ``experiment`` (``make train``'s model); returns the recorder and the
    memory's size in words (empty without a memory)."""
    cfg = _compose(
        [
            f"experiment={experiment}",
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={output}",
            "dataset.datamodule.num_workers=0",
            *overrides,
        ]
    )
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.dataset.datamodule)
    model = instantiate(cfg.model)
    what = ""
    if model.memory is not None:
        fill_memory(model.memory, seed=cfg.seed)
        what = f", {_memory_in_words(model.memory)}"
    return _fit(model, steps, profile_from=profile_from, datamodule=datamodule), what


def _memory_in_words(memory: MemoryBank) -> str:
    return (
        f"memory full from the first step: {memory.num_classes} classes x "
        f"({memory.pixel_size} pixel + {memory.region_size} region) keys of dim {memory.dim}"
    )


def _run_paper(
    method: str,
    steps: int,
    height: int,
    width: int,
    output: Path,
    overrides: list[str],
    profile_from: int | None = None,
) -> tuple[_Recorder, str]:
    """One fit of the paper's model (``experiment=hrnet48_cityscapes``, ``loss=ce`` for CE) on
    synthetic batches; returns the recorder and what was measured, in words."""
    cfg = _compose(
        [
            "experiment=hrnet48_cityscapes",
            *(["loss=ce"] if method == "ce" else []),
            f"paths.output_dir={output}",
            "backbone.pretrained=false",
            "model.contrast_warmup_steps=0",
            "trainer=cpu",
            "trainer.devices=1",
            "logger=none",
            *overrides,
        ]
    )
    L.seed_everything(cfg.seed, workers=True)
    batch_size = int(cfg.dataset.datamodule.batch_size)
    dataset = _SyntheticBatches(
        steps * batch_size, height, width, int(cfg.dataset.num_classes), cfg.dataset.ignore_index
    )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    model = instantiate(cfg.model)
    what = (
        f"{cfg.backbone.name} (pretrained={cfg.backbone.pretrained}) + HRNetV2 head, "
        f"batch {batch_size}, {height} x {width} synthetic crops, "
        f"{cfg.dataset.num_classes} classes"
    )
    if model.memory is not None:
        fill_memory(model.memory, seed=cfg.seed)
        what += f", {_memory_in_words(model.memory)}"
    options = {"devices": 1, "strategy": "auto", "precision": "32-true"}
    return _fit(model, steps, options, profile_from, train_dataloaders=loader), what


def _selection_floor(cfg: DictConfig, repeats: int = 10) -> tuple[float, float, str]:
    """Median seconds of the two operations an exact semi-hard selection cannot avoid on the
    run's shapes: the (anchors x memory keys) similarity product and the top-k that finds each
    anchor's pool (``ceil(q M)`` of M). Returns (product, top-k, the shapes in words)."""
    memory = cfg.memory
    num_keys = int(cfg.dataset.num_classes) * (
        int(memory.pixel_size) * bool(memory.use_pixel)
        + int(memory.region_size) * bool(memory.use_region)
    )
    num_anchors, dim = int(cfg.sampler.max_anchors), int(cfg.model.projection.dim)
    pool = math.ceil(float(cfg.sampler.semi_hard_fraction) * num_keys)
    generator = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(num_anchors, dim, generator=generator), dim=1)
    keys = F.normalize(torch.randn(num_keys, dim, generator=generator), dim=1)
    similarity = torch.empty(num_anchors, num_keys)

    product = median_time(lambda: torch.mm(anchors, keys.T, out=similarity), repeats)
    top = median_time(lambda: torch.topk(similarity, pool, dim=1, sorted=False), repeats)
    what = f"{num_anchors} anchors x {num_keys} keys x D {dim}, top {pool} per anchor"
    return product, top, what


def _print_operators(
    operators: dict[str, dict[str, float]], ce_step: float, rows: int = 15
) -> None:
    """The operators whose self CPU time PiCo's step adds to CE's, largest first."""
    ce, pico = operators["ce"], operators["pico"]
    added = sorted(
        ((pico.get(name, 0.0) - ce.get(name, 0.0), name) for name in set(ce) | set(pico)),
        reverse=True,
    )
    print()
    print(
        f"operators by the self CPU time PiCo adds (torch.profiler, one more fit each, ms per "
        f"step; in all: CE {sum(ce.values()):.1f}, PiCo {sum(pico.values()):.1f}):"
    )
    print(f"{'operator':<48} {'CE':>8} {'PiCo':>8} {'added':>8} {'% of CE step':>12}")
    for extra, name in added[:rows]:
        print(
            f"{name[:48]:<48} {ce.get(name, 0.0):>8.1f} {pico.get(name, 0.0):>8.1f} "
            f"{extra:>8.1f} {100 * extra / (1000 * ce_step):>12.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        choices=tuple(DEFAULT_STEPS),
        default="default",
        help="default: make train's step; paper: HRNet-W48 on Cityscapes-sized synthetic batches",
    )
    parser.add_argument("--steps", type=int, default=None, help="60 (default), 4 (paper)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="steps left out of the medians: 20 / 1"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="CE, PiCo fits alternated this often: 3 / 1"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more (untimed) CE and PiCo fit under torch.profiler: the operators whose self "
        "time PiCo adds",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--height", type=int, default=None, help="paper crop height (512)")
    parser.add_argument("--width", type=int, default=None, help="paper crop width (1024)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--output", type=Path, default=Path("outputs/bench_step"))
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides for the PiCo run only (e.g. memory.pixel_size=1000); the CE run "
        "stays the reference",
    )
    args = parser.parse_args()
    paper = args.model == "paper"
    if not paper and (args.height is not None or args.width is not None):
        parser.error("--height and --width are for --model paper")
    default_steps, default_warmup, default_rounds = DEFAULT_STEPS[args.model]
    args.steps = default_steps if args.steps is None else args.steps
    args.warmup = default_warmup if args.warmup is None else args.warmup
    args.rounds = default_rounds if args.rounds is None else args.rounds
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} leaves no step after --warmup {args.warmup}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    height = 512 if args.height is None else args.height
    width = 1024 if args.width is None else args.width
    torch.set_num_threads(args.threads)
    for label, owner, name in PARTS:
        setattr(owner, name, _timed(label, getattr(owner, name)))

    kept_steps: dict[str, list[float]] = {"ce": [], "pico": []}
    kept_parts: dict[str, list[dict[str, float]]] = {"ce": [], "pico": []}
    round_ratios = []
    what = ""

    def fit(method: str, profile_from: int | None = None) -> _Recorder:
        nonlocal what
        overrides = args.overrides if method == "pico" else []
        if paper:
            output = args.output / f"paper_{method}"
            recorder, what = _run_paper(
                method, args.steps, height, width, output, overrides, profile_from
            )
        else:
            recorder, memory_words = _run(
                f"lite0_scenes_{method}",
                args.steps,
                args.data_dir,
                args.output / method,
                overrides,
                profile_from,
            )
            if method == "pico":
                what = memory_words
        return recorder

    for _ in range(args.rounds):
        round_medians = {}
        for method in ("ce", "pico"):
            recorder = fit(method)
            kept = slice(args.warmup, None)
            kept_steps[method] += recorder.steps[kept]
            kept_parts[method] += recorder.parts[kept]
            round_medians[method] = statistics.median(recorder.steps[kept])
        round_ratios.append(round_medians["pico"] / round_medians["ce"])

    results = {}
    for method in ("ce", "pico"):
        parts = kept_parts[method]
        medians = {
            label: statistics.median(p.get(label, 0.0) for p in parts) for label, *_ in PARTS
        }
        results[method] = (statistics.median(kept_steps[method]), medians, len(parts))

    ce, pico = results["ce"][0], results["pico"][0]
    operators = {}
    if args.profile:  # after the timed rounds: the profiler's own cost stays out of them
        operators = {m: fit(m, profile_from=args.warmup).operators for m in ("ce", "pico")}
    if paper:
        print(
            f"the paper's step (experiment=hrnet48_cityscapes; CE: loss=ce), 1 CPU device, "
            f"float32, contrast from step 0: {what}"
        )
    else:
        print(f"make train's step (EfficientNet-Lite0 + FCN, batch 8, 128 x 128 crops){what}")
    print(
        f"{args.threads} threads, {args.rounds} round(s) of CE then PiCo, medians of "
        f"{results['pico'][2]} steps ({args.steps - args.warmup} per round after {args.warmup})"
    )
    if args.overrides:
        print(f"PiCo run with: {' '.join(args.overrides)}")
    print(f"{'step':<34} {'CE ms':>8} {'PiCo ms':>8}")
    print(f"{'whole step':<34} {1000 * ce:>8.1f} {1000 * pico:>8.1f}")
    print(f"PiCo / CE = {pico / ce:.2f} (overhead {100 * (pico / ce - 1):+.0f} %)")
    if args.rounds > 1:
        ratios = " ".join(f"{r:.2f}" for r in round_ratios)
        middle = statistics.median(round_ratios)
        print(
            f"PiCo / CE of each round: {ratios}; median {middle:.2f} "
            f"(overhead {100 * (middle - 1):+.0f} %)"
        )
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
    if operators:
        _print_operators(operators, ce)
    pico_cfg = _compose(
        ["experiment=hrnet48_cityscapes" if paper else "experiment=lite0_scenes_pico"]
        + args.overrides
    )
    if pico_cfg.memory.get("_target_") == "picoseg.contrast.disabled.disabled":  # memory=none
        print("\nno memory in the PiCo run: no key selection, no floor to time")
        return
    product, top, shapes = _selection_floor(pico_cfg)
    print()
    print(f"floor of an exact semi-hard selection ({shapes}):")
    for label, seconds in (
        ("similarity product", product),
        ("top-k of the pool", top),
        ("both", product + top),
    ):
        print(
            f"{label:<34} {1000 * seconds:>8.1f} {100 * seconds / ce:>12.1f} "
            f"{100 * seconds / extra if extra > 0 else float('nan'):>10.1f}"
        )


if __name__ == "__main__":
    main()
