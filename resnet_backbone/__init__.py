"""resnet_backbone: one ResNet backbone (C2-C5), an FPN neck, and Faster R-CNN / DETR / DBNet on top.

    from resnet_backbone.config import get_cfg
    from resnet_backbone.modeling import build_backbone, build_model
"""
__version__ = "0.1.0"
