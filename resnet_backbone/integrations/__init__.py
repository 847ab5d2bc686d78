"""Our backbone inside other frameworks' detectors.

    resnet_backbone.integrations.torchvision   TorchvisionBackboneAdapter: the `backbone` of torchvision's FasterRCNN
    resnet_backbone.integrations.detectron2    importing it registers build_rb_* builders in detectron2's
                                               BACKBONE_REGISTRY (needs detectron2, an optional dependency)

See docs/INTEGRATIONS.md. detectron2 is not imported here: only importing its submodule needs it.
"""
from .torchvision import TorchvisionBackboneAdapter

__all__ = ["TorchvisionBackboneAdapter"]
