"""Segmentation heads, one architecture per module."""

from picoseg.models.heads.base import DecodeHead, resolve_levels
from picoseg.models.heads.deeplabv3 import ASPP, DeepLabV3Head
from picoseg.models.heads.fcn import FCNHead
from picoseg.models.heads.maskformer import MaskFormerHead
from picoseg.models.heads.ocr import OCRHead
from picoseg.models.heads.segformer import SegFormerHead
from picoseg.models.heads.segmenter import SegmenterHead

__all__ = [
    "ASPP",
    "DecodeHead",
    "DeepLabV3Head",
    "FCNHead",
    "MaskFormerHead",
    "OCRHead",
    "SegFormerHead",
    "SegmenterHead",
    "resolve_levels",
]
