"""Embedding analysis: class-balanced pixel samples of a trained run's embeddings, how well the
classes separate (intra- vs inter-class cosine, silhouette), and 2-D maps (t-SNE, PCA).

The library behind ``python -m picoseg.embeddings`` (:mod:`picoseg.embeddings`) and
``scripts/compare_ce_pico.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from picoseg.checkpoint import load_run
from picoseg.contrast.grid_labels import resize_labels

matplotlib.use("Agg")
log = logging.getLogger(__name__)


class ClassBalancedSampler:
    """Draws up to ``per_class`` items of every class, uniformly without replacement, from a stream.

    Every item gets an independent uniform random priority when it arrives, and each class keeps
    the ``per_class`` items with the smallest priorities seen so far. The kept set is therefore a
    uniform random subset of each class's items, whatever the order and chunking of the stream,
    and memory stays at ``num_classes x per_class`` items (not the whole validation set).

    Args:
        per_class: items kept per class (all of them for a class with fewer).
        num_classes: number of classes; a label outside ``[0, num_classes)`` is an error (drop
            ignored items before :meth:`update`).
        generator: random generator for the priorities.
    """

    def __init__(
        self, per_class: int, num_classes: int, generator: torch.Generator | None = None
    ) -> None:
        if per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {per_class}")
        self.per_class = per_class
        self.num_classes = num_classes
        self.generator = generator
        self._kept: list[tuple[torch.Tensor, dict[str, torch.Tensor]] | None] = [None] * num_classes

    def update(self, labels: torch.Tensor, **values: torch.Tensor) -> None:
        """Offer a chunk: (N,) labels and, per named source, (N, D) values of the same items."""
        priority = torch.rand(labels.numel(), generator=self.generator)
        classes = labels.unique().tolist()
        if classes and not (classes[0] >= 0 and classes[-1] < self.num_classes):
            raise ValueError(
                f"labels {[c for c in classes if not 0 <= c < self.num_classes]} are outside "
                f"[0, {self.num_classes}); drop the ignore label before sampling"
            )
        for c in classes:
            where = labels == c
            prio = priority[where]
            vals = {name: v[where] for name, v in values.items()}
            if self._kept[c] is not None:
                old_prio, old_vals = self._kept[c]
                prio = torch.cat([old_prio, prio])
                vals = {name: torch.cat([old_vals[name], v]) for name, v in vals.items()}
            if prio.numel() > self.per_class:
                top = prio.topk(self.per_class, largest=False).indices
                prio, vals = prio[top], {name: v[top] for name, v in vals.items()}
            self._kept[c] = (prio, vals)

    def result(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per source, the kept (M, D) values and (M,) labels, grouped by class in ascending id."""
        out: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for c, kept in enumerate(self._kept):
            if kept is None:
                continue
            _, vals = kept
            for name, v in vals.items():
                values, labels = out.setdefault(name, ([], []))
                values.append(v)
                labels.append(torch.full((len(v),), c, dtype=torch.long))
        return {name: (torch.cat(v), torch.cat(y)) for name, (v, y) in out.items()}


