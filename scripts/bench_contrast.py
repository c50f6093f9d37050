"""Benchmark of PiCo's contrast machinery on realistic sizes (CPU, 2 threads by default).

Sizes (issue 3): batch 8, 19 classes, D = 256, embeddings 128 x 256 per image, ~5% ignore pixels,
long-tailed labels, 80%-correct predictions, memory 19 x 5000 pixel + 19 x 5000 region keys, all
filled. Sampler: seg-aware anchors (1024), semi-hard memory keys (1024 positives, 2048 negatives
per anchor); synthesis (when on): 64 negative-negative + 64 negative-anchor from the 64 hardest.

Rows (medians over ``--repeats`` after one warm-up):

(a) contrast step: ``PixelContrastLoss`` forward + backward from the raw projection map (anchor
    sampling, anchor normalisation, key selection, InfoNCE, gradient w.r.t. the map) plus the
    memory push (``MemoryBank.select`` + ``gather_and_push``), with and without memory, synthesis
    on and off;
(b) lower bound: forward + backward w.r.t. the anchors of a bare ``(anchors @ keys.T).sum()`` with
    the same shapes: 1024 anchors against the 190,000 memory keys, or against the in-batch keys;
(c) a cross-entropy step (forward + backward) on (8, 19, 128, 256) logits, for scale;
(d) peak memory: each configuration runs in a fresh subprocess; once the inputs and the memory
    bank exist, freed pages go back to the OS (``malloc_trim``), the kernel's peak-RSS counter is
    reset (``/proc/self/clear_refs`` <- 5) and ``VmHWM`` is read after two steps. "extra" = peak
    - RSS at the reset: what the step itself allocates (the 268 MB gradient of the projection
    map included); "total" = peak RSS of the process (Python, torch, the 268 MB projection map,
    the 194 MB memory bank and the other inputs included);
(e) the whole step as the training system runs it: labels nearest-resized from 512 x 1024,
    predictions = argmax of the (8, 19, 128, 256) logits, then (a).

Extra rows, 1024 anchors against all 190,000 memory keys: the general chunked ``info_nce``
(any key order; the ``all`` key strategy's fallback) and ``all_keys`` (what the ``all`` key
strategy uses: keys sorted by class, three matrix products in all), with bounded memory.

Usage: ``python scripts/bench_contrast.py [--repeats 5] [--threads 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from timing import median_time

from picoseg.contrast import (
    MemoryBank,
    NegativeSynthesis,
    PixelContrastLoss,
    PixelSampler,
    gather_and_push,
    info_nce,
)
from picoseg.contrast.all_keys import all_keys
from picoseg.contrast.info_nce import mean_over_valid, per_anchor_info_nce
from picoseg.contrast.key_pool import KeyPool

BATCH, CLASSES, DIM, HEIGHT, WIDTH = 8, 19, 256, 128, 256
QUEUE = 5000
IGNORE = 255
#: name -> (memory, synthesis, key strategy)
CONFIGS = {
    "no memory, no synthesis": (False, False, "semi_hard"),
    "no memory, synthesis": (False, True, "semi_hard"),
    "memory, no synthesis": (True, False, "semi_hard"),
    "memory, synthesis": (True, True, "semi_hard"),
    "memory, all keys, no synthesis": (True, False, "all"),
}


def make_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Long-tailed Voronoi label maps, 5% ignore, 80%-correct predictions, class-structured maps."""
    gen = torch.Generator().manual_seed(seed)
    probabilities = 1.0 / torch.arange(1, CLASSES + 1).float() ** 1.1
    seeds = torch.rand(BATCH, 48, 2, generator=gen) * torch.tensor([HEIGHT * 4, WIDTH * 4])
    seed_classes = torch.multinomial(probabilities, BATCH * 48, True, generator=gen).view(BATCH, 48)
    ys, xs = torch.meshgrid(
        torch.arange(HEIGHT * 4).float(), torch.arange(WIDTH * 4).float(), indexing="ij"
    )
    coords = torch.stack([ys, xs], -1).view(-1, 2)
    full = torch.empty(BATCH, HEIGHT * 4, WIDTH * 4, dtype=torch.long)
    for b in range(BATCH):  # setup only
        nearest = torch.cdist(coords, seeds[b]).argmin(1)
        full[b] = seed_classes[b][nearest].view(HEIGHT * 4, WIDTH * 4)
    full[torch.rand(full.shape, generator=gen) < 0.05] = IGNORE
    labels = full[:, ::4, ::4].contiguous()
    wrong = torch.randint(0, CLASSES, labels.shape, generator=gen)
    predictions = torch.where(
        torch.rand(labels.shape, generator=gen) < 0.8, labels.clamp(max=CLASSES - 1), wrong
    )
    centers = F.normalize(torch.randn(CLASSES, DIM, generator=gen), dim=1)
    projections = torch.randn(BATCH, DIM, HEIGHT, WIDTH, generator=gen).mul_(0.08)
    for c in range(CLASSES):  # setup only
        projections += (labels == c).unsqueeze(1) * centers[c].view(1, DIM, 1, 1)
    logits = torch.randn(BATCH, CLASSES, HEIGHT, WIDTH, generator=gen)
    logits.scatter_add_(1, predictions.unsqueeze(1), torch.full(logits[:, :1].shape, 5.0))
    return {
        "full_labels": full,
        "labels": labels,
        "predictions": predictions,
        "projections": projections,
        "logits": logits,
        "centers": centers,
    }


