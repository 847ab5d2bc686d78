from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """Shape of a feature map, without the batch dimension: what heads need to know before any data flows.

    Same fields as detectron2's ShapeSpec; every field is optional.
    """

    channels: int | None = None
    height: int | None = None
    width: int | None = None
    stride: int | None = None
