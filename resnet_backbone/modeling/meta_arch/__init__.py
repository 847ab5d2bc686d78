"""Detectors. Importing a detector module registers it in META_ARCH_REGISTRY."""
from . import dbnet, detr, faster_rcnn, retinanet  # noqa: F401  (registration)
from .build import META_ARCH_REGISTRY, build_model
from .dbnet import DBNet
from .detr import DETR
from .faster_rcnn import FasterRCNN
from .retinanet import RetinaNet
from .tta import FasterRCNNWithTTA, build_tta_model

__all__ = ["META_ARCH_REGISTRY", "build_model", "FasterRCNN", "RetinaNet", "DETR", "DBNet", "FasterRCNNWithTTA",
           "build_tta_model"]
