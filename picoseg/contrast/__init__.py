"""PiCo's pixel contrast, usable without Lightning: loss, samplers, synthesis and memory bank."""

from picoseg.contrast.all_keys import AllKeys, all_keys
from picoseg.contrast.anchors import AnchorSample, sample_anchors, sample_group_pixels
from picoseg.contrast.info_nce import gathered_similarity, info_nce, info_nce_indexed
from picoseg.contrast.key_pool import KeyPool
from picoseg.contrast.key_selection import KeySelection, select_keys
from picoseg.contrast.loss import ContrastOutput, PixelContrastLoss
from picoseg.contrast.memory import (
    MemoryBank,
    MemoryBankCallback,
    MemoryCandidates,
    gather_and_push,
)
from picoseg.contrast.regions import region_embeddings
from picoseg.contrast.sampling import PixelSampler
from picoseg.contrast.synthesis import (
    NegativeSynthesis,
    SynthesisPlan,
    plan_anchor_negatives,
    plan_negative_pairs,
)

__all__ = [
    "AllKeys",
    "AnchorSample",
    "ContrastOutput",
    "KeyPool",
    "KeySelection",
    "MemoryBank",
    "MemoryBankCallback",
    "MemoryCandidates",
    "NegativeSynthesis",
    "PixelContrastLoss",
    "PixelSampler",
    "SynthesisPlan",
    "all_keys",
    "gather_and_push",
    "gathered_similarity",
    "info_nce",
    "info_nce_indexed",
    "region_embeddings",
    "sample_anchors",
    "sample_group_pixels",
    "select_keys",
    "plan_anchor_negatives",
    "plan_negative_pairs",
]
