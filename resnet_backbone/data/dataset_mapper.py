"""DatasetMapper: one dataset record -> the model input dict (docs/ARCHITECTURE.md, "Model I/O")."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torchvision import tv_tensors

from .detection_utils import annotations_to_instances, check_image_size, filter_empty_instances, read_image
from .errors import DatasetError
from .masks import check_polygons, check_rle, polygons_to_mask, rle_to_mask
from .transforms import Augmentation, apply_augmentations_v2, build_augmentation, to_tv_boxes, to_tv_image

__all__ = ["DatasetMapper", "MASK_FORMATS"]

#: INPUT.MASK_FORMAT values (detectron2's)
MASK_FORMATS = ("polygon", "bitmask")


class DatasetMapper:
    """Read the image, apply the augmentations, and build the model input.

    Output: {"image": (C, H, W) tensor in `image_format` (uint8; float32 on the same 0-255 scale, not rounded,
    with INPUT.RESIZE_METHOD="torchvision"), "height", "width" (ORIGINAL size), "file_name",
    "image_id"} plus, in training, "instances" (`Instances` in the augmented image's coordinates: gt_boxes,
    gt_classes, and gt_polygons / gt_ignore when the annotations carry segmentation / ignore). Crowd annotations
    and boxes that are empty after the transform (e.g. rotated out of the canvas) are left out.
    A problem with the image or the record raises `DatasetError` naming the file and record.

    With `mask_on` (MODEL.MASK_ON) the instances also carry gt_masks: a uint8 (N, H, W) tensor of 0/1 in the
    augmented image's coordinates, one per instance in gt_boxes' order (torchvision's form), from each
    annotation's "segmentation" (COCO polygons or RLE, rasterised by pycocotools: data/masks.py); an instance
    without segmentation is an error then. `mask_format` (INPUT.MASK_FORMAT, detectron2's values): "polygon"
    moves the polygons' points with the image's geometry and rasterises them at the augmented size; "bitmask"
    rasterises them at the original size and warps the masks with the image's own v2 transform (as
    tv_tensors.Mask: nearest resize, rotation, crop, zero padding). An RLE is a bitmask already and is warped
    under either format (detectron2 refuses RLE under "polygon"; decoding it loses nothing, since the model gets
    a bitmask in both cases).
    """

    def __init__(self, cfg=None, is_train: bool = True, *, augmentations: list[Augmentation] | None = None,
                 image_format: str | None = None, max_image_pixels: int | None = None,
                 keep_annotations_in_test: bool = False, mask_on: bool | None = None,
                 mask_format: str | None = None):
        """`DatasetMapper(cfg, is_train)` takes augmentations, INPUT.FORMAT, INPUT.MAX_IMAGE_PIXELS, MODEL.MASK_ON
        and INPUT.MASK_FORMAT from the config; keyword arguments override them. Without a config: no
        augmentation, "BGR", PIL's pixel limit, no masks ("polygon")."""
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
            if mask_on is None:
                mask_on = cfg.MODEL.MASK_ON
            if mask_format is None:
                mask_format = cfg.INPUT.MASK_FORMAT
        self.is_train = bool(is_train)
        self.augmentations = list(augmentations or [])
        self.image_format = image_format or "BGR"
        if self.image_format not in ("BGR", "RGB", "L"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR', 'RGB' or 'L', got {self.image_format!r}")
        self.max_image_pixels = int(max_image_pixels or 0)
        self.keep_annotations_in_test = keep_annotations_in_test
        self.mask_on = bool(mask_on)
        self.mask_format = mask_format or "polygon"
        if self.mask_format not in MASK_FORMATS:
            raise ValueError(f"INPUT.MASK_FORMAT must be one of {MASK_FORMATS}, got {self.mask_format!r}")

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

    def _instances(self, annos, tfm, image_size, record, orig_size):
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
        masks = self._masks(kept, tfm, image_size, record, orig_size) if self.mask_on else None
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
        if masks is not None:
            inst.gt_masks = masks
        return filter_empty_instances(inst)

    def _masks(self, annos, tfm, image_size, record, orig_size) -> torch.Tensor:
        """(N, H, W) uint8 masks of the kept annotations in the augmented image (see the class docstring)."""
        file = record.get("file_name")
        out: list[torch.Tensor | None] = [None] * len(annos)
        warp, warp_at = [], []  # masks made at the original size, warped together with the image's transform
        for i, a in enumerate(annos):
            rec = f"annotation id={a.get('id')}"
            seg = a.get("segmentation")
            if seg is None or (isinstance(seg, list) and not seg):
                raise DatasetError("MODEL.MASK_ON is set but the annotation has no segmentation (polygons or RLE)",
                                   file=file, record=rec, field="segmentation")
            if isinstance(seg, dict):
                warp.append(rle_to_mask(check_rle(seg, *orig_size, file=file, record=rec)))
                warp_at.append(i)
                continue
            polys = check_polygons(seg, file=file, record=rec)
            if self.mask_format == "bitmask":
                warp.append(polygons_to_mask(polys, *orig_size))
                warp_at.append(i)
            else:
                out[i] = torch.from_numpy(polygons_to_mask(tfm.apply_polygons(polys), *image_size))
        if warp:
            warped = tfm.apply(tv_tensors.Mask(torch.from_numpy(np.stack(warp))))
            for i, m in zip(warp_at, warped.as_subclass(torch.Tensor)):
                out[i] = m
        if not out:
            return torch.zeros((0, *image_size), dtype=torch.uint8)
        return torch.stack(out).to(torch.uint8).contiguous()
