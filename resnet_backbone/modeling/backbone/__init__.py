"""Backbones. Importing a backbone module registers its builders in BACKBONE_REGISTRY."""
from .backbone import Backbone
from .build import BACKBONE_REGISTRY, build_backbone
from .fpn import FPN, LastLevelMaxPool, LastLevelP6P7, build_resnet_fpn_backbone, build_retinanet_resnet_fpn_backbone
from .resnet import ResNet, build_resnet_backbone

__all__ = [
    "Backbone", "BACKBONE_REGISTRY", "build_backbone", "ResNet", "build_resnet_backbone", "FPN",
    "LastLevelMaxPool", "LastLevelP6P7", "build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone",
]