def sample_class_balanced(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    per_class: int,
    num_classes: int,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw up to ``per_class`` pixels of every class, uniformly without replacement.

    Args:
        embeddings: (N, D) pixel embeddings.
        labels: (N,) class ids in ``[0, num_classes)`` or ``ignore_index`` (skipped).
        per_class: pixels drawn per class (all of them for a class with fewer).
        num_classes: number of classes.
        generator: random generator for the draw.
        ignore_index: label of pixels that are never drawn.

    Returns:
        (M, D) embeddings and (M,) labels, grouped by class in ascending id.
    """
    sampler = ClassBalancedSampler(per_class, num_classes, generator)
    keep = labels != ignore_index
    sampler.update(labels[keep], embeddings=embeddings[keep])
    result = sampler.result()
    if not result:
        return embeddings[:0], labels[:0]
    return result["embeddings"]


def separation_scores(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Cosine-similarity separation of labelled embeddings.

    ``intra`` is the mean cosine similarity over all pairs of distinct samples of the same class,
    first averaged within each class, then over classes (so frequent classes do not dominate);
    ``inter`` is the mean over all pairs of samples of different classes, averaged per class pair,
    then over pairs; ``gap`` = intra - inter; ``silhouette`` is the mean silhouette coefficient
    with cosine distance (1 - cosine similarity). Classes with fewer than 2 samples are left out.

    Args:
        embeddings: (M, D) embeddings (normalised here).
        labels: (M,) class ids.
    """
    classes = [c for c in labels.unique().tolist() if int((labels == c).sum()) >= 2]
    keep = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
    z = F.normalize(embeddings[keep].double(), dim=1)
    y = labels[keep]
    sim = z @ z.T
    onehot = torch.stack([(y == c).double() for c in classes])  # (K, M)
    counts = onehot.sum(1)
    block = onehot @ sim @ onehot.T  # (K, K) sums of similarities between classes
    diagonal = (block.diagonal() - counts) / (counts * (counts - 1))  # own pairs, self excluded
    pairs = block / (counts[:, None] * counts[None, :])
    off = ~torch.eye(len(classes), dtype=torch.bool)
    intra = diagonal.mean()
    inter = pairs[off].mean() if off.any() else torch.tensor(float("nan"))
    # Silhouette: a = mean distance to the own class (self excluded), b = the smallest mean
    # distance to another class; s = (b - a) / max(a, b).
    distance_sums = (1.0 - sim) @ onehot.T  # (M, K)
    own = onehot.T.bool()  # (M, K)
    mean_dist = distance_sums / counts[None, :]
    a = (distance_sums[own] / (counts[None, :].expand_as(own)[own] - 1)).reshape(-1)
    b = mean_dist.masked_fill(own, float("inf")).min(1).values
    silhouette = ((b - a) / torch.maximum(a, b)).mean() if len(classes) > 1 else torch.nan
    return {
        "intra": float(intra),
        "inter": float(inter),
        "gap": float(intra - inter),
        "silhouette": float(silhouette),
        "num_pixels": int(y.numel()),
        "num_classes": len(classes),
    }


@torch.no_grad()
def collect_embeddings(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    per_class: int,
    num_classes: int,
    ignore_index: int,
    seed: int = 0,
    max_batches: int | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Class-balanced pixel samples of a trained :class:`~picoseg.system.SegmentationSystem`.

    Runs on the model's device; the samples come back on the CPU.

    The labels are nearest-resized to the embedding grid (as in training); every validation
    pixel is a candidate, and ``per_class`` are drawn per class from all of them while streaming
    (:class:`ClassBalancedSampler`), so memory does not grow with the validation set.

    Returns:
        ``{"decoder": (embeddings, labels), "projection": (...)}``, the latter only when the
        model has a projection head. Both sources use the same pixels.
    """
    sampler = ClassBalancedSampler(per_class, num_classes, torch.Generator().manual_seed(seed))
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        device = next(model.parameters()).device
        out = model.network(batch["image"].to(device))
        labels = resize_labels(batch["mask"].to(device), out.features.shape[-2:]).flatten()
        sources = {"decoder": out.features.permute(0, 2, 3, 1).flatten(0, 2)}
        if model.projection is not None:
            proj = model.projection(out.projection_input)
            if proj.shape[-2:] != out.features.shape[-2:]:
                raise ValueError(
                    f"projections {tuple(proj.shape[-2:])} and decoder features "
                    f"{tuple(out.features.shape[-2:])} are on different grids"
                )
            sources["projection"] = proj.permute(0, 2, 3, 1).flatten(0, 2)
        valid = labels != ignore_index
        sampler.update(labels[valid].cpu(), **{k: v[valid].cpu() for k, v in sources.items()})
    result = sampler.result()
    if not result:
        raise ValueError("no labelled validation pixel: every mask is the ignore label")
    return result


def embed_2d(embeddings: torch.Tensor, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(M, D) -> (M, 2) with t-SNE (cosine metric) or UMAP (needs ``umap-learn``)."""
    x = F.normalize(embeddings.float(), dim=1).numpy()
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(
            n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed
        ).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError as error:
            raise ImportError("method=umap needs umap-learn: pip install umap-learn") from error
        return umap.UMAP(metric="cosine", random_state=seed).fit_transform(x)
    raise ValueError(f"unknown method {method!r}; expected 'tsne' or 'umap'")


def plot_embedding(
    ax,
    points: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    title: str,
) -> None:
    """Scatter the 2-D points of each class in its palette colour on a matplotlib axis."""
    for c in np.unique(labels):
        where = labels == c
        colour = np.asarray(palette[int(c)], dtype=float) / 255.0
        ax.scatter(*points[where].T, s=4, color=colour, label=class_names[int(c)], alpha=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])


def checkpoint_samples(
    ckpt_path: str | Path,
    pixels_per_class: int,
    seed: int = 0,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], DictConfig, torch.nn.Module]:
    """:func:`collect_embeddings` on the validation split of a checkpoint's own dataset, with
    the model on ``device``.

    Returns:
        The samples per source (on the CPU), the run configuration and the trained system.
    """
    run_cfg, model = load_run(ckpt_path)
    model.to(device)
    datamodule = instantiate(run_cfg.dataset.datamodule)
    datamodule.prepare_data()
    datamodule.setup("validate")
    samples = collect_embeddings(
        model,
        datamodule.val_dataloader(),
        pixels_per_class,
        model.num_classes,
        model.ignore_index,
        seed=seed,
        max_batches=max_batches,
    )
    return samples, run_cfg, model
