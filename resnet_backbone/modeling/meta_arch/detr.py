"""DETR (Carion et al., 2020) on our ResNet backbone: C5 -> transformer -> a fixed set of box predictions.

    images (list[dict], 0-255 in INPUT.FORMAT) -> normalize -> ImageList (padding + mask)
    backbone C5 ("res5"; DC5 with MODEL.RESNETS.RES5_DILATION 2) -> input_proj (1x1 conv to HIDDEN_DIM)
    mask downsampled to C5 -> sine position encoding -> Transformer(query_embed) -> every decoder layer's output
    class_embed (HIDDEN_DIM -> NUM_CLASSES + 1, last = "no object"), bbox_embed (3-layer MLP, sigmoid ->
    cxcywh normalized by the image's unpadded size)

Training returns the SetCriterion losses (Hungarian matching, auxiliary losses per decoder layer).
Inference returns per image the top TEST.DETECTIONS_PER_IMAGE queries by their best non-"no object"
class probability, as {"boxes" xyxy in the ORIGINAL image's coordinates, "scores", "labels"}.
Module names match the official checkpoint after `checkpoint.detr_converter` (see docs/DETR.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...structures import ImageList
from ..backbone import Backbone, build_backbone
from ..detr.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from ..detr.criterion import SetCriterion
from ..detr.matcher import HungarianMatcher
from ..detr.position_encoding import PositionEmbeddingSine
from ..detr.transformer import Transformer
from .build import META_ARCH_REGISTRY
from .image_input import ImageInputMixin, describe_input

__all__ = ["DETR", "MLP"]


class MLP(nn.Module):
    """`num_layers` Linear layers (`layers.0` ..), ReLU between them, none after the last."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x




