"""The two-stage detector's parts (RPN, RoI heads, anchors, box losses) and their config builders.

torchvision's modules where they compute what detectron2 computes, subclassed where they differ; each file's
docstring lists what is kept and what is replaced, and why. `meta_arch/faster_rcnn.py` wires them to the backbone.
"""
from .anchors import AnchorGenerator
from .build import build_roi_heads, build_rpn
from .roi_heads import RoIHeads
from .rpn import RPN, RPNHead

__all__ = ["AnchorGenerator", "RPN", "RPNHead", "RoIHeads", "build_rpn", "build_roi_heads"]
