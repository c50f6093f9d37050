"""Embedding separation scores and class-balanced sampling, against naive references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from picoseg.embeddings import embed_2d, sample_class_balanced, separation_scores


def _naive_scores(z: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    z = F.normalize(z.double(), dim=1)
    classes = sorted(set(y.tolist()))
    members = {c: [i for i in range(len(y)) if y[i] == c] for c in classes}
    cos = lambda i, j: float(z[i] @ z[j])  # noqa: E731
    intra = np.mean(
        [np.mean([cos(i, j) for i, j in itertools.permutations(members[c], 2)]) for c in classes]
    )
    inter = np.mean(
        [
            np.mean([cos(i, j) for i in members[a] for j in members[b]])
            for a, b in itertools.permutations(classes, 2)
        ]
    )
    return {"intra": intra, "inter": inter, "gap": intra - inter}


def test_separation_scores_match_pairwise_loops_and_sklearn_silhouette():
    from sklearn.metrics import silhouette_score

    torch.manual_seed(0)
    centres = torch.randn(3, 8)
    y = torch.tensor([0] * 5 + [1] * 3 + [2] * 7)
    z = centres[y] + 0.7 * torch.randn(len(y), 8)
    scores = separation_scores(z, y)
    naive = _naive_scores(z, y)
    for key in ("intra", "inter", "gap"):
        assert scores[key] == pytest.approx(naive[key], abs=1e-9)
    reference = silhouette_score(F.normalize(z, dim=1).numpy(), y.numpy(), metric="cosine")
    assert scores["silhouette"] == pytest.approx(float(reference), abs=1e-5)
    assert scores["num_pixels"] == 15 and scores["num_classes"] == 3


def test_separation_of_perfect_clusters_and_singletons():
    # Two classes on orthogonal axes: intra 1, inter 0, silhouette 1.
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1, 2])  # class 2 has one sample and is left out
    scores = separation_scores(z, y)
    assert scores["intra"] == pytest.approx(1.0)
    assert scores["inter"] == pytest.approx(0.0)
    assert scores["silhouette"] == pytest.approx(1.0)
    assert scores["num_classes"] == 2 and scores["num_pixels"] == 4


def test_class_balanced_sampling_draws_min_of_available_and_budget():
    labels = torch.tensor([0] * 50 + [1] * 3 + [255] * 20 + [2] * 10)
    embeddings = torch.arange(len(labels)).float()[:, None]
    z, y = sample_class_balanced(embeddings, labels, 5, 3, torch.Generator().manual_seed(0))
    assert y.tolist() == [0] * 5 + [1] * 3 + [2] * 5
    index = z[:, 0].long()
    assert len(set(index.tolist())) == len(index)  # without replacement
    assert torch.equal(labels[index], y)  # each sample is a pixel of its class
    # Another seed draws other class-0 pixels.
    z2, _ = sample_class_balanced(embeddings, labels, 5, 3, torch.Generator().manual_seed(1))
    assert not torch.equal(z, z2)


def test_tsne_gives_two_coordinates_and_rejects_unknown_methods():
    z = torch.randn(30, 6)
    points = embed_2d(z, "tsne")
    assert points.shape == (30, 2) and np.isfinite(points).all()
    with pytest.raises(ValueError, match="unknown method 'pca3'"):
        embed_2d(z, "pca3")
