"""DBNet text-detection parts: the DB head (with DBNet++'s Adaptive Scale Fusion), target generation, losses and
polygon post-processing."""
from .asf import AdaptiveScaleFusion, ScaleChannelSpatialAttention
from .db_head import DBHead
from .losses import DBLoss, balanced_bce_loss, dice_loss, masked_l1_loss
from .postprocess import db_postprocess, order_quad, unclip
from .targets import make_db_targets, offset_polygon, shrink_offset

__all__ = ["AdaptiveScaleFusion", "ScaleChannelSpatialAttention", "DBHead", "DBLoss", "balanced_bce_loss",
           "dice_loss", "masked_l1_loss", "db_postprocess", "order_quad", "unclip", "make_db_targets",
           "offset_polygon", "shrink_offset"]
