"""Embedding separation scores and class-balanced sampling, against naive references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from picoseg.embedding_analysis import (
    ClassBalancedSampler,
    embed_2d,
    sample_class_balanced,
    separation_scores,
)


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


def test_streaming_sampler_draws_every_pixel_equally_often_whatever_the_chunk():
    # 30 pixels of class 0 arrive in chunks of 20, 5 and 5 (mixed with class 1), 6 are kept.
    # Uniform sampling without replacement keeps each pixel with probability 6/30 = 0.2; keeping
    # the first pixels seen, or favouring later chunks, would not.
    labels = torch.tensor([0] * 20 + [1] * 4 + [0] * 5 + [0] * 5)
    ids = torch.arange(len(labels)).float()[:, None]
    chunks = [(0, 24), (24, 29), (29, 34)]
    trials = 4000
    counts = torch.zeros(len(labels))
    for seed in range(trials):
        sampler = ClassBalancedSampler(6, 2, torch.Generator().manual_seed(seed))
        for a, b in chunks:
            sampler.update(labels[a:b], ids=ids[a:b], twice=2 * ids[a:b])
        result = sampler.result()
        z, y = result["ids"]
        assert y.tolist() == [0] * 6 + [1] * 4  # grouped by class, class 1 kept whole
        assert torch.equal(result["twice"][0], 2 * z)  # every source keeps the same items
        assert torch.equal(labels[z[:, 0].long()], y)
        assert len(set(z[:, 0].tolist())) == 10  # without replacement
        counts[z[:, 0].long()] += 1
    class0 = counts[labels == 0] / trials
    # Binomial(4000, 0.2): std of a frequency 0.0063, so 0.03 is more than 4.5 std.
    assert (class0 - 0.2).abs().max() < 0.03
    for a, b in chunks:  # each chunk's share of class 0 is its share of the pixels
        in_chunk = int((labels[a:b] == 0).sum())
        assert float(counts[a:b][labels[a:b] == 0].sum()) / trials == pytest.approx(
            6 * in_chunk / 30, abs=0.1
        )
    assert (counts[labels == 1] == trials).all()


def test_streaming_sampler_rejects_labels_outside_the_classes():
    sampler = ClassBalancedSampler(3, 2)
    with pytest.raises(ValueError, match=r"labels \[2, 255\] are outside \[0, 2\)"):
        sampler.update(torch.tensor([0, 2, 255]), z=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="per_class must be at least 1"):
        ClassBalancedSampler(0, 2)


def test_tsne_gives_two_coordinates_and_rejects_unknown_methods():
    z = torch.randn(30, 6)
    points = embed_2d(z, "tsne")
    assert points.shape == (30, 2) and np.isfinite(points).all()
    with pytest.raises(ValueError, match="unknown method 'pca3'"):
        embed_2d(z, "pca3")
