"""Instances: the per-image annotations (or predictions) that travel with an image.

A light version of detectron2's Instances: named fields of equal length, e.g. `gt_boxes` (N, 4) xyxy in
the coordinates of the (transformed) image, `gt_classes` (N,) contiguous ids 0..K-1, and for text
`gt_polygons` (a list of (P, 2) float arrays) and `gt_ignore` (N,) bool ("don't care").
"""
from __future__ import annotations

from typing import Any

import torch


class Instances:
    def __init__(self, image_size: tuple[int, int], **fields: Any):
        self._image_size = tuple(image_size)  # (height, width)
        self._fields: dict[str, Any] = {}
        for k, v in fields.items():
            self.set(k, v)

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("_fields")  # absent while unpickling (e.g. from DataLoader workers)
        if fields is None or name not in fields:
            raise AttributeError(f"Instances has no field '{name}'; fields: {list(fields or [])}")
        return fields[name]

    def set(self, name: str, value: Any) -> None:
        if self._fields:
            n = len(self)
            if len(value) != n:
                raise ValueError(f"field '{name}' has length {len(value)}, other fields have {n}")
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def get(self, name: str) -> Any:
        return self._fields[name]

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get_fields(self) -> dict[str, Any]:
        return self._fields

    def to(self, *args, **kwargs) -> Instances:
        out = Instances(self._image_size)
        for k, v in self._fields.items():
            out.set(k, v.to(*args, **kwargs) if hasattr(v, "to") else v)
        return out

    def __getitem__(self, item) -> Instances:
        if isinstance(item, int):
            item = slice(item, item + 1) if item != -1 else slice(-1, None)
        out = Instances(self._image_size)
        for k, v in self._fields.items():
            if isinstance(v, torch.Tensor):
                out.set(k, v[item])
            else:
                idx = item
                if isinstance(idx, torch.Tensor):
                    idx = idx.nonzero().flatten().tolist() if idx.dtype == torch.bool else idx.tolist()
                    out.set(k, [v[i] for i in idx])
                else:
                    out.set(k, v[idx])
        return out

    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        return 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {tuple(v.shape) if isinstance(v, torch.Tensor) else len(v)}"
                           for k, v in self._fields.items())
        return f"Instances(num_instances={len(self)}, image_height={self._image_size[0]}, " \
               f"image_width={self._image_size[1]}, fields=[{fields}])"
