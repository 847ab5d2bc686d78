from .batch_norm import NORM_CHOICES, FrozenBatchNorm2d, get_norm, norm_in_eval_mode
from .dropout import Dropout
from .roi_align import ThreadedMultiScaleRoIAlign
from .shape_spec import ShapeSpec
from .wrappers import Conv2d

__all__ = ["NORM_CHOICES", "FrozenBatchNorm2d", "get_norm", "norm_in_eval_mode", "ShapeSpec", "Conv2d",
           "ThreadedMultiScaleRoIAlign", "Dropout"]
