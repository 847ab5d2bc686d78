"""ImageList: a batch of differently sized images padded into one tensor, with their true sizes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class ImageList:
    """`tensor` is (N, C, H, W), padded at the bottom/right; `image_sizes[i]` is image i's (h, w) before padding.

    `mask` (N, H, W) is True on padding, the convention DETR's positional encoding and attention use.
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, *args, **kwargs) -> ImageList:
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def mask(self) -> torch.Tensor:
        n, _, h, w = self.tensor.shape
        mask = torch.ones((n, h, w), dtype=torch.bool, device=self.tensor.device)
        for i, (ih, iw) in enumerate(self.image_sizes):
            mask[i, :ih, :iw] = False
        return mask

    @staticmethod
    def from_tensors(tensors: list[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0,
                     padding_constraints: dict | None = None) -> ImageList:
        """Pad `tensors` (each (C, H, W)) to a common size that is a multiple of `size_divisibility`."""
        if not tensors:
            raise ValueError("ImageList.from_tensors needs at least one image")
        if padding_constraints:
            size_divisibility = padding_constraints.get("size_divisibility", size_divisibility)
            square = padding_constraints.get("square_size", 0)
        else:
            square = 0
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        if square > 0:
            max_h = max_w = max(square, max_h, max_w)
        if size_divisibility > 1:
            d = size_divisibility
            max_h = (max_h + d - 1) // d * d
            max_w = (max_w + d - 1) // d * d
        if len(tensors) == 1:
            h, w = sizes[0]
            batch = F.pad(tensors[0], (0, max_w - w, 0, max_h - h), value=pad_value).unsqueeze(0)
        else:
            batch = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], max_h, max_w), pad_value)
            for i, t in enumerate(tensors):
                batch[i, ..., : t.shape[-2], : t.shape[-1]].copy_(t)
        return ImageList(batch.contiguous(), sizes)
