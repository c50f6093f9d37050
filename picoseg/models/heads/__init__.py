"""Segmentation heads, one architecture per module."""

from picoseg.models.heads.base import DecodeHead
from picoseg.models.heads.deeplabv3 import ASPP, DeepLabV3Head
from picoseg.models.heads.fcn import FCNHead

__all__ = ["ASPP", "DecodeHead", "DeepLabV3Head", "FCNHead"]
