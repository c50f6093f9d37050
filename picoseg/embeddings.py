"""Look at what PiCo does to the embedding space:
``python -m picoseg.embeddings ckpt_path=PATH [pixels_per_class=200] [method=tsne]``.

Samples the same number of pixels of every class from the validation images (class-balanced, with
a fixed seed), takes their decoder embeddings (``SegmentationOutput.features``, what the classifier
reads) and, when the run trained one, their projection-head embeddings,
and for each:

- prints and saves a separation score: the mean cosine similarity of pixel pairs of the same class
  (intra), of pixel pairs of different classes (inter), their difference (intra - inter; higher
  is better separated) and the silhouette score with the cosine distance;
- draws a 2-D t-SNE (scikit-learn) of the samples in the dataset's palette.

Outputs go to ``<run dir>/embeddings/`` unless ``output`` is set: ``separation.json``,
``separation.csv`` and ``<source>_<method>.png`` for each source (``decoder``, ``projection``).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from picoseg.embedding_analysis import (
    checkpoint_samples,
    embed_2d,
    plot_embedding,
    separation_scores,
)
from picoseg.inference import pick_device
from picoseg.visualize import default_palette

log = logging.getLogger(__name__)


def embeddings(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Run the tool on ``cfg.ckpt_path``; returns the separation scores per source."""
    import matplotlib.pyplot as plt

    samples, run_cfg, model = checkpoint_samples(
        cfg.ckpt_path, cfg.pixels_per_class, cfg.seed, cfg.get("max_batches"), pick_device(cfg)
    )
    output = Path(cfg.output or Path(cfg.ckpt_path).resolve().parent.parent / "embeddings")
    output.mkdir(parents=True, exist_ok=True)
    palette = run_cfg.dataset.get("palette") or default_palette(model.num_classes)
    scores = {}
    for source, (z, y) in samples.items():
        scores[source] = separation_scores(z, y)
        s = scores[source]
        print(
            f"{source:>10}: intra {s['intra']:.3f}  inter {s['inter']:.3f}  gap {s['gap']:.3f}  "
            f"silhouette {s['silhouette']:.3f}  ({s['num_pixels']} pixels, "
            f"{s['num_classes']} classes)"
        )
        if cfg.method:
            points = embed_2d(z, cfg.method, cfg.seed)
            fig, ax = plt.subplots(figsize=(5, 5))
            plot_embedding(
                ax, points, y.numpy(), model.class_names, palette, f"{source} ({cfg.method})"
            )
            ax.legend(fontsize=6, markerscale=3, loc="best")
            fig.tight_layout()
            fig.savefig(output / f"{source}_{cfg.method}.png", dpi=120)
            plt.close(fig)
    (output / "separation.json").write_text(json.dumps(scores, indent=2))
    with open(output / "separation.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "intra", "inter", "gap", "silhouette", "num_pixels"])
        for source, s in scores.items():
            writer.writerow(
                [source, *(f"{s[k]:.6f}" for k in ("intra", "inter", "gap", "silhouette")),
                 s["num_pixels"]]
            )  # fmt: skip
    log.info("embedding scores and plots written to %s", output)
    return scores


@hydra.main(version_base="1.3", config_path="pkg://picoseg.conf", config_name="embeddings")
def main(cfg: DictConfig) -> None:
    embeddings(cfg)


if __name__ == "__main__":
    main()
