"""Anchors for the RPN: torchvision's AnchorGenerator, with detectron2's cell anchors and grid when asked.

Both libraries place, at every feature-map cell, a set of zero-centred "cell anchors" (one per size x aspect
ratio; ratio = height / width, area = size^2) shifted by the cell's position. They differ in three details, each a
config key here:

    MODEL.ANCHOR_GENERATOR.          detectron2 (DefaultAnchorGenerator)     torchvision (AnchorGenerator)
    ROUND_CELL_ANCHORS False/True    corners exact, computed in float64      corners rounded to whole pixels
                                     order: size-major, ratio-minor          order: ratio-major, size-minor
    OFFSET                           centre at (i + OFFSET) * stride         always i * stride (OFFSET 0)
    strides                          from the backbone's output_shape()      padded_size // feature_size

The order only matters with several sizes on one level (the RPN head's channels follow it: weights trained
with one order do not fit the other). Strides always come from the backbone (detectron2's rule): torchvision's
padded_size // feature_size is wrong for P6 when the input is padded to 32 but not 64 (800 // 13 = 61, not 64).
"""
from __future__ import annotations

import math

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as _TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

__all__ = ["AnchorGenerator"]


class AnchorGenerator(_TVAnchorGenerator):
    """torchvision's AnchorGenerator with given strides, a grid offset, and rounded (torchvision) or exact
    (detectron2) cell anchors. `num_anchors_per_location()` and `cell_anchors` keep torchvision's meaning."""

    def __init__(self, sizes, aspect_ratios, strides: list[int], offset: float = 0.0, round_cell_anchors: bool = False):
        self.round_cell_anchors = bool(round_cell_anchors)  # read by generate_anchors, which the parent calls
        super().__init__(sizes, aspect_ratios)
        if len(strides) != len(self.cell_anchors):
            raise ValueError(f"{len(strides)} strides for {len(self.cell_anchors)} anchor levels")
        if not 0.0 <= float(offset) < 1.0:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)

    def generate_anchors(self, scales, aspect_ratios, dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> torch.Tensor:
        if self.round_cell_anchors:
            return super().generate_anchors(scales, aspect_ratios, dtype, device)
        # detectron2: w = sqrt(size^2 / ratio), h = ratio * w, in Python floats; size-major order
        cells = []
        for size in scales:
            for ratio in aspect_ratios:
                w = math.sqrt(float(size) ** 2 / float(ratio))
                h = float(ratio) * w
                cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(cells, dtype=dtype, device=device)

    def grid_anchors(self, grid_sizes: list[list[int]], strides=None) -> list[torch.Tensor]:
        anchors = []
        for (grid_h, grid_w), stride, cell in zip(grid_sizes, self.strides, self.cell_anchors):
            # (i + offset) * stride: exact in float32 for every stride and size a detector uses
            xs = (torch.arange(grid_w, dtype=torch.float32, device=cell.device) + self.offset) * stride
            ys = (torch.arange(grid_h, dtype=torch.float32, device=cell.device) + self.offset) * stride
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def forward(self, image_list: TVImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"anchor generator got {len(feature_maps)} feature maps, expected {len(self.strides)}")
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        # float32 whatever the features' dtype (torchvision would cast them to bf16 under autocast)
        self.set_cell_anchors(torch.float32, feature_maps[0].device)
        anchors = torch.cat(self.grid_anchors(grid_sizes))
        return [anchors] * len(image_list.image_sizes)
