"""The modules that get exported: one float32 image in, named tensors out, nothing that needs Python at run time.

Each wraps a built model (its submodules and weights, shared, not copied) and computes its inference forward
in a form that torch.export, torch.onnx (dynamo) and torch.jit.trace can record with H and W symbolic:

- pre-processing inside the graph: the 0-255 image is normalised with PIXEL_MEAN/STD and zero-padded at the
  bottom/right to the backbone's size divisibility (what `image_input.preprocess_image` does), so a deployment
  feeds the pixels it has and cannot get the statistics or the padding rule wrong. Resizing stays outside:
  the caller resizes to the test size (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, written in export.json) with the
  resize it uses in training, and reads the boxes in the resized image's pixels.
- post-processing inside the graph for the box detectors (NMS, score threshold, top-k: tensors in, tensors out);
  DBNet's polygons (OpenCV contours, pyclipper) are Python: `runtime.db_polygons` runs on the exported maps.

The Faster R-CNN path is the eager one (`RPN.filter_proposals`, `RoIHeads.postprocess_detections`) written
without data-dependent Python branches: every mask is applied (eager skips an all-true one), the per-level
top-k size is `torch.sym_min`, the class-wise NMS is torchvision's coordinate-offset form, and RoIAlign is
torchvision's `roi_align` per level (our threaded pooler splits work by Python counts). tests/export/ check
that each exported program gives eager's detections.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import nms, roi_align

from ..structures import ImageList

__all__ = ["BackboneGraph", "FasterRCNNGraph", "DETRGraph", "DBNetGraph", "OUTPUT_NAMES"]

OUTPUT_NAMES = {
    "FasterRCNN": ["boxes", "scores", "labels"],
    "DETR": ["boxes", "scores", "labels"],
    "DBNet": ["prob", "thresh"],
}


class _Preprocess(nn.Module):
    """Normalise (0-255, INPUT.FORMAT order) and pad to the backbone's divisibility, in the graph."""

    def __init__(self, pixel_mean: torch.Tensor, pixel_std: torch.Tensor, backbone):
        super().__init__()
        self.register_buffer("pixel_mean", pixel_mean.detach().clone().float().view(-1, 1, 1), False)
        self.register_buffer("pixel_std", pixel_std.detach().clone().float().view(-1, 1, 1), False)
        constraints = dict(getattr(backbone, "padding_constraints", {}) or {})
        self.divisibility = int(constraints.get("size_divisibility", backbone.size_divisibility) or 0)
        self.square = int(constraints.get("square_size", 0) or 0)

    def padded_size(self, h, w):
        if self.square > 0:
            h = w = torch.sym_max(torch.sym_max(h, w), self.square)
        d = self.divisibility
        if d > 1:
            h, w = (h + d - 1) // d * d, (w + d - 1) // d * d
        return h, w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) or (C, H, W) 0-255 -> normalised, padded (N, C, H', W')."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        if x.dim() == 3:
            x = x[None]
        h, w = x.shape[-2], x.shape[-1]
        ph, pw = self.padded_size(h, w)
        return F.pad(x, (0, pw - w, 0, ph - h))


class BackboneGraph(nn.Module):
    """(N, 3, H, W) 0-255 -> the backbone's outputs (res2..res5 or p2..p6), in `output_names` order."""

    def __init__(self, backbone, pixel_mean, pixel_std):
        super().__init__()
        self.backbone = backbone
        self.pre = _Preprocess(torch.as_tensor(pixel_mean), torch.as_tensor(pixel_std), backbone)
        self.output_names = list(backbone.output_shape())

    def forward(self, images: torch.Tensor):
        out = self.backbone(self.pre(images))
        return tuple(out[k] for k in self.output_names)


class DBNetGraph(nn.Module):
    """(3, H, W) 0-255 -> prob (H, W), thresh (H, W): DBNet's maps over the unpadded image."""

    def __init__(self, model):
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.pre = _Preprocess(model.pixel_mean, model.pixel_std, model.backbone)

    def forward(self, image: torch.Tensor):
        h, w = image.shape[-2], image.shape[-1]
        preds = self.head(self.backbone(self.pre(image)), with_binary=True)
        # index_select, not [:h, :w]: a slice's strides make torch.export guard on whether the example was padded
        rows, cols = torch.arange(h, device=image.device), torch.arange(w, device=image.device)
        return tuple(preds[k][0, 0].index_select(0, rows).index_select(1, cols) for k in ("prob", "thresh"))


