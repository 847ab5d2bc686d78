"""RetinaNet's parts (head, anchor labels and losses, detections) and their config builders.

torchvision's modules (RetinaNetHead, its anchor layout, torchvision.ops.sigmoid_focal_loss) where they compute what
detectron2 computes, with detectron2's keys; each file's docstring says what is kept and what differs.
`meta_arch/retinanet.py` wires them to the backbone.
"""
from .build import build_anchor_generator, build_head, build_losses, check_config
from .head import RetinaNetClassificationHead, RetinaNetHead, RetinaNetRegressionHead
from .losses import RetinaNetLosses
from .postprocess import decode_detections, rescale_detections

__all__ = ["RetinaNetHead", "RetinaNetClassificationHead", "RetinaNetRegressionHead", "RetinaNetLosses",
           "build_anchor_generator", "build_head", "build_losses", "check_config", "decode_detections",
           "rescale_detections"]
