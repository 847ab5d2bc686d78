from .boxes import rescale_boxes
from .image_list import ImageList
from .instances import Instances

__all__ = ["ImageList", "Instances", "rescale_boxes"]
