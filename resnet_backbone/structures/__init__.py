from .image_list import ImageList
from .instances import Instances

__all__ = ["ImageList", "Instances"]
