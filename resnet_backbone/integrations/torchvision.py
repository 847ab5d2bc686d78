"""Our backbone as the `backbone` argument of torchvision's detection models (FasterRCNN, RetinaNet, ...).

torchvision's detectors want two things from a backbone: an `out_channels` attribute (one int, shared by every
feature map) and a forward that returns an OrderedDict of feature maps whose names the RoI pooler refers to.
Our backbones return a plain dict named "p2".."p6" (FPN) or "res2".."res5" (ResNet) and describe themselves with
`output_shape()`. `TorchvisionBackboneAdapter` bridges the two without touching the wrapped module.

    from torchvision.models.detection import FasterRCNN
    adapter = TorchvisionBackboneAdapter(fpn)                       # names "0", "1", "2", "3", "pool"
    model = FasterRCNN(adapter, num_classes=3)                      # torchvision's default anchors and pooler fit

With `names="ours"` the maps keep our names and the pooler / anchors come from `adapter.box_roi_pool()` and
`adapter.anchor_generator()`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

__all__ = ["TorchvisionBackboneAdapter"]

_NAME_STYLES = ("torchvision", "ours")


class TorchvisionBackboneAdapter(nn.Module):
    """Wrap one of our backbones so torchvision's detection models accept it.

    Args:
        backbone: a backbone of ours (anything with `forward(x) -> dict` and `output_shape()`), kept as
            `self.body`, so its weights live under "backbone.body.*" inside a torchvision detector.
        out_features: which of the backbone's outputs to pass on, in stride order (default: all of them).
            They must share one channel count: torchvision's heads take a single `out_channels`.
        names: "torchvision" renames the maps the way torchvision's own FPN backbones do ("0", "1", ... and "pool"
            for the extra stride-64 level P6 from the FPN top block), so `FasterRCNN(adapter, num_classes=K)` works
            with torchvision's default anchor generator and RoI pooler. "ours" keeps "p2".."p6".
    """

    def __init__(self, backbone: nn.Module, out_features: Sequence[str] | None = None, names: str = "torchvision"):
        super().__init__()
        if names not in _NAME_STYLES:
            raise ValueError(f"TorchvisionBackboneAdapter: names must be one of {_NAME_STYLES}, got {names!r}")
        shapes = backbone.output_shape()
        if out_features is None:
            out_features = sorted(shapes, key=lambda k: (shapes[k].stride or 0, k))
        out_features = list(out_features)
        if not out_features:
            raise ValueError("TorchvisionBackboneAdapter: out_features is empty")
        unknown = [f for f in out_features if f not in shapes]
        if unknown:
            raise ValueError(
                f"TorchvisionBackboneAdapter: out_features {unknown} are not outputs of "
                f"{type(backbone).__name__}; it has {sorted(shapes)}"
            )
        channels = {f: shapes[f].channels for f in out_features}
        if len(set(channels.values())) != 1:
            raise ValueError(
                "TorchvisionBackboneAdapter: torchvision heads take one `out_channels`, but the selected features "
                f"have different channel counts {channels}; pick features of one width (e.g. the FPN outputs, "
                "or a single ResNet stage)"
            )
        self.body = backbone
        self.in_features = out_features
        self.out_channels = int(next(iter(channels.values())))
        self.strides = [int(shapes[f].stride) for f in out_features]
        self.name_style = names
        self._extra = _extra_levels(backbone)
        self.out_names = _torchvision_names(out_features, self._extra) if names == "torchvision" else out_features

    @property
    def featmap_names(self) -> list[str]:
        """Names of the maps an RoI pooler should read: all but the FPN top block's extra levels (P6 / "pool")."""
        return [n for n, f in zip(self.out_names, self.in_features) if f not in self._extra]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return OrderedDict((name, features[f]) for name, f in zip(self.out_names, self.in_features))

    def anchor_generator(self, sizes: Sequence[int] | None = None, aspect_ratios=(0.5, 1.0, 2.0)):
        """A torchvision AnchorGenerator with one anchor size per map: 8 x stride by default (32 for P2 ...)."""
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        if sizes is None:
            sizes = [8 * s for s in self.strides]
        if len(sizes) != len(self.out_names):
            raise ValueError(f"anchor_generator: {len(sizes)} sizes for {len(self.out_names)} feature maps")
        return AnchorGenerator(tuple((int(s),) for s in sizes), (tuple(aspect_ratios),) * len(sizes))

    def box_roi_pool(self, output_size: int = 7, sampling_ratio: int = 2):
        """A torchvision MultiScaleRoIAlign over `featmap_names` (the levels detectron2's box head uses)."""
        from torchvision.ops import MultiScaleRoIAlign

        return MultiScaleRoIAlign(featmap_names=self.featmap_names, output_size=output_size,
                                  sampling_ratio=sampling_ratio)


def _extra_levels(backbone: nn.Module) -> set[str]:
    """The outputs an FPN's top block adds on top of its lateral levels (P6 for Faster R-CNN, P6/P7 for RetinaNet)."""
    top_block = getattr(backbone, "top_block", None)
    n_extra = int(getattr(top_block, "num_levels", 0)) if top_block is not None else 0
    if n_extra == 0:
        return set()
    shapes = backbone.output_shape()
    ordered = sorted(shapes, key=lambda k: (shapes[k].stride or 0, k))
    return set(ordered[-n_extra:])


def _torchvision_names(out_features: list[str], extra: set[str]) -> list[str]:
    # torchvision's own FPN backbones call the lateral levels "0".."n-1", one max-pooled extra level "pool" and
    # RetinaNet's two extra levels "p6", "p7" (our names already).
    names, i = [], 0
    for f in out_features:
        if f in extra:
            names.append("pool" if len(extra) == 1 else f)
        else:
            names.append(str(i))
            i += 1
    return names
