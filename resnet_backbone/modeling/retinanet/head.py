"""RetinaNet's head: torchvision's RetinaNetHead / RetinaNetClassificationHead / RetinaNetRegressionHead, with
detectron2's NUM_CONVS and NORM.

Kept from torchvision (the same as detectron2's RetinaNetHead): two subnets of 3x3 convs + ReLU shared by every
level, a 3x3 classifier with A x K sigmoid outputs (bias -log((1 - PRIOR_PROB) / PRIOR_PROB)) and a 3x3 box
regressor with A x 4 outputs, every conv N(0, 0.01) with zero bias, and the output layout (N, H x W x A, K): anchor
a of cell (y, x) is row (y * W + x) * A + a, class k its column, levels concatenated finest first. Replaced:

- the number of convs (MODEL.RETINANET.NUM_CONVS; torchvision builds 4);
- the norm (MODEL.RETINANET.NORM): "GN" / "FrozenBN" after each conv, which keeps its bias (detectron2's layout:
  conv, norm, ReLU; torchvision's GN head, retinanet_resnet50_fpn_v2, drops the bias). detectron2's "BN" / "SyncBN"
  are one BatchNorm per level (CycleBatchNormList), not implemented: refused by build.py.

Names: `head.classification_head.conv.{i}.0` (+ `.1` norm), `.cls_logits`; `head.regression_head.conv.{i}.0`,
`.bbox_reg`: torchvision's, so its checkpoints map by name; detectron2's `head.cls_subnet.{j}`, `cls_score`,
`bbox_subnet.{j}`, `bbox_pred` are renamed by checkpoint/retinanet_converter.py.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNetClassificationHead as _TVClassificationHead
from torchvision.models.detection.retinanet import RetinaNetHead as _TVHead
from torchvision.models.detection.retinanet import RetinaNetRegressionHead as _TVRegressionHead
from torchvision.ops import Conv2dNormActivation

from ...layers import get_norm

__all__ = ["RetinaNetHead", "RetinaNetClassificationHead", "RetinaNetRegressionHead", "HEAD_NORMS"]

HEAD_NORMS = ("", "none", "GN", "FrozenBN")


def _subnet(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    """`num_convs` x (3x3 conv with bias [+ norm] + ReLU), N(0, 0.01) weights and zero biases."""
    norm_layer = None if norm in ("", "none") else (lambda c: get_norm(norm, c))
    convs = nn.Sequential(*[Conv2dNormActivation(channels, channels, kernel_size=3, norm_layer=norm_layer, bias=True)
                            for _ in range(num_convs)])
    for layer in convs.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)
    return convs


class RetinaNetClassificationHead(_TVClassificationHead):
    """torchvision's classification subnet with `num_convs` convs and `norm` (module docstring)."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int = 4, norm: str = "",
                 prior_probability: float = 0.01):
        nn.Module.__init__(self)
        self.conv = _subnet(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.BETWEEN_THRESHOLDS = -2  # torchvision's Matcher.BETWEEN_THRESHOLDS (its compute_loss reads it)


class RetinaNetRegressionHead(_TVRegressionHead):
    """torchvision's box-regression subnet with `num_convs` convs and `norm` (module docstring)."""

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int = 4, norm: str = ""):
        nn.Module.__init__(self)
        self.conv = _subnet(in_channels, num_convs, norm)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))  # torchvision's compute_loss reads these
        self._loss_type = "l1"


class RetinaNetHead(_TVHead):
    """torchvision's RetinaNetHead: forward(list of (N, C, Hi, Wi) maps) -> {"cls_logits": (N, R, K),
    "bbox_regression": (N, R, 4)}, R = sum of Hi x Wi x A. Losses are computed by losses.RetinaNetLosses."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int = 4, norm: str = "",
                 prior_probability: float = 0.01):
        nn.Module.__init__(self)
        self.classification_head = RetinaNetClassificationHead(in_channels, num_anchors, num_classes, num_convs,
                                                               norm, prior_probability)
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors, num_convs, norm)

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"cls_logits": self.classification_head(x), "bbox_regression": self.regression_head(x)}
