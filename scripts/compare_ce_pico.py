"""Does PiCo help? CE vs PiCo on the embedded ``scenes`` dataset, several seeds, plus the ablation
of PiCo's components, on this machine.

Every run is a real ``python -m picoseg.train`` (``experiment=<setting>_ce`` or
``<setting>_pico``, the same model, data, optimiser and budget) in its own directory under
``--output``. ``--setting scenes`` (default) trains ResNet-18 + FCN from random weights;
``--setting lite0_scenes`` fine-tunes the ImageNet-pretrained EfficientNet-Lite0, the paper's
regime in miniature. Then, for every run, the best checkpoint's class-balanced validation pixels
are scored (:func:`picoseg.embedding_analysis.separation_scores`: intra- vs inter-class cosine
similarity, their gap and the cosine silhouette) on the decoder embeddings (what the classifier
reads) and, for PiCo runs, on the projections (what the contrast loss reads).

mIoU is reported per method as the mean with a 95 % confidence interval (Student's t over the
seeds), and as the paired difference PiCo - CE per seed with its own interval.

Ablation (first seed only), each adding one component to the previous row:

1. ``p2p``: pixel-to-pixel contrast only, pixel queue, random anchors and keys, no synthesis;
2. ``+region``: + pixel-to-region contrast with the region memory;
3. ``+hard``: + segmentation-aware anchors and semi-hard keys;
4. ``+synthesis``: + both hard negative syntheses = the full PiCo run of that seed.

``--lambdas 0.01 0.3`` adds full PiCo runs with those contrast weights (first seed only), for a
lambda table next to the default 0.1. ``--variant NAME OVERRIDE [OVERRIDE ...]`` (repeatable)
adds PiCo runs with those overrides for every seed, reported against the CE run of each seed
(e.g. ``--variant pure model.label_resize=pure``). A longer budget is another invocation with more
``--epochs`` and its own ``--output``.

The rarest classes are reported with their share of the training pixels at full resolution and
on the embedding grid the contrast loss samples from (labels nearest-resized to the decoder
features, as in training): thin classes lose most of their pixels there.

Writes ``runs.csv`` (one row per run), ``summary.md`` (per-run table, mean +- std per method, the
ablation table, wall times) and ``tsne_ce_vs_pico.png`` (decoder embeddings of the first seed's
CE and PiCo runs side by side) into ``--output``. A run whose ``metrics.json`` already exists is
not trained again, so an interrupted study resumes.

Usage: ``python scripts/compare_ce_pico.py [--setting scenes|lite0_scenes] [--seeds 0 1 2]
[--epochs 6] [--output DIR] [--no-ablation] [--lambdas L ...] [--variant NAME OVERRIDE ...]
[--pixels-per-class 200] [-- extra Hydra overrides]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch
from PIL import Image
from scipy import stats

from picoseg.contrast.grid_labels import resize_labels
from picoseg.embedding_analysis import (
    checkpoint_samples,
    embed_2d,
    plot_embedding,
    separation_scores,
)
from picoseg.visualize import default_palette

METHODS = ("ce", "pico")
SETTINGS = ("scenes", "lite0_scenes")
# Overrides of each ablation step on top of experiment=<setting>_pico.
ABLATION = {
    "p2p": [
        "loss=pico_pixel",
        "memory=pixel",
        "sampler=random",
        "sampler.key_strategy=random",
        "synthesis=none",
    ],
    "+region": [
        "memory=pixel_region",
        "sampler=random",
        "sampler.key_strategy=random",
        "synthesis=none",
    ],
    "+hard": ["synthesis=none"],
}


def train_run(name: str, overrides: list[str], output: Path, data_dir: Path) -> dict:
    """Train one run unless its metrics exist; returns its metrics with the wall time."""
    run_dir = output / name
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        start = time.perf_counter()
        command = [
            sys.executable, "-m", "picoseg.train", *overrides,
            f"hydra.run.dir={run_dir}", f"paths.data_dir={data_dir}", "logger=csv",
        ]  # fmt: skip
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command[3:])}", flush=True)
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"run {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    metrics = json.loads(metrics_file.read_text())
    wall = run_dir / "wall_seconds.txt"
    metrics["wall_s"] = float(wall.read_text()) if wall.is_file() else float("nan")
    metrics["run_dir"] = str(run_dir)
    return metrics


def class_pixel_counts(
    train_masks: Path, num_classes: int, ignore_index: int, stride: int = 1
) -> np.ndarray:
    """Training pixels per class, on the full masks (``stride`` 1) or on the grid of a
    ``stride`` times smaller map (nearest-resized as the training labels are)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for path in sorted(train_masks.glob("*.png")):
        ids = torch.from_numpy(np.asarray(Image.open(path)).astype(np.int64))
        if stride > 1:
            size = (-(-ids.shape[0] // stride), -(-ids.shape[1] // stride))
            ids = resize_labels(ids[None], size)[0]
        ids = ids[ids != ignore_index].numpy()
        counts += np.bincount(ids.ravel(), minlength=num_classes)[:num_classes]
    return counts


def embedding_stride(run_cfg, model: torch.nn.Module) -> int:
    """Ratio of the image height to the decoder feature height, from one forward pass."""
    height, width = run_cfg.dataset.datamodule.crop_size
    with torch.no_grad():
        features = model.network(torch.zeros(1, 3, height, width)).features
    return height // features.shape[-2]


def embedding_scores(run_dir: Path, pixels_per_class: int) -> tuple[dict, dict | None, tuple]:
    """Separation scores of the decoder embeddings of a run's best checkpoint, of its
    projections (``None`` without a projection head), and the decoder samples."""
    samples, run_cfg, model = checkpoint_samples(
        run_dir / "checkpoints" / "best.ckpt", pixels_per_class, seed=0
    )
    z, y = samples["decoder"]
    projection = separation_scores(*samples["projection"]) if "projection" in samples else None
    return separation_scores(z, y), projection, (z, y, run_cfg, model)


def epoch_means(run_dir: Path, key: str) -> list[float]:
    """Mean of a logged training value per epoch, from the run's ``csv/metrics.csv``."""
    by_epoch: dict[int, list[float]] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                by_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
    return [statistics.mean(by_epoch[e]) for e in sorted(by_epoch)]


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} +- {100 * statistics.stdev(values):.1f}"


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided Student-t confidence interval of the mean
    (half-width ``nan`` for a single value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, float("nan")
    t = stats.t.ppf(0.5 + level / 2, df=len(values) - 1)
    return mean, float(t * statistics.stdev(values) / len(values) ** 0.5)


def mean_ci(values: list[float]) -> str:
    """``mean [low, high]`` in percent, or the value alone for one seed."""
    mean, half = confidence_interval(values)
    if half != half:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} [{100 * (mean - half):.1f}, {100 * (mean + half):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--setting", choices=SETTINGS, default="scenes", help="experiment=<setting>_ce|_pico"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--output", type=Path, default=Path("outputs/study"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--pixels-per-class", type=int, default=200)
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument(
        "--lambdas", type=float, nargs="*", default=[], help="extra PiCo contrast weights"
    )
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "OVERRIDE"),
        help="a PiCo variant run for every seed: its name, then its Hydra overrides",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    common = [f"trainer.max_epochs={args.epochs}", *args.overrides]
    study_start = time.perf_counter()

    experiment = {m: f"experiment={args.setting}_{m}" for m in METHODS}
    runs = []  # (method, seed, name)
    for seed in args.seeds:
        for method in METHODS:
            runs.append(
                (method, seed, f"{method}_seed{seed}", [experiment[method], f"seed={seed}"])
            )
    if not args.no_ablation:
        seed = args.seeds[0]
        for step, overrides in ABLATION.items():
            name = f"ablation_{step.lstrip('+')}_seed{seed}"
            runs.append((step, seed, name, [experiment["pico"], *overrides, f"seed={seed}"]))
    variants = {v[0]: v[1:] for v in args.variant}
    for variant, overrides in variants.items():
        if not overrides or variant in METHODS:
            raise SystemExit(f"--variant {variant}: give a new name and at least one override")
        for seed in args.seeds:
            name = f"{variant}_seed{seed}"
            runs.append((f"variant {variant}", seed, name, [experiment["pico"], *overrides,
                                                              f"seed={seed}"]))  # fmt: skip
    for weight in args.lambdas:
        seed = args.seeds[0]
        name = f"pico_lambda{weight:g}_seed{seed}"
        overrides = [experiment["pico"], f"model.contrast_weight={weight}", f"seed={seed}"]
        runs.append((f"lambda {weight:g}", seed, name, overrides))

    rows, samples = [], {}
    for method, seed, name, overrides in runs:
        metrics = train_run(name, [*overrides, *common], output, args.data_dir.resolve())
        scores, projection, sample = embedding_scores(
            Path(metrics["run_dir"]), args.pixels_per_class
        )
        if seed == args.seeds[0] and method in METHODS:
            samples[method] = sample
        run_dir = Path(metrics["run_dir"])
        curves = {k: epoch_means(run_dir, f"train/{k}") for k in ("ce", "nce")}
        rows.append(
            {
                "method": method,
                "seed": seed,
                "name": name,
                **metrics,
                "sep": scores,
                "proj": projection,
                **curves,
            }
        )

    _, _, run_cfg, model = samples["ce"]
    class_names = list(model.class_names)
    masks = Path(run_cfg.dataset.root) / "masks" / "train"
    if not masks.is_dir():
        raise FileNotFoundError(f"{masks}: training masks of the scenes dataset not found")
    ignore = run_cfg.dataset.ignore_index
    counts = class_pixel_counts(masks, len(class_names), ignore)
    rare = [class_names[i] for i in np.argsort(counts)[:3]]
    share = counts / counts.sum()
    stride = embedding_stride(run_cfg, model)
    grid_share = class_pixel_counts(masks, len(class_names), ignore, stride)
    grid_share = grid_share / grid_share.sum()

    columns = ["method", "seed", "miou", *[f"iou/{c}" for c in rare], "sep_gap", "silhouette",
               "intra", "inter", "proj_gap", "proj_silhouette", "ce_last_epoch",
               "nce_first_epoch", "nce_last_epoch", "wall_s"]  # fmt: skip
    with open(output / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(
                [r["method"], r["seed"], f"{r['miou']:.4f}",
                 *(f"{(r['iou'][c] or 0.0):.4f}" for c in rare),
                 *(f"{r['sep'][k]:.4f}" for k in ("gap", "silhouette", "intra", "inter")),
                 *(f"{r['proj'][k]:.4f}" if r["proj"] else "" for k in ("gap", "silhouette")),
                 f"{r['ce'][-1]:.4f}",
                 *((f"{r['nce'][0]:.3f}", f"{r['nce'][-1]:.3f}") if r["nce"] else ("", "")),
                 f"{r['wall_s']:.0f}"]
            )  # fmt: skip

    lines = [
        f"CE vs PiCo on `scenes` (`experiment={args.setting}_ce|pico`), {args.epochs} epochs "
        f"per run, seeds {args.seeds}; rarest "
        f"classes by training pixels (share of all pixels; share of the stride-{stride} "
        "embedding grid's cells): "
        + ", ".join(
            f"{c} ({100 * share[class_names.index(c)]:.2f}%; "
            f"{100 * grid_share[class_names.index(c)]:.2f}%)"
            for c in rare
        )
        + ". mIoU and IoU in %; separation (cosine; gap = intra - inter) of the decoder "
        "embeddings and, for PiCo, of the projections.",
        "",
        "| run | seed | mIoU | "
        + " | ".join(rare)
        + " | gap | silhouette | proj. gap | proj. silhouette | train CE (last epoch)"
        " | train NCE (first -> last) | wall (s) |",
        "|---|---:|---:|" + "---:|" * len(rare) + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        nce = f"{r['nce'][0]:.2f} -> {r['nce'][-1]:.2f}" if r["nce"] else "-"
        proj = f"{r['proj']['gap']:.3f} | {r['proj']['silhouette']:.3f}" if r["proj"] else "- | -"
        lines.append(
            f"| {r['method']} | {r['seed']} | {100 * r['miou']:.1f} | "
            + " | ".join(f"{100 * (r['iou'][c] or 0.0):.1f}" for c in rare)
            + f" | {r['sep']['gap']:.3f} | {r['sep']['silhouette']:.3f} | {proj}"
            + f" | {r['ce'][-1]:.3f} | {nce} | {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "| method | mIoU, mean [95% CI] | "
        + " | ".join(rare)
        + " | gap | silhouette | proj. gap | proj. silhouette |",
        "|---|---:|" + "---:|" * len(rare) + "---:|---:|---:|---:|",
    ]
    for method in METHODS:
        group = [r for r in rows if r["method"] == method]
        spread = len(group) > 1

        def spread_of(values: list[float], spread: bool = spread) -> str:
            return f"{statistics.mean(values):.3f}" + (
                f" +- {statistics.pstdev(values):.3f}" if spread else ""
            )

        projected = [r["proj"] for r in group if r["proj"]]
        proj = (
            spread_of([p["gap"] for p in projected])
            + " | "
            + spread_of([p["silhouette"] for p in projected])
            if projected
            else "- | -"
        )
        lines.append(
            f"| {method} ({len(group)} seed{'s' if spread else ''}) | "
            f"{mean_ci([r['miou'] for r in group])} | "
            + " | ".join(mean_std([r["iou"][c] or 0.0 for r in group]) for c in rare)
            + f" | {spread_of([r['sep']['gap'] for r in group])}"
            + f" | {spread_of([r['sep']['silhouette'] for r in group])} | {proj} |"
        )
    by_seed = {(r["method"], r["seed"]): r["miou"] for r in rows if r["method"] in METHODS}
    differences = [by_seed["pico", s] - by_seed["ce", s] for s in args.seeds]
    wins = sum(d > 0 for d in differences)
    lines += [
        "",
        f"PiCo - CE, paired by seed: {mean_ci(differences)} mIoU points (mean [95% CI]); "
        f"per seed {', '.join(f'{100 * d:+.1f}' for d in differences)}; PiCo ahead in {wins} "
        f"of {len(differences)} seeds.",
    ]
    if variants:
        lines += [
            "",
            "PiCo variants, every seed; each run against the CE run of its seed (paired):",
            "",
            "| variant | overrides | mIoU, mean [95% CI] | - CE, paired [95% CI] | ahead of CE "
            "| " + " | ".join(rare) + " | gap | proj. gap |",
            "|---|---|---:|---:|---:|" + "---:|" * len(rare) + "---:|---:|",
        ]
        for variant, overrides in [("pico", ["(default)"]), *variants.items()]:
            method = variant if variant == "pico" else f"variant {variant}"
            group = {r["seed"]: r for r in rows if r["method"] == method}
            seeds = [s for s in args.seeds if s in group]
            diff = [group[s]["miou"] - by_seed["ce", s] for s in seeds]
            lines.append(
                f"| {variant} | `{' '.join(overrides)}` | "
                f"{mean_ci([group[s]['miou'] for s in seeds])} | {mean_ci(diff)} | "
                f"{sum(d > 0 for d in diff)} of {len(diff)} | "
                + " | ".join(mean_std([group[s]["iou"][c] or 0.0 for s in seeds]) for c in rare)
                + f" | {statistics.mean(group[s]['sep']['gap'] for s in seeds):.3f}"
                + f" | {statistics.mean(group[s]['proj']['gap'] for s in seeds):.3f} |"
            )
    if not args.no_ablation:
        first = args.seeds[0]
        lines += [
            "",
            f"Ablation (seed {first}):",
            "",
            "| components | mIoU | gap |",
            "|---|---:|---:|",
        ]
        ce = next(r for r in rows if r["method"] == "ce" and r["seed"] == first)
        lines.append(f"| CE only | {100 * ce['miou']:.1f} | {ce['sep']['gap']:.3f} |")
        for step in ABLATION:
            r = next(r for r in rows if r["method"] == step)
            lines.append(f"| {step} | {100 * r['miou']:.1f} | {r['sep']['gap']:.3f} |")
        pico = next(r for r in rows if r["method"] == "pico" and r["seed"] == first)
        lines.append(
            f"| +synthesis (= PiCo) | {100 * pico['miou']:.1f} | {pico['sep']['gap']:.3f} |"
        )
    if args.lambdas:
        first = args.seeds[0]
        lines += [
            "",
            f"Contrast weight lambda (PiCo, seed {first}; 0.1 is the default run):",
            "",
            "| lambda | mIoU | " + " | ".join(rare) + " | gap | train NCE (last epoch) |",
            "|---:|---:|" + "---:|" * len(rare) + "---:|---:|",
        ]
        pico = next(r for r in rows if r["method"] == "pico" and r["seed"] == first)
        extra = [r for r in rows if r["method"].startswith("lambda ")]
        weights = [*args.lambdas, 0.1]
        for weight, r in sorted(zip(weights, [*extra, pico], strict=True), key=lambda t: t[0]):
            lines.append(
                f"| {weight:g} | {100 * r['miou']:.1f} | "
                + " | ".join(f"{100 * (r['iou'][c] or 0.0):.1f}" for c in rare)
                + f" | {r['sep']['gap']:.3f} | {r['nce'][-1]:.2f} |"
            )
    wall = time.perf_counter() - study_start
    trained = sum(r["wall_s"] for r in rows)
    lines += [
        "",
        f"Wall time: {trained / 60:.1f} min of training ({len(rows)} runs, each timed when it "
        f"trained); this invocation {wall / 60:.1f} min (runs already trained are reused).",
    ]
    (output / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = run_cfg.dataset.get("palette") or default_palette(len(class_names))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, method in zip(axes, ("ce", "pico"), strict=True):
        z, y, _, _ = samples[method]
        r = next(r for r in rows if r["method"] == method and r["seed"] == args.seeds[0])
        title = (
            f"{method.upper()} seed {args.seeds[0]}: mIoU {100 * r['miou']:.1f}, "
            f"gap {r['sep']['gap']:.3f}, silhouette {r['sep']['silhouette']:.3f}"
        )
        plot_embedding(ax, embed_2d(z, "tsne", 0), y.numpy(), class_names, palette, title)
    axes[1].legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("t-SNE of decoder embeddings, class-balanced validation pixels")
    fig.tight_layout()
    fig.savefig(output / "tsne_ce_vs_pico.png", dpi=110)


if __name__ == "__main__":
    main()
