"""BACKBONE_REGISTRY and build_backbone(cfg): detectors ask for their backbone by name."""
from __future__ import annotations

from fvcore.common.registry import Registry

from ...layers import ShapeSpec
from .backbone import Backbone

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Registry for backbones. A registered object is called as `f(cfg, input_shape: ShapeSpec)` and returns a
`Backbone`. Builder names follow detectron2's (build_resnet_backbone, build_resnet_fpn_backbone, ...).
"""


def build_backbone(cfg, input_shape: ShapeSpec | None = None) -> Backbone:
    """Build the backbone named by cfg.MODEL.BACKBONE.NAME."""
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    try:
        builder = BACKBONE_REGISTRY.get(name)
    except KeyError as e:
        known = ", ".join(sorted(k for k, _ in BACKBONE_REGISTRY))
        raise KeyError(f"MODEL.BACKBONE.NAME: no backbone named '{name}'; registered: {known}") from e
    backbone = builder(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone builder '{name}' returned {type(backbone).__name__}, not a Backbone")
    return backbone
