"""Box helpers every detector shares."""
from __future__ import annotations

import torch

__all__ = ["rescale_boxes"]


def rescale_boxes(boxes: torch.Tensor, input_size, x: dict) -> tuple[torch.Tensor, tuple[int, int]]:
    """Boxes from the (h, w) network input to the input dict's "height" x "width" (default: unchanged), clipped to
    it: (boxes, (out_h, out_w)). How every detector reports boxes in the original image's coordinates."""
    h, w = input_size
    out_h, out_w = int(x.get("height", h)), int(x.get("width", w))
    boxes = boxes * boxes.new_tensor([out_w / w, out_h / h, out_w / w, out_h / h])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out_h)
    return boxes, (out_h, out_w)