def make_memory(centers: torch.Tensor, seed: int = 1) -> MemoryBank:
    memory = MemoryBank(CLASSES, DIM, QUEUE, QUEUE, 10, ignore_index=IGNORE)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in range(CLASSES):  # setup only
            noise = torch.randn(2 * QUEUE, DIM, generator=gen).mul_(0.08)
            memory.keys[c] = F.normalize(noise + centers[c], dim=1)
        memory.pixel_count.fill_(QUEUE)
        memory.region_count.fill_(QUEUE)
    memory.refresh_counts()
    return memory


def make_loss(synthesis: bool, key_strategy: str = "semi_hard") -> PixelContrastLoss:
    sampler = PixelSampler("seg_aware", key_strategy, max_anchors=1024, max_views=100, seed=0)
    return PixelContrastLoss(
        sampler,
        NegativeSynthesis(64, 64, 64, seed=0) if synthesis else None,
        temperature=0.1,
        num_classes=CLASSES,
        ignore_index=IGNORE,
    )


def contrast_step(inputs, loss_fn, memory, whole: bool) -> float:
    """One (a) step, or an (e) step when ``whole``; returns the loss value."""
    projections = inputs["projections"].detach().requires_grad_(True)
    labels, predictions = inputs["labels"], inputs["predictions"]
    if whole:
        labels = F.interpolate(
            inputs["full_labels"][:, None].float(), size=(HEIGHT, WIDTH), mode="nearest"
        )[:, 0].long()
        predictions = inputs["logits"].argmax(1)
    out = loss_fn(projections, labels, predictions, memory)
    out.loss.backward()
    if memory is not None:
        gather_and_push(memory, memory.select(projections.detach(), labels), None)
    return float(out.loss.detach())


def bound_step(anchors: torch.Tensor, keys: torch.Tensor) -> None:
    anchors.grad = None
    (anchors @ keys.T).sum().backward()


def ce_step(logits: torch.Tensor, labels: torch.Tensor) -> None:
    logits.grad = None
    F.cross_entropy(logits, labels, ignore_index=IGNORE).backward()


def dense_step(anchors: torch.Tensor, keys: torch.Tensor, labels, key_labels) -> None:
    anchors.grad = None
    info_nce(anchors, labels, keys, key_labels, chunk_size=8192).backward()


def all_keys_step(anchors: torch.Tensor, pool: KeyPool, labels: torch.Tensor) -> None:
    """The InfoNCE of key strategy ``all`` alone: every key of a class-sorted pool."""
    anchors.grad = None
    every = all_keys(anchors, labels, pool, temperature=0.1)
    positive = every.positive_valid
    loss, _, valid = per_anchor_info_nce(
        anchors=anchors,
        anchor_labels=labels,
        temperature=0.1,
        extra=every.positive_similarity,
        extra_positive=positive,
        extra_negative=torch.zeros_like(positive),
        negative_lse=every.negative_lse,
    )
    mean_over_valid(loss, valid).backward()


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(config: str) -> dict[str, float]:
    """Runs in a fresh subprocess: peak RSS of two steps of one configuration."""
    inputs = make_inputs()
    if config in ("dense info_nce 1024 x 190k", "all_keys 1024 x 190k"):
        memory = make_memory(inputs["centers"])
        keys = memory.keys.view(-1, DIM)
        key_labels = torch.arange(CLASSES).repeat_interleave(2 * QUEUE)
        anchors = F.normalize(torch.randn(1024, DIM), dim=1).requires_grad_()
        labels = torch.randint(0, CLASSES, (1024,))
        pool = KeyPool.from_keys(keys, key_labels, CLASSES)

        def step():
            if config.startswith("dense"):
                return dense_step(anchors, keys, labels, key_labels)
            return all_keys_step(anchors, pool, labels)
    elif config == "bare matmul bound (memory)":
        memory = make_memory(inputs["centers"])
        anchors = F.normalize(torch.randn(1024, DIM), dim=1).requires_grad_()

        def step():
            return bound_step(anchors, memory.keys.view(-1, DIM))
    else:
        use_memory, synthesis, key_strategy = CONFIGS[config]
        memory = make_memory(inputs["centers"]) if use_memory else None
        loss_fn = make_loss(synthesis, key_strategy)

        def step():
            return contrast_step(inputs, loss_fn, memory, whole=False)

    gc.collect()
    # Return the pages that setup freed to the OS, so the step cannot reuse them unseen.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    baseline = _status("VmRSS")
    for _ in range(2):
        step()
    peak = _status("VmHWM")
    return {"extra": (peak - baseline) / 2**20, "total": peak / 2**20}


