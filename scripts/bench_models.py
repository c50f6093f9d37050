"""Model zoo benchmark: parameters, FLOPs and CPU latency per architecture, with and without
PiCo's projection head.

Every model is built from picoseg's own configs (``head=`` / ``backbone=`` as on the command
line, Cityscapes' 19 classes, PiCo's default projection head), so the table describes exactly what
``python -m picoseg.train head=... backbone=...`` trains.

Columns:
- params: parameters of the inference network (backbone + head + classifier), what is exported;
- +proj: parameters of the training-only projection head;
- GFLOPs: floating point operations of one forward pass of the inference network on one
  ``--size`` x ``--size`` image, counted by ``torch.utils.flop_counter`` (a multiply-add counts 2;
  papers that quote "FLOPs" usually mean multiply-adds, i.e. half this number). Only matrix
  products and convolutions are counted;
- latency: median wall time of that forward pass on the CPU (``--threads`` threads, after one
  warm-up, ``--repeats`` runs), without and with the projection head applied to the decoder
  embeddings (the with-column is a training-time cost: inference never runs the projection head);
- +proj GFLOPs: the projection head's own FLOPs on those embeddings (training only).

Usage: ``python scripts/bench_models.py [--size 512] [--threads 2] [--repeats 3] [--only NAME ...]
[--markdown]``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from timing import median_time
from torch.utils.flop_counter import FlopCounterMode

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

#: (row name, Hydra overrides): each architecture on the backbone the PiCo paper pairs it with,
#: plus the light variants.
MODELS: dict[str, list[str]] = {
    "DeepLabV3 MobileNetV2": ["head=deeplabv3", "backbone=mobilenetv2"],
    "DeepLabV3 ResNet-101c D8": ["head=deeplabv3", "backbone=resnet101c"],
    "HRNetV2 W18-small": ["head=hrnet", "backbone=hrnet18_small"],
    "HRNetV2 W48": ["head=hrnet", "backbone=hrnet48"],
    "OCRNet HRNet-W48": ["head=ocr", "backbone=hrnet48"],
    "SegFormer MiT-B0": ["head=segformer", "backbone=mit_b0"],
    "SegFormer MiT-B2": ["head=segformer", "backbone=mit_b2"],
    "Segmenter ViT-S/16": ["head=segmenter", "backbone=vit_small"],
    "Segmenter ViT-B/16": ["head=segmenter", "backbone=vit_base"],
    "MaskFormer ResNet-50": ["head=maskformer", "backbone=resnet50", "backbone.output_stride=null"],
    "MaskFormer ResNet-101": [
        "head=maskformer",
        "backbone=resnet101",
        "backbone.output_stride=null",
    ],
}


def build(overrides: list[str]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(inference network, projection head) as the training config builds them."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["dataset=cityscapes", "loss=pico", *overrides],
        )
    system = instantiate(cfg.model)
    # Inference only: no parameter needs a gradient (torch's flop counter hooks would track them).
    return system.network.eval().requires_grad_(False), system.projection.eval().requires_grad_(
        False
    )


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def measure(name: str, overrides: list[str], size: int, repeats: int) -> dict:
    network, projection = build(overrides)
    images = torch.randn(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        features = network(images).projection_input
    flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        projection(features)
    projection_flops = counter.get_total_flops()
    plain = median_time(lambda: network(images), repeats)
    with_projection = median_time(lambda: projection(network(images).projection_input), repeats)
    return {
        "model": name,
        "params_m": count(network) / 1e6,
        "projection_m": count(projection) / 1e6,
        "gflops": flops / 1e9,
        "projection_gflops": projection_flops / 1e9,
        "latency_s": plain,
        "latency_proj_s": with_projection,
    }


def table(rows: list[dict], size: int, threads: int) -> str:
    lines = [
        f"| model | params (M) | +proj (M) | GFLOPs @{size} | +proj GFLOPs | CPU s ({threads} thr) "
        "| CPU s + proj |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params_m']:.1f} | {r['projection_m']:.2f} | {r['gflops']:.1f} "
            f"| {r['projection_gflops']:.1f} | {r['latency_s']:.2f} | {r['latency_proj_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="row names (substring match) to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, overrides in MODELS.items():
        if args.only and not any(s.lower() in name.lower() for s in args.only):
            continue
        rows.append(measure(name, overrides, args.size, args.repeats))
        r = rows[-1]
        print(
            f"{name}: {r['params_m']:.1f} M params, {r['gflops']:.1f} GFLOPs, "
            f"{r['latency_s']:.2f} s / {r['latency_proj_s']:.2f} s with projection",
            flush=True,
        )
    print()
    print(table(rows, args.size, args.threads))


if __name__ == "__main__":
    main()