class DETRGraph(nn.Module):
    """(3, H, W) 0-255 -> boxes (K, 4) xyxy input pixels, scores (K,), labels (K,): DETR's eval outputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.pre = _Preprocess(model.pixel_mean, model.pixel_std, model.backbone)

    def forward(self, image: torch.Tensor):
        h, w = image.shape[-2], image.shape[-1]
        images = ImageList(self.pre(image), [(h, w)])
        out = self.model.forward_outputs(images)
        prob = out["pred_logits"][0].float().softmax(-1)[..., :-1]  # drop "no object"
        scores, labels = prob.max(-1)
        k = min(self.model.max_detections_per_image, self.model.num_queries)
        top = scores.topk(k).indices
        cx, cy, bw, bh = out["pred_boxes"][0, top].float().unbind(-1)
        boxes = torch.stack([(cx - 0.5 * bw) * w, (cy - 0.5 * bh) * h, (cx + 0.5 * bw) * w, (cy + 0.5 * bh) * h], -1)
        return _clip(boxes, h, w), scores[top], labels[top]


def _clip(boxes: torch.Tensor, h, w) -> torch.Tensor:
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, thresh: float) -> torch.Tensor:
    """torchvision's class-wise NMS by coordinate offsets, also for zero boxes (no branch on the count)."""
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    shifted = boxes + (idxs.to(boxes) * (top + 1))[:, None]
    return nms(shifted, scores, thresh)


class FasterRCNNGraph(nn.Module):
    """(3, H, W) 0-255 -> boxes (K, 4) xyxy input pixels, scores (K,), labels (K,) contiguous ids."""

    def __init__(self, model):
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads
        self.channels_last = bool(getattr(model, "channels_last", False))
        self.pre = _Preprocess(model.pixel_mean, model.pixel_std, model.backbone)
        pool = self.roi_heads.box_roi_pool
        if pool.scales is None or pool.map_levels is None:
            raise ValueError("FasterRCNN export: the RoI pooler needs its scales and level rule set "
                             "(build the model with build_model / build_roi_heads)")

    def forward(self, image: torch.Tensor):
        h, w = image.shape[-2], image.shape[-1]
        x = self.pre(image)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        proposals = self.proposals(x, features, h, w)
        boxes, scores, labels = self.detections(features, proposals, h, w)
        return boxes, scores, labels - 1

    def proposals(self, x, features: dict, h, w) -> torch.Tensor:
        """`RPN.forward` at inference, for one image: (P, 4) proposals after the filter."""
        rpn = self.rpn
        feats = [features[f] for f in rpn.in_features]
        objectness, deltas = rpn.head(feats)
        anchors = rpn.anchor_generator(TVImageList(x, [(h, w)]), feats)[0]
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        logits = objectness.float().reshape(-1)
        boxes = rpn.box_coder.decode_single(deltas.float(), anchors)
        tops, offset = [], 0
        for n in per_level:  # per-level pre-NMS top-k on the logits
            k = torch.sym_min(rpn.pre_nms_top_n(), n)
            tops.append(logits[offset:offset + n].topk(k).indices + offset)
            offset = offset + n
        levels = torch.cat([torch.full_like(t, i) for i, t in enumerate(tops)])
        top = torch.cat(tops)
        boxes, scores = boxes[top], logits[top]
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes = _clip(boxes[valid], h, w)
        scores, levels = scores[valid], levels[valid]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        if rpn.edge_rules == "torchvision":
            scores = torch.sigmoid(scores)
            keep = (bw >= rpn.min_size) & (bh >= rpn.min_size)
        else:
            keep = (bw > rpn.min_size) & (bh > rpn.min_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = _batched_nms(boxes, scores, levels, rpn.nms_thresh)[: rpn.post_nms_top_n()]
        return boxes[keep]

    def pool(self, features: dict, proposals: torch.Tensor) -> torch.Tensor:
        """The box pooler's result through torchvision's roi_align, one call per level."""
        pool = self.roi_heads.box_roi_pool
        feats = [v for k, v in features.items() if k in pool.featmap_names]
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals], dim=1)
        if len(feats) == 1:
            levels = torch.zeros_like(rois[:, 0], dtype=torch.int64)
        else:
            levels = pool.map_levels([proposals]).to(torch.int64)
        result = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *pool.output_size))
        for level, (feat, scale) in enumerate(zip(feats, pool.scales)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feat, rois[idx], output_size=pool.output_size, spatial_scale=scale,
                               sampling_ratio=pool.sampling_ratio, aligned=pool.aligned)
            result = result.index_put((idx,), pooled.to(result.dtype))
        return result

    def detections(self, features: dict, proposals: torch.Tensor, h, w):
        """`RoIHeads.forward` + `postprocess_detections` at inference, for one image."""
        heads = self.roi_heads
        class_logits, box_regression = heads.box_predictor(heads.box_head(self.pool(features, proposals)))
        class_logits, box_regression = class_logits.float(), box_regression.float()
        num_classes = class_logits.shape[-1]
        boxes = heads.box_coder.decode_single(box_regression, proposals).reshape(proposals.shape[0], -1, 4)
        scores = F.softmax(class_logits, -1)
        valid = torch.isfinite(boxes).flatten(1).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = _clip(boxes[valid], h, w), scores[valid]
        labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if heads.edge_rules == "torchvision":
            keep = torch.where(((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2))[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = _batched_nms(boxes, scores, labels, heads.nms_thresh)[: heads.detections_per_img]
        return boxes[keep], scores[keep], labels[keep]