def peak_in_subprocess(config: str, threads: int) -> dict[str, float] | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    result = subprocess.run(
        [sys.executable, __file__, "--peak", config, "--threads", str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        print(f"peak measurement failed for {config!r}:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--peak", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak:
        print(json.dumps(peak_memory(args.peak)))
        return

    started = time.perf_counter()
    inputs = make_inputs()
    centers = inputs["centers"]
    rows = []
    repeats = args.repeats
    print(
        f"torch {torch.__version__}, {args.threads} threads, {repeats} repeats (median), "
        f"load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    # (b) bounds and (c) cross-entropy.
    anchors = F.normalize(torch.randn(1024, DIM), dim=1).requires_grad_()
    memory_keys = make_memory(centers).keys.view(-1, DIM)
    in_batch_keys = F.normalize(torch.randn(1024 + BATCH * CLASSES, DIM), dim=1)
    bound_memory = median_time(lambda: bound_step(anchors, memory_keys), repeats)
    bound_batch = median_time(lambda: bound_step(anchors, in_batch_keys), repeats)
    logits = inputs["logits"].clone().requires_grad_()
    ce = median_time(lambda: ce_step(logits, inputs["labels"]), repeats)
    rows.append(("(b) bare matmul bound, 1024 x 190,000 keys", bound_memory, None))
    rows.append(("(b) bare matmul bound, 1024 x 1,176 in-batch keys", bound_batch, None))
    rows.append(("(c) cross-entropy step (8, 19, 128, 256)", ce, None))

    # (a) and (e).
    results = {}
    for name, (use_memory, synthesis, key_strategy) in CONFIGS.items():
        loss_fn = make_loss(synthesis, key_strategy)
        memory = make_memory(centers) if use_memory else None
        step_a = median_time(
            lambda f=loss_fn, m=memory: contrast_step(inputs, f, m, False), repeats
        )
        step_e = median_time(lambda f=loss_fn, m=memory: contrast_step(inputs, f, m, True), repeats)
        results[name] = (step_a, step_e)
        bound = bound_memory if use_memory else bound_batch
        rows.append((f"(a) {name}", step_a, step_a / bound))
        rows.append((f"(e) {name}", step_e, step_e / bound))
        print(f"  measured {name}", flush=True)
    dense_labels = torch.randint(0, CLASSES, (1024,))
    dense_key_labels = torch.arange(CLASSES).repeat_interleave(2 * QUEUE)
    dense = median_time(
        lambda: dense_step(anchors, memory_keys, dense_labels, dense_key_labels),
        max(1, repeats // 2),
    )
    rows.append(("dense chunked info_nce, 1024 x 190,000 keys", dense, dense / bound_memory))
    pool = KeyPool.from_keys(memory_keys, dense_key_labels, CLASSES)
    every_key = median_time(lambda: all_keys_step(anchors, pool, dense_labels), repeats)
    every_key_ratio = every_key / bound_memory
    rows.append(("all_keys (strategy all), 1024 x 190,000 keys", every_key, every_key_ratio))

    peaks = {}
    if not args.quick:
        for config in [
            *CONFIGS,
            "bare matmul bound (memory)",
            "dense info_nce 1024 x 190k",
            "all_keys 1024 x 190k",
        ]:
            peaks[config] = peak_in_subprocess(config, args.threads)

    print()
    print(f"{'row':58s} {'median s':>9s} {'/ bound':>8s}")
    print("-" * 77)
    for name, seconds, ratio in rows:
        ratio_text = f"{ratio:8.2f}" if ratio is not None else " " * 8
        print(f"{name:58s} {seconds:9.3f} {ratio_text}")
    if peaks:
        print()
        print(
            f"{'(d) peak memory (fresh subprocess, 2 steps)':58s} {'extra MB':>9s} {'total MB':>9s}"
        )
        print("-" * 78)
        for config, peak in peaks.items():
            if peak is None:
                print(f"{config:58s} {'failed':>9s}")
            else:
                print(f"{config:58s} {peak['extra']:9.0f} {peak['total']:9.0f}")
    print()
    print("ratios (a) / (b):")
    for name, (step_a, _) in results.items():
        bound = bound_memory if CONFIGS[name][0] else bound_batch
        print(f"  {name:30s} {step_a / bound:6.2f}x  ({step_a:.3f} s / {bound:.3f} s)")
    print(
        f"\nload average after: {os.getloadavg()[0]:.2f}; "
        f"total benchmark time {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
