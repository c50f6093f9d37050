"""Plain ``nn.Module`` networks: backbone, heads, segmentor and the projection head."""

from picoseg.models.backbone import Backbone, load_backbone_weights
from picoseg.models.output import SegmentationOutput
from picoseg.models.projection import ProjectionHead
from picoseg.models.segmentor import Segmentor

__all__ = ["Backbone", "ProjectionHead", "SegmentationOutput", "Segmentor", "load_backbone_weights"]
