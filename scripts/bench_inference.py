"""Time test-time inference on one Cityscapes-size image: whole, sliding window, multi-scale, flip.

The network is a randomly initialised segmentor (weights do not change the time): HRNet-W48 with
its concatenating head by default, 19 classes. The image is 1024 x 2048, the window the
Cityscapes training crop 512 x 1024 with stride 341 x 682 (two thirds), as the reference
protocol. Rows after a warm-up pass, medians of ``--repeats`` passes (the multi-scale row: one
pass):

- whole image, scale 1;
- sliding window at scale 1, windows predicted one at a time and ``--batch-size`` at a time
  (the ratio shows what batching the windows gains);
- sliding window + scales 0.5-1.75 + flip (12 passes, the multi-scale protocol), batched.

Usage: ``python scripts/bench_inference.py [--backbone hrnet_w48] [--head hrnet]
[--threads 2] [--batch-size 4] [--skip-ms]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from picoseg.inference import _window_corners, default_stride, predict_probabilities
from picoseg.models import Backbone, Segmentor

HEAD_CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "head"
SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _count_windows(height: int, width: int, window: tuple[int, int], scales) -> int:
    """Window positions over all scales, as predict_probabilities places them."""
    stride = default_stride(window)
    return sum(
        len(_window_corners(round(height * scale), round(width * scale), window, stride)[1])
        for scale in scales
    )


def _time(network: torch.nn.Module, image: torch.Tensor, repeats: int = 1, **kwargs) -> float:
    """Median wall time of ``repeats`` calls of predict_probabilities."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_probabilities(network, image, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="hrnet_w48")
    parser.add_argument("--head", default="hrnet", help="a conf/head/<name>.yaml")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--window", type=int, nargs=2, default=(512, 1024))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="median over this many (not MS)")
    parser.add_argument("--skip-ms", action="store_true", help="leave out the multi-scale row")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = instantiate(OmegaConf.load(HEAD_CONFIGS / f"{args.head}.yaml"))
    network = Segmentor(Backbone(args.backbone), head, 19).eval()
    image = torch.randn(1, 3, args.height, args.width)
    window = tuple(args.window)
    slide = {"mode": "slide", "window": window}
    print(
        f"{args.backbone} + {args.head} head, image {args.height} x {args.width}, "
        f"window {window[0]} x {window[1]}, stride two thirds, {args.threads} threads"
    )
    _time(network, image)  # warm-up
    repeats = args.repeats
    rows = [("whole, scale 1", 1, _time(network, image, repeats))]
    single = _count_windows(args.height, args.width, window, (1.0,))
    rows.append(
        (
            "slide, scale 1, 1 window per pass",
            single,
            _time(network, image, repeats, **slide, batch_size=1),
        )
    )
    rows.append(
        (
            f"slide, scale 1, {args.batch_size} windows per pass",
            single,
            _time(network, image, repeats, **slide, batch_size=args.batch_size),
        )
    )
    if not args.skip_ms:
        windows = 2 * _count_windows(args.height, args.width, window, SCALES)
        rows.append(
            (
                f"slide + 6 scales + flip, {args.batch_size} per pass",
                windows,
                _time(
                    network, image, **slide, scales=SCALES, flip=True, batch_size=args.batch_size
                ),
            )
        )
    whole = rows[0][2]
    print(f"{'setting':<44} {'windows':>8} {'seconds':>9} {'x whole':>8}")
    for name, windows, seconds in rows:
        print(f"{name:<44} {windows:>8} {seconds:>9.1f} {seconds / whole:>8.1f}")


if __name__ == "__main__":
    main()
