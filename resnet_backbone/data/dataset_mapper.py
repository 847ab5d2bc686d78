"""DatasetMapper: one dataset record -> the model input dict (docs/ARCHITECTURE.md, "Model I/O")."""
from __future__ import annotations

import copy

import numpy as np
import torch

from .detection_utils import annotations_to_instances, check_image_size, filter_empty_instances, read_image
from .errors import DatasetError
from .transforms import Augmentation, apply_augmentations_v2, build_augmentation, to_tv_boxes, to_tv_image

__all__ = ["DatasetMapper"]


class DatasetMapper:
    """Read the image, apply the augmentations, and build the model input.

    Output: {"image": (C, H, W) tensor in `image_format` (uint8; float32 on the same 0-255 scale, not rounded,
    with INPUT.RESIZE_METHOD="torchvision"), "height", "width" (ORIGINAL size), "file_name",
    "image_id"} plus, in training, "instances" (`Instances` in the augmented image's coordinates: gt_boxes,
    gt_classes, and gt_polygons / gt_ignore when the annotations carry segmentation / ignore). Crowd annotations
    and boxes that are empty after the transform (e.g. rotated out of the canvas) are left out.
    A problem with the image or the record raises `DatasetError` naming the file and record.
    """

    def __init__(self, cfg=None, is_train: bool = True, *, augmentations: list[Augmentation] | None = None,
                 image_format: str | None = None, max_image_pixels: int | None = None,
                 keep_annotations_in_test: bool = False):
        """`DatasetMapper(cfg, is_train)` takes augmentations, INPUT.FORMAT and INPUT.MAX_IMAGE_PIXELS from the
        config; keyword arguments override them. Without a config: no augmentation, "BGR", PIL's pixel limit."""
        if isinstance(cfg, bool):
            raise TypeError("DatasetMapper(cfg, is_train, ...): the first argument is the config (or None); "
                            "pass is_train as the second argument or by keyword")
        if cfg is not None:
            if augmentations is None:
                augmentations = build_augmentation(cfg, is_train)
            if image_format is None:
                image_format = cfg.INPUT.FORMAT
            if max_image_pixels is None:
                max_image_pixels = cfg.INPUT.MAX_IMAGE_PIXELS
        self.is_train = bool(is_train)
        self.augmentations = list(augmentations or [])
        self.image_format = image_format or "BGR"
        if self.image_format not in ("BGR", "RGB", "L"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR', 'RGB' or 'L', got {self.image_format!r}")
        self.max_image_pixels = int(max_image_pixels or 0)
        self.keep_annotations_in_test = keep_annotations_in_test

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, **kwargs) -> DatasetMapper:
        return cls(cfg, is_train, **kwargs)

    def __call__(self, dataset_dict: dict) -> dict:
        d = copy.copy(dataset_dict)
        file_name = d.get("file_name")
        if not isinstance(file_name, str):
            raise DatasetError(f"record has no file_name ({file_name!r})", record=f"image_id={d.get('image_id')}",
                               field="file_name")
        try:
            image = read_image(file_name, format=self.image_format, max_pixels=self.max_image_pixels or None)
        except DatasetError as e:
            if e.record is not None:
                raise
            # name the record too, so the user can find the entry in the annotation file
            raise DatasetError(e.reason, file=e.file, record=f"image_id={d.get('image_id')}", field=e.field) from e
        check_image_size(d, image)
        orig_h, orig_w = image.shape[:2]
        d.setdefault("height", orig_h)
        d.setdefault("width", orig_w)

        # the image goes through the augmentations as a tv_tensors.Image (transforms.v2 functional ops)
        image, tfm = apply_augmentations_v2(self.augmentations, to_tv_image(image))
        h, w = image.shape[-2:]
        d["image"] = image.as_subclass(torch.Tensor).contiguous()

        annos = d.pop("annotations", None)
        if not self.is_train and not self.keep_annotations_in_test:
            return d
        if annos is None:
            return d
        d["instances"] = self._instances(annos, tfm, (int(h), int(w)), d, (orig_h, orig_w))
        return d

    @staticmethod
    def _instances(annos, tfm, image_size, record, orig_size):
        h, w = image_size
        kept, boxes = [], []
        for a in annos:
            if a.get("iscrowd", 0):
                continue
            try:
                x, y, bw, bh = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(f"bad bbox {a.get('bbox')!r}", file=record.get("file_name"),
                                   record=f"annotation id={a.get('id')}", field="bbox") from e
            kept.append(a)
            boxes.append([x, y, x + bw, y + bh])
        # all boxes at once as tv_tensors.BoundingBoxes through the same v2 ops as the image
        boxes = tfm.apply(to_tv_boxes(np.asarray(boxes, np.float64).reshape(-1, 4), orig_size))
        boxes = np.clip(boxes.as_subclass(torch.Tensor).numpy(), [0, 0, 0, 0], [w, h, w, h])
        out = []
        for a, box in zip(kept, boxes):
            obj = {"bbox": box.tolist(), "category_id": a["category_id"]}
            seg = a.get("segmentation")
            if isinstance(seg, list) and seg:  # polygons: no tv_tensor; the same geometry maps their points
                obj["segmentation"] = [p.reshape(-1).astype(np.float32) for p in tfm.apply_polygons(seg)]
            if "ignore" in a:
                obj["ignore"] = bool(a["ignore"])
            out.append(obj)
        inst = annotations_to_instances(out, (h, w))
        return filter_empty_instances(inst)
