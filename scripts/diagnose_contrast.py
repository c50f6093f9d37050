"""What does PiCo's contrast work on? Diagnostics of a trained PiCo checkpoint on training batches.

Three hypotheses for PiCo trailing its CE twin are measured (issue "Why PiCo trails CE here"):

1. **Label noise that hard mining selects.** Grid cells whose pixels mix labels (class borders)
   carry a label that stands for part of the cell only. Reported: their share among all valid
   grid cells (the base rate), among the sampled anchors, among all memory keys (for a region
   key: the share of mixed cells in its region), among the memory keys each anchor selects
   (positives, negatives) and among the hard negatives the synthesis mixes; and each
   synthesised negative's share of the InfoNCE denominator's negative mass
   ``sum exp(a.n / t)``.
2. **Stale memory.** Keys written long ago came from an older projection head. From the
   checkpoint's memory (the state at the end of training): the cosine between anchors and keys
   of their class (positives) and of other classes (negatives) by key age, and the mean age of
   the keys the selection picks against the mean age of the pool. A key's age is its position
   behind the ring's pointer (exact, in entries) divided by the class's entries per step
   (measured on the diagnostic batches), so ages in steps are estimates.
3. **Attachment point.** The cosine between the gradients of ``L_CE`` and of
   ``lambda * L_NCE`` and their norm ratio, on the tensor the projection head reads and on the
   backbone's levels (shared by both losses whatever the attachment). Run the script on
   checkpoints trained with ``head.contrast_input=decoder`` and ``fused`` to compare.

For (1), a fresh memory is filled by the checkpoint's network over the first half of the
batches while a twin memory records, for every stored key, whether its cell is mixed (a pixel
key) or the share of mixed cells in its region (a region key); the second half is measured
against it. Everything runs in eval mode (batch norm uses its running statistics), with the
run's own sampler, synthesis and label resizing.

Usage: ``python scripts/diagnose_contrast.py CHECKPOINT [--batches 16] [--seed 0]
[--output FILE.json]``. Prints markdown tables and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from picoseg.checkpoint import load_run
from picoseg.contrast import MemoryBank, MemoryCandidates
from picoseg.contrast.anchors import sample_group_pixels
from picoseg.contrast.grid_labels import mixed_cells, resize_labels
from picoseg.contrast.regions import region_embeddings
from picoseg.system import SegmentationSystem, masked_cross_entropy

#: Key age buckets in (estimated) training steps.
AGE_EDGES = (0, 10, 50, 100, 200, math.inf)


def grid_inputs(model: SegmentationSystem, batch: dict) -> dict:
    """Forward pass (no gradient) and everything on the embedding grid."""
    images, labels = batch["image"], batch["mask"]
    with torch.no_grad():
        out = model.network(images)
        projections = model.projection(out.projection_input)
    size = projections.shape[-2:]
    logits = out.logits
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear")
    return {
        "projections": projections,
        "labels": resize_labels(labels, size, model.label_resize, model.ignore_index),
        "mixed": mixed_cells(labels, size),
        "predictions": logits.argmax(1),
    }


def candidates_with_meta(
    model: SegmentationSystem, memory: MemoryBank, grid: dict, generator: torch.Generator
) -> tuple[MemoryCandidates, MemoryCandidates]:
    """The keys a batch pushes (as ``MemoryBank.select`` picks them) and, with the same layout,
    their mixed-cell flags (pixel keys) and mixed-cell shares (region keys) as 1-d "keys"."""
    projections, labels, mixed = grid["projections"], grid["labels"], grid["mixed"]
    batch, dim, height, width = projections.shape
    num_classes = memory.num_classes
    pixels, valid = sample_group_pixels(
        labels, num_classes, memory.pixels_per_image, memory.ignore_index, generator
    )
    image = torch.arange(batch).view(batch, 1, 1)
    flat = projections.reshape(batch, dim, height * width)
    pixel_keys = F.normalize(flat[image, :, pixels], dim=-1) * valid.unsqueeze(-1)
    pixel_meta = mixed.reshape(batch, -1)[image, pixels].float().unsqueeze(-1) * valid.unsqueeze(-1)
    regions, region_valid = region_embeddings(projections, labels, num_classes, memory.ignore_index)
    one_hot = F.one_hot(labels.clamp(max=num_classes).reshape(batch, -1), num_classes + 1)
    one_hot = one_hot[..., :num_classes].float()  # (B, hw, C), ignore dropped
    mixed_share = (one_hot * mixed.reshape(batch, -1, 1).float()).sum(1) / one_hot.sum(1).clamp(
        min=1
    )
    keys = MemoryCandidates(pixel_keys, valid, regions, region_valid)
    meta = MemoryCandidates(pixel_meta, valid, mixed_share.unsqueeze(-1), region_valid)
    return keys, meta


def anchors_of(model: SegmentationSystem, grid: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The run's anchors: normalised embeddings (N, D), labels (N,), and where they are."""
    sample = model.contrast.sampler.sample_anchors(
        grid["labels"], grid["predictions"], model.ignore_index
    )
    keep = sample.valid
    b, p = sample.batch[keep], sample.pixel[keep]
    projections = grid["projections"]
    flat = projections.reshape(projections.shape[0], projections.shape[1], -1)
    anchors = F.normalize(flat[b, :, p], dim=1)
    where = {"mixed": grid["mixed"].reshape(len(projections), -1)[b, p]}
    return anchors, sample.labels[keep], where