@META_ARCH_REGISTRY.register()
class DETR(ImageInputMixin, nn.Module):
    def __init__(self, *, backbone: Backbone, transformer: Transformer, num_classes: int, num_queries: int,
                 criterion: SetCriterion, pixel_mean, pixel_std, in_feature: str = "res5", aux_loss: bool = True,
                 max_detections_per_image: int = 100, position_embedding: nn.Module | None = None,
                 channels_last: bool = False):
        super().__init__()
        shapes = backbone.output_shape()
        if in_feature not in shapes:
            raise ValueError(f"DETR: the backbone outputs {list(shapes)} but DETR reads '{in_feature}' "
                             f"(set MODEL.RESNETS.OUT_FEATURES to ['{in_feature}'])")
        hidden = transformer.d_model
        self.backbone = backbone
        self.in_feature = in_feature
        self.transformer = transformer
        self.position_embedding = position_embedding or PositionEmbeddingSine(hidden // 2, normalize=True)
        self.input_proj = nn.Conv2d(shapes[in_feature].channels, hidden, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.bbox_embed = MLP(hidden, hidden, 4, 3)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.criterion = criterion
        self.aux_loss = aux_loss
        self.max_detections_per_image = max_detections_per_image
        self.register_pixel_stats(pixel_mean, pixel_std)
        self.set_channels_last(channels_last)

    @classmethod
    def from_config(cls, cfg) -> DETR:
        d = cfg.MODEL.DETR
        backbone = build_backbone(cfg)
        transformer = Transformer(d_model=d.HIDDEN_DIM, nhead=d.NHEADS, num_encoder_layers=d.ENC_LAYERS,
                                  num_decoder_layers=d.DEC_LAYERS, dim_feedforward=d.DIM_FEEDFORWARD,
                                  dropout=d.DROPOUT, normalize_before=d.PRE_NORM)
        matcher = HungarianMatcher(cost_class=d.CLASS_WEIGHT, cost_bbox=d.L1_WEIGHT, cost_giou=d.GIOU_WEIGHT)
        criterion = SetCriterion(d.NUM_CLASSES, matcher, eos_coef=d.NO_OBJECT_WEIGHT, class_weight=d.CLASS_WEIGHT,
                                 l1_weight=d.L1_WEIGHT, giou_weight=d.GIOU_WEIGHT,
                                 deep_supervision=d.DEEP_SUPERVISION)
        return cls(backbone=backbone, transformer=transformer, num_classes=d.NUM_CLASSES,
                   num_queries=d.NUM_OBJECT_QUERIES, criterion=criterion, pixel_mean=cfg.MODEL.PIXEL_MEAN,
                   pixel_std=cfg.MODEL.PIXEL_STD, aux_loss=d.DEEP_SUPERVISION,
                   max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE, channels_last=cfg.MODEL.CHANNELS_LAST)

    def forward_outputs(self, images: ImageList) -> dict:
        """The raw DETR outputs for a padded batch: {"pred_logits" (B, Q, C+1), "pred_boxes" (B, Q, 4)
        normalized cxcywh of the unpadded image, "aux_outputs": one such dict per decoder layer but the last}."""
        feature = self.backbone(self.backbone_input(images))[self.in_feature]
        mask = F.interpolate(images.mask[None].float(), size=feature.shape[-2:], mode="nearest")[0].bool()
        pos = self.position_embedding(mask).to(feature.dtype)
        hs = self.transformer(self.input_proj(feature), mask, self.query_embed.weight, pos)[0]
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        return out

    def raw_outputs(self, batched_inputs: list[dict]) -> dict:
        """`forward_outputs` on model inputs (list of dicts), for tests and analysis."""
        return self.forward_outputs(self.preprocess_image(batched_inputs))

    def prepare_targets(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        targets = []
        for i, (inp, (h, w)) in enumerate(zip(batched_inputs, images.image_sizes)):
            inst = inp.get("instances")
            if inst is None:
                raise ValueError(f"DETR: {describe_input(inp, i)} has no 'instances'; training needs ground truth")
            for field in ("gt_boxes", "gt_classes"):
                if len(inst) and not inst.has(field):
                    raise ValueError(f"DETR: {describe_input(inp, i)}: instances have no field '{field}'")
            boxes = inst.gt_boxes if inst.has("gt_boxes") else torch.zeros(0, 4)
            boxes = boxes.tensor if hasattr(boxes, "tensor") else boxes
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
            classes = inst.gt_classes if inst.has("gt_classes") else []
            classes = torch.as_tensor(classes, dtype=torch.int64, device=self.device).reshape(-1)
            if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= self.num_classes):
                raise ValueError(f"DETR: {describe_input(inp, i)}: field 'gt_classes' has ids outside "
                                 f"[0, {self.num_classes}): {sorted(set(classes.tolist()))}")
            scale = boxes.new_tensor([w, h, w, h])
            targets.append({"labels": classes, "boxes": box_xyxy_to_cxcywh(boxes / scale)})
        return targets

    def forward(self, batched_inputs: list[dict]):
        images = self.preprocess_image(batched_inputs)
        out = self.forward_outputs(images)
        if self.training:
            if not self.aux_loss:
                out = {k: v for k, v in out.items() if k != "aux_outputs"}
            return self.criterion(out, self.prepare_targets(batched_inputs, images))
        return self.postprocess(out, batched_inputs, images)

    @torch.no_grad()
    def postprocess(self, out: dict, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        prob = out["pred_logits"].float().softmax(-1)[..., :-1]  # drop "no object"
        scores, labels = prob.max(-1)
        k = min(self.max_detections_per_image, scores.shape[1])
        results = []
        for i, inp in enumerate(batched_inputs):
            h, w = images.image_sizes[i]
            out_h, out_w = inp.get("height", h), inp.get("width", w)
            top = scores[i].topk(k).indices
            boxes = box_cxcywh_to_xyxy(out["pred_boxes"][i, top].float())
            boxes = boxes * boxes.new_tensor([out_w, out_h, out_w, out_h])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out_h)
            results.append({"boxes": boxes, "scores": scores[i, top], "labels": labels[i, top]})
        return results
