"""A small DETR config for the tests (tests/checkpoint/test_detr_converter.py, tests/modeling/detr/): our ResNet
giving C5 only and a small transformer; everything else is get_cfg()'s."""
from resnet_backbone.config import get_cfg


def tiny_detr_cfg(num_classes: int, *, depth: int = 18, hidden: int = 32, nheads: int = 4, enc: int = 1,
                  dec: int = 2, ffn: int = 64, queries: int = 10, dropout: float | None = None):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "DETR"
    r = cfg.MODEL.RESNETS
    r.DEPTH = depth
    if depth < 50:
        r.RES2_OUT_CHANNELS = 64
    r.STRIDE_IN_1X1 = False  # torchvision's ResNet (DETR's backbone): the stride in the 3x3 conv
    r.OUT_FEATURES = ["res5"]
    d = cfg.MODEL.DETR
    d.NUM_CLASSES, d.NUM_OBJECT_QUERIES, d.HIDDEN_DIM, d.NHEADS = num_classes, queries, hidden, nheads
    d.ENC_LAYERS, d.DEC_LAYERS, d.DIM_FEEDFORWARD = enc, dec, ffn
    if dropout is not None:
        d.DROPOUT = dropout
    return cfg