def selection_of(model: SegmentationSystem, memory: MemoryBank, anchors, labels):
    """The run's key selection in ``memory`` (with hard negatives when it synthesises)."""
    synthesis = model.contrast.synthesis
    pool = memory.key_pool()
    hard = synthesis.hard_pool if synthesis is not None else 0
    selection = model.contrast.sampler.select_keys(anchors, labels, pool, num_hard=hard)
    return pool, selection


def slot_of(memory: MemoryBank, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Storage rows -> (class, slot inside the class block, is region)."""
    stride = memory.pixel_size + memory.region_size
    return rows // stride, rows % stride, (rows % stride) >= memory.pixel_size


def key_age_entries(memory: MemoryBank, rows: torch.Tensor) -> torch.Tensor:
    """How many entries of the same class and queue were written after each key (0 = newest)."""
    cls, slot, region = slot_of(memory, rows)
    pointer = torch.where(region, memory.region_pointer[cls], memory.pixel_pointer[cls])
    size = torch.where(
        region, torch.tensor(memory.region_size), torch.tensor(max(1, memory.pixel_size))
    )
    position = torch.where(region, slot - memory.pixel_size, slot)
    return (pointer - 1 - position) % size


def mean(values: torch.Tensor) -> float:
    return float(values.float().mean()) if values.numel() else float("nan")


def gradient_agreement(model: SegmentationSystem, batch: dict, weight: float) -> dict:
    """Cosine and norm ratio of the CE and weighted contrast gradients on shared tensors."""
    images, labels = batch["image"], batch["mask"]
    levels = model.network.backbone(images)
    out = model.network.head(levels)
    ce = masked_cross_entropy(out.logits, labels, model.ignore_index)
    for aux in out.aux_logits.values():
        ce = ce + model.aux_weight * masked_cross_entropy(aux, labels, model.ignore_index)
    contrast, _, _ = model.contrast_term(out, labels)
    results = {}
    shared = {"projection input": [out.projection_input], "backbone levels": list(levels)}
    for where, tensors in shared.items():
        g_ce = torch.autograd.grad(ce, tensors, retain_graph=True, allow_unused=True)
        g_nce = torch.autograd.grad(
            weight * contrast.loss, tensors, retain_graph=True, allow_unused=True
        )
        if any(g is None for g in g_ce) or any(g is None for g in g_nce):
            results[where] = {"cosine": float("nan"), "norm_ratio": float("nan")}
            continue
        a = torch.cat([g.flatten() for g in g_ce])
        b = torch.cat([g.flatten() for g in g_nce])
        results[where] = {
            "cosine": float(F.cosine_similarity(a, b, dim=0)),
            "norm_ratio": float(b.norm() / a.norm().clamp(min=1e-12)),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    run_cfg, model = load_run(args.checkpoint)
    if model.contrast is None or model.memory is None:
        raise ValueError(f"{args.checkpoint}: not a PiCo run with a memory bank")
    datamodule = instantiate(run_cfg.dataset.datamodule, num_workers=0)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch)
        if len(batches) == args.batches:
            break
    checkpoint_memory = model.memory
    checkpoint_memory.refresh_counts()
    kwargs = {
        "num_classes": checkpoint_memory.num_classes,
        "pixel_size": checkpoint_memory.pixel_size or 1,
        "region_size": checkpoint_memory.region_size or 1,
        "pixels_per_image": checkpoint_memory.pixels_per_image,
        "use_pixel": checkpoint_memory.use_pixel,
        "use_region": checkpoint_memory.use_region,
        "ignore_index": checkpoint_memory.ignore_index,
    }
    fresh = MemoryBank(dim=checkpoint_memory.dim, **kwargs)
    meta = MemoryBank(dim=1, **kwargs)
    generator = torch.Generator().manual_seed(args.seed)
    half = len(batches) // 2
    grids = [grid_inputs(model, b) for b in batches]

    # Entries pushed per class per step, for key ages in steps.
    pixel_rate = torch.zeros(kwargs["num_classes"])
    region_rate = torch.zeros(kwargs["num_classes"])
    base_mixed, base_valid = 0, 0
    for i, grid in enumerate(grids):
        keys, flags = candidates_with_meta(model, fresh, grid, generator)
        pixel_rate += keys.pixel_valid.sum((0, 2)).float() / len(grids)
        region_rate += keys.region_valid.sum(0).float() / len(grids)
        valid = grid["labels"] != model.ignore_index
        base_mixed += int((grid["mixed"] & valid).sum())
        base_valid += int(valid.sum())
        if i < half:
            fresh.push(keys)
            meta.push(flags)

    noise = {
        "anchors": [],
        "memory keys": [],
        "positives": [],
        "negatives": [],
        "hard": [],
        "synthetic_share": [],
    }
    ages = {"selected_pos": [], "selected_neg": [], "hard": [], "pool": []}
    by_age: dict[tuple[str, str, int], list[float]] = {}
    meta_storage = meta.keys.view(-1)
    temperature = model.contrast.temperature
    for grid in grids[half:]:
        anchors, labels, where = anchors_of(model, grid)
        noise["anchors"].append(where["mixed"].float())
        # (1) against the fresh memory with its mixed-cell flags
        pool, sel = selection_of(model, fresh, anchors, labels)
        noise["memory keys"].append(meta_storage[pool.rows])
        flags = meta_storage[pool.storage_rows(sel.columns)]
        noise["positives"].append(flags[sel.is_positive & sel.valid])
        noise["negatives"].append(flags[~sel.is_positive & sel.valid])
        if sel.hard_columns.shape[1] > 0:
            noise["hard"].append(meta_storage[pool.storage_rows(sel.hard_columns)][sel.hard_valid])
        # (1) synthetic negatives' share of the negative mass, with the checkpoint's memory
        pool, sel = selection_of(model, checkpoint_memory, anchors, labels)
        synthesis = model.contrast.synthesis
        if synthesis is not None and sel.hard_columns.shape[1] > 0:
            hard = pool.storage[pool.storage_rows(sel.hard_columns)]
            synthetic, synthetic_valid = synthesis.similarities(anchors, hard, sel.hard_valid)
            real = torch.where(
                ~sel.is_positive & sel.valid, sel.similarity / temperature, -math.inf
            )
            fake = torch.where(synthetic_valid, synthetic / temperature, -math.inf)
            share = torch.exp(
                torch.logsumexp(fake, 1) - torch.logsumexp(torch.cat([real, fake], 1), 1)
            )
            noise["synthetic_share"].append(share[synthetic_valid.any(1)])
        # (2) ages in the checkpoint's memory
        rate = torch.where(
            slot_of(checkpoint_memory, pool.rows)[2],
            region_rate[pool.labels],
            pixel_rate[pool.labels],
        ).clamp(min=1e-6)
        pool_age = key_age_entries(checkpoint_memory, pool.rows).float() / rate
        ages["pool"].append(pool_age)
        column_age = pool_age[sel.columns]
        ages["selected_pos"].append(column_age[sel.is_positive & sel.valid])
        ages["selected_neg"].append(column_age[~sel.is_positive & sel.valid])
        if sel.hard_columns.shape[1] > 0:
            ages["hard"].append(pool_age[sel.hard_columns][sel.hard_valid])
        cosine = anchors @ pool.storage[pool.rows].T  # (N, M)
        same = labels.unsqueeze(1) == pool.labels.unsqueeze(0)
        is_region = slot_of(checkpoint_memory, pool.rows)[2]
        for kind, mask in (("pixel", ~is_region), ("region", is_region)):
            for b in range(len(AGE_EDGES) - 1):
                in_bucket = mask & (pool_age >= AGE_EDGES[b]) & (pool_age < AGE_EDGES[b + 1])
                for relation, pair in (("positive", same), ("negative", ~same)):
                    chosen = pair & in_bucket.unsqueeze(0)
                    if chosen.any():
                        by_age.setdefault((kind, relation, b), []).append(
                            float(cosine[chosen].mean())
                        )

    weight = float(model.contrast_weight)
    model.zero_grad()
    gradients = [gradient_agreement(model, b, weight) for b in batches[: max(1, half // 2)]]

    report = {
        "checkpoint": str(args.checkpoint),
        "label_resize": model.label_resize,
        "contrast_input": getattr(model.network.head, "contrast_input", "decoder"),
        "batches": len(batches),
        "mixed_share": {
            "grid_cells (base rate)": base_mixed / max(1, base_valid),
            **{k: mean(torch.cat(v)) if v else float("nan") for k, v in noise.items()},
        },
        "age_steps": {k: mean(torch.cat(v)) if v else float("nan") for k, v in ages.items()},
        "cosine_by_age": {
            f"{kind} {relation} [{AGE_EDGES[b]}, {AGE_EDGES[b + 1]})": sum(v) / len(v)
            for (kind, relation, b), v in sorted(by_age.items())
        },
        "gradients": {
            where: {
                k: sum(g[where][k] for g in gradients) / len(gradients)
                for k in ("cosine", "norm_ratio")
            }
            for where in gradients[0]
        },
    }
    lines = [
        f"Contrast diagnostics of `{args.checkpoint}` (label_resize={report['label_resize']}, "
        f"contrast_input={report['contrast_input']}, {len(batches)} training batches)",
        "",
        "| share on mixed-label cells | value |",
        "|---|---:|",
        *(f"| {k} | {v:.3f} |" for k, v in report["mixed_share"].items()),
        "",
        "| mean key age (steps, estimated) | value |",
        "|---|---:|",
        *(f"| {k} | {v:.1f} |" for k, v in report["age_steps"].items()),
        "",
        "| anchor-key cosine by key age (steps) | value |",
        "|---|---:|",
        *(f"| {k} | {v:.3f} |" for k, v in report["cosine_by_age"].items()),
        "",
        "| gradients of CE and lambda * NCE | cosine | norm ratio NCE / CE |",
        "|---|---:|---:|",
        *(
            f"| {k} | {v['cosine']:.3f} | {v['norm_ratio']:.3f} |"
            for k, v in report["gradients"].items()
        ),
    ]
    print("\n".join(lines))
    output = args.output or args.checkpoint.resolve().parent.parent / "contrast_diagnostics.json"
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
