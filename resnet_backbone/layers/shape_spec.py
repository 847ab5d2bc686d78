from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ShapeSpec:
    """Shape of a feature map, without the batch dimension: what heads need to know before any data flows.

    Same fields as detectron2's ShapeSpec; every field is optional.
    """

    channels: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    stride: Optional[int] = None
