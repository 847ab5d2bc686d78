"""Test-time augmentation for Faster R-CNN (TEST.AUG.*): detectron2's GeneralizedRCNNWithTTA, boxes only.

For each input dict, as the test loader yields it ("image" resized to INPUT.MIN_SIZE_TEST, "height" / "width" of
the original image), as detectron2's DatasetMapperTTA + GeneralizedRCNNWithTTA do:

    for each s in TEST.AUG.MIN_SIZES:  image -> ResizeShortestEdge(s, TEST.AUG.MAX_SIZE)   [+ its horizontal flip
                                                                                            with TEST.AUG.FLIP]
    the detector's inference on every augmented image (batches of `batch_size`, detectron2's 3), boxes reported
    in the original image ("height" x "width": the model's own postprocess rescales them), flipped ones un-flipped
    -> the union of all detections -> clipped to the original image, scores > 1e-8, per-class NMS at
    MODEL.ROI_HEADS.NMS_THRESH_TEST, the TEST.DETECTIONS_PER_IMAGE best (detectron2's `_merge_detections`, i.e.
    fast_rcnn_inference_single_image on the union)

Like detectron2, the augmented images are resized from the loader's image (not from the file again); the
output size follows the input's aspect ratio. The resize is data/transforms.py's ResizeShortestEdge with
INPUT.RESIZE_METHOD ("pil" is detectron2's: PIL for uint8 images). detectron2 maps each box back through the
inverse of [loader resize, TTA resize, flip] step by step; here the model's postprocess scales augmented
coordinates to the original in one step and the flip is undone there (x -> W - x): the same map, the float32
products rounded once instead of twice.

The output is the plain model's eval output: one {"boxes" (xyxy, original coordinates), "scores", "labels"
(contiguous 0..K-1)} dict per input, so every evaluator works unchanged. The inner model runs in eval mode under
torch.no_grad(); its train/eval mode is restored afterwards.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.ops import boxes as box_ops

from ...config import ConfigError
from ...data.transforms import HFlipTransform, ResizeShortestEdge
from .faster_rcnn import FasterRCNN
from .image_input import describe_input

__all__ = ["FasterRCNNWithTTA", "build_tta_model", "merge_detections"]

MERGE_SCORE_THRESH = 1e-8  # detectron2's _merge_detections: every detection of the union takes part


def merge_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, image_size: tuple[int, int],
                     nms_thresh: float, topk: int, score_thresh: float = MERGE_SCORE_THRESH) -> dict:
    """The union of several passes' detections -> one set, as detectron2's fast_rcnn_inference_single_image with
    one class per box: drop non-finite rows, clip to `image_size` (H, W), keep scores > `score_thresh`, per-class
    NMS at `nms_thresh`, the `topk` best (all when topk < 0), sorted by score."""
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    if not bool(valid.all()):
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    boxes = box_ops.clip_boxes_to_image(boxes, image_size)
    keep = torch.where(scores > score_thresh)[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.batched_nms(boxes, scores, labels, nms_thresh)
    if topk >= 0:
        keep = keep[:topk]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


class FasterRCNNWithTTA(nn.Module):
    """A FasterRCNN with test-time augmentation; called like the model in eval mode (list[dict] -> list[dict]).

    Args:
        model: the FasterRCNN (or a compiled wrapper of one) that runs each augmented image.
        min_sizes: short-edge lengths (TEST.AUG.MIN_SIZES), one pass each, in this order.
        max_size: the long edge's limit for those resizes (TEST.AUG.MAX_SIZE).
        flip: also run each resized image flipped horizontally (TEST.AUG.FLIP).
        nms_thresh: IoU threshold of the per-class NMS that merges the passes (MODEL.ROI_HEADS.NMS_THRESH_TEST).
        detections_per_image: detections kept per image after the merge (TEST.DETECTIONS_PER_IMAGE).
        resize_method: INPUT.RESIZE_METHOD, how the augmented images are resized (data/transforms.py).
        batch_size: augmented images per inner forward (detectron2's 3).
    """

    def __init__(self, model: nn.Module, *, min_sizes, max_size: int, flip: bool, nms_thresh: float,
                 detections_per_image: int, resize_method: str = "pil", batch_size: int = 3):
        super().__init__()
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper keeps the model as _orig_mod
        if not isinstance(inner, FasterRCNN):
            raise TypeError(f"FasterRCNNWithTTA wraps a FasterRCNN, got {type(inner).__name__}")
        self.model = model
        self.min_sizes = tuple(int(s) for s in min_sizes)
        if not self.min_sizes or min(self.min_sizes) < 1:
            raise ValueError(f"TEST.AUG.MIN_SIZES must be positive integers, got {tuple(min_sizes)}")
        self.max_size, self.flip = int(max_size), bool(flip)
        self.nms_thresh, self.detections_per_image = float(nms_thresh), int(detections_per_image)
        self.resize_method, self.batch_size = resize_method, int(batch_size)
        # validates the method now, not at the first image
        self._resizes = [ResizeShortestEdge(s, self.max_size, "choice", method=resize_method) for s in self.min_sizes]

    @classmethod
    def from_config(cls, cfg, model: nn.Module) -> FasterRCNNWithTTA:
        aug = cfg.TEST.AUG
        return cls(model, min_sizes=aug.MIN_SIZES, max_size=aug.MAX_SIZE, flip=aug.FLIP,
                   nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
                   detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE, resize_method=cfg.INPUT.RESIZE_METHOD)

    def augment(self, x: dict, i: int = 0) -> tuple[list[dict], list[bool]]:
        """One input dict -> its augmented inputs (sizes in `min_sizes` order, each followed by its flip) and
        which of them are flipped. Each keeps the input's keys (but "instances") and the original "height" /
        "width", so the model reports its boxes in the original image."""
        image = x.get("image") if isinstance(x, dict) else None
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"FasterRCNNWithTTA: {describe_input(x, i)}: field 'image' must be a (C, H, W) "
                             f"tensor, got {got}")
        base = {k: v for k, v in x.items() if k not in ("image", "instances")}
        base["height"], base["width"] = int(x.get("height", image.shape[-2])), int(x.get("width", image.shape[-1]))
        inputs, flipped = [], []
        for resize in self._resizes:
            img = resize.get_transform(image).apply(image)
            inputs.append({**base, "image": img})
            flipped.append(False)
            if self.flip:
                inputs.append({**base, "image": HFlipTransform(img.shape[-1], img.shape[-2]).apply(img)})
                flipped.append(True)
        return inputs, flipped

    def _batch_inference(self, inputs: list[dict]) -> list[dict]:
        outputs = []
        for start in range(0, len(inputs), self.batch_size):
            outputs.extend(self.model(inputs[start:start + self.batch_size]))
        return outputs

    def _inference_one_image(self, x: dict, i: int) -> dict:
        inputs, flipped = self.augment(x, i)
        h, w = inputs[0]["height"], inputs[0]["width"]
        boxes, scores, labels = [], [], []
        for out, flip in zip(self._batch_inference(inputs), flipped):
            b = out["boxes"]
            if flip:  # the flipped image's boxes, un-flipped in the original image (x -> w - x)
                b = HFlipTransform(w, h).apply(tv_tensors.BoundingBoxes(
                    b, format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w), clamping_mode=None))
                b = b.as_subclass(torch.Tensor)
            boxes.append(b)
            scores.append(out["scores"])
            labels.append(out["labels"])
        return merge_detections(torch.cat(boxes), torch.cat(scores), torch.cat(labels), (h, w),
                                self.nms_thresh, self.detections_per_image)

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError("FasterRCNNWithTTA takes a non-empty list of dicts with an 'image' tensor each")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return [self._inference_one_image(x, i) for i, x in enumerate(batched_inputs)]
        finally:
            self.model.train(was_training)


def build_tta_model(cfg, model: nn.Module) -> nn.Module:
    """cfg.TEST.AUG.* + a built FasterRCNN -> FasterRCNNWithTTA. Other detectors are refused (ConfigError)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    inner = getattr(model, "_orig_mod", model)
    if not isinstance(inner, FasterRCNN):
        raise ConfigError(f"TEST.AUG.ENABLED: test-time augmentation is implemented for FasterRCNN only, got "
                          f"MODEL.META_ARCHITECTURE={arch!r} ({type(inner).__name__}); set TEST.AUG.ENABLED False")
    if inner.mask_on:
        raise ConfigError("TEST.AUG.ENABLED: test-time augmentation merges boxes only; with MODEL.MASK_ON True it is "
                          "not implemented (detectron2 re-runs the mask head on the merged boxes); set "
                          "TEST.AUG.ENABLED False")
    return FasterRCNNWithTTA.from_config(cfg, model)
