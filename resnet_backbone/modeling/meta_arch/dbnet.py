"""DBNet (Liao et al., 2020) and DBNet++ (Liao et al., 2022): text-region detection with differentiable
binarization on a ResNet-FPN; DBNet++ adds Adaptive Scale Fusion to the head (MODEL.DBNET.ASF, text/asf.py).

    batched_inputs ──> normalize (PIXEL_MEAN/STD) ──> pad to backbone.size_divisibility ──> backbone
        ──> {"p2".."p5"} ──> DBHead: fuse at 1/4 (concatenate, or ASF), probability / threshold maps at input
        resolution
        training:  targets (shrunk polygons, threshold map) from instances.gt_polygons / gt_ignore
                   ──> balanced BCE (prob) + L1 (threshold) + dice (binary) ──> {"loss_prob", ...}
        inference: probability map, cropped to each image ──> contours, score, unclip, min-area quads
                   ──> {"polygons", "boxes", "scores", "labels"} in original image coordinates

Config: MODEL.DBNET.* (see config/defaults.py), the backbone from MODEL.BACKBONE.NAME (build_resnet_fpn_backbone
in the shipped configs). In eval mode "polygons" holds the min-area quadrilaterals (4 points, ICDAR style);
"contours" holds the unclipped contour polygons (more points; useful for curved text).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...config import ConfigError
from ...structures import ImageList
from ..backbone import Backbone, build_backbone
from ..text.db_head import DBHead
from ..text.losses import DBLoss
from ..text.postprocess import db_postprocess
from ..text.targets import make_db_targets
from .build import META_ARCH_REGISTRY
from .image_input import ImageInputMixin, describe_input

__all__ = ["DBNet"]




@META_ARCH_REGISTRY.register()
class DBNet(ImageInputMixin, nn.Module):
    """Text detector: backbone (at `.backbone`) + DB head + DB losses + polygon post-processing.

    Args:
        backbone: a Backbone producing the head's `in_features` (P2..P5, P2 at stride 4).
        head: DBHead.
        loss: DBLoss.
        pixel_mean, pixel_std: per-channel statistics on the 0-255 scale, in `input_format` order.
        shrink_ratio, thresh_min, thresh_max, min_text_size: target generation (see text/targets.py).
        binarize_thresh, box_thresh, unclip_ratio, max_candidates, min_size: post-processing
            (see text/postprocess.py); min_size is in input (resized image) pixels.
        channels_last: run the backbone and head in channels-last memory format (MODEL.CHANNELS_LAST).
    """

    def __init__(self, *, backbone: Backbone, head: DBHead, loss: DBLoss, pixel_mean, pixel_std,
                 input_format: str = "BGR", shrink_ratio: float = 0.4, thresh_min: float = 0.3,
                 thresh_max: float = 0.7, min_text_size: float = 8.0, binarize_thresh: float = 0.3,
                 box_thresh: float = 0.6, unclip_ratio: float = 1.5, max_candidates: int = 1000,
                 min_size: float = 3.0, channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.loss = loss
        self.input_format = input_format
        self.register_pixel_stats(pixel_mean, pixel_std)
        self.target_args = dict(shrink_ratio=shrink_ratio, thresh_min=thresh_min, thresh_max=thresh_max,
                                min_text_size=min_text_size)
        self.postprocess_args = dict(binarize_thresh=binarize_thresh, box_thresh=box_thresh,
                                     unclip_ratio=unclip_ratio, max_candidates=max_candidates, min_size=min_size)
        self.set_channels_last(channels_last)

    @classmethod
    def from_config(cls, cfg) -> DBNet:
        c = cfg.MODEL.DBNET
        backbone = build_backbone(cfg)
        problems = cls.check_config(cfg)
        if problems:
            raise ConfigError("; ".join(problems))
        head = DBHead(backbone.output_shape(), list(c.IN_FEATURES), inner_channels=c.INNER_CHANNELS, k=c.K,
                      norm=c.NORM, asf=bool(c.ASF), asf_channels=int(c.ASF_CHANNELS))
        loss = DBLoss(c.PROB_LOSS_WEIGHT, c.THRESH_LOSS_WEIGHT, c.BINARY_LOSS_WEIGHT, c.NEG_POS_RATIO)
        return cls(backbone=backbone, head=head, loss=loss, pixel_mean=cfg.MODEL.PIXEL_MEAN,
                   pixel_std=cfg.MODEL.PIXEL_STD, input_format=cfg.INPUT.FORMAT, shrink_ratio=c.SHRINK_RATIO,
                   thresh_min=c.THRESH_MIN, thresh_max=c.THRESH_MAX, min_text_size=c.MIN_TEXT_SIZE,
                   binarize_thresh=c.BINARIZE_THRESH, box_thresh=c.BOX_THRESH, unclip_ratio=c.UNCLIP_RATIO,
                   max_candidates=c.MAX_CANDIDATES, min_size=c.MIN_SIZE, channels_last=cfg.MODEL.CHANNELS_LAST)

    @classmethod
    def check_config(cls, cfg) -> list[str]:
        """What the builder refuses, as "KEY: why" lines (validate_cfg runs this before anything is written)."""
        c = cfg.MODEL.DBNET
        problems = []
        asf, channels = c.get("ASF", False), c.get("ASF_CHANNELS", 0)
        if not isinstance(asf, bool):
            problems.append(f"MODEL.DBNET.ASF: must be True (DBNet++) or False (DBNet), got {asf!r}")
        elif asf and len(c.IN_FEATURES) < 2:
            problems.append(f"MODEL.DBNET.ASF: Adaptive Scale Fusion weighs the levels against each other and "
                            f"MODEL.DBNET.IN_FEATURES has {len(c.IN_FEATURES)} ({list(c.IN_FEATURES)}); use two "
                            "or more levels, or MODEL.DBNET.ASF False")
        if isinstance(channels, bool) or not isinstance(channels, int) or (channels != 0 and channels < 4):
            problems.append(f"MODEL.DBNET.ASF_CHANNELS: must be 0 (the fused channel count) or an integer >= 4 "
                            f"(the channel attention uses a quarter of it), got {channels!r}")
        elif channels and asf is False:
            problems.append(f"MODEL.DBNET.ASF_CHANNELS: {channels} has no effect without MODEL.DBNET.ASF True "
                            "(DBNet has no Adaptive Scale Fusion); set MODEL.DBNET.ASF True or leave it at 0")
        return problems

    @staticmethod
    def _polygons_of(x: dict, i: int) -> tuple[list[np.ndarray], list[bool]]:
        inst = x.get("instances")
        if inst is None:
            raise ValueError(f"{describe_input(x, i)}: training needs field 'instances' with gt_polygons (or gt_boxes)")
        if inst.has("gt_polygons"):
            polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in inst.gt_polygons]
        elif inst.has("gt_boxes"):
            boxes = getattr(inst.gt_boxes, "tensor", inst.gt_boxes)
            polys = [np.array([[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]], dtype=np.float64)
                     for b in boxes.detach().cpu().reshape(-1, 4).tolist()]
        else:
            raise ValueError(f"{describe_input(x, i)}: field 'instances' has neither gt_polygons nor gt_boxes")
        if inst.has("gt_ignore"):
            ignore = [bool(v) for v in torch.as_tensor(inst.gt_ignore).reshape(-1).tolist()]
        else:
            ignore = [False] * len(polys)
        if len(ignore) != len(polys):
            raise ValueError(f"{describe_input(x, i)}: {len(polys)} gt_polygons but {len(ignore)} gt_ignore flags")
        for j, p in enumerate(polys):
            if not np.isfinite(p).all():
                raise ValueError(f"{describe_input(x, i)}: field 'instances.gt_polygons'[{j}] has non-finite points")
        return polys, ignore

    def targets(self, batched_inputs: list[dict], images: ImageList, gt: list | None = None
                ) -> dict[str, torch.Tensor]:
        """Stacked (N, H, W) target maps for the padded batch.

        Padding counts as background (a supervised negative), not as ignored: a model that never sees its
        output next to the canvas border in training fires false positives along the image edges at test
        time, where an unpadded image ends right at the convolutions' zero padding.

        `gt`: per image (polygons, ignore flags) as returned by `_polygons_of` (read from the inputs if None).
        """
        if gt is None:
            gt = [self._polygons_of(x, i) for i, x in enumerate(batched_inputs)]
        h, w = images.tensor.shape[-2:]
        per_image = []
        for polys, ignore in gt:
            per_image.append(make_db_targets(polys, ignore, (h, w), **self.target_args))
        return {k: torch.from_numpy(np.stack([t[k] for t in per_image])).to(self.device)
                for k in per_image[0]}

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        """Training: {"loss_prob", "loss_thresh", "loss_binary"}. Eval: one dict per image (module docstring)."""
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError("DBNet takes a non-empty list of dicts with an 'image' tensor each")
        images = self.preprocess_image(batched_inputs)
        # read (and check) the ground truth before the expensive part, so a bad input fails fast
        gt = [self._polygons_of(x, i) for i, x in enumerate(batched_inputs)] if self.training else None
        features = self.backbone(self.backbone_input(images))
        preds = self.head(features)
        if self.training:
            return self.loss(preds, self.targets(batched_inputs, images, gt))
        return self.postprocess(preds["prob"], batched_inputs, images.image_sizes)

    def postprocess(self, prob: torch.Tensor, batched_inputs: list[dict], image_sizes) -> list[dict]:
        """Regions from each image's probability map, in the original image's coordinates."""
        maps = prob.detach().float().cpu().numpy()[:, 0]
        results = []
        for m, x, (h, w) in zip(maps, batched_inputs, image_sizes):
            out_h, out_w = int(x.get("height", h)), int(x.get("width", w))
            r = db_postprocess(m[:h, :w], output_size=(out_h, out_w), **self.postprocess_args)
            quads = r["quads"]
            boxes = np.array([[q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()] for q in quads],
                             dtype=np.float32).reshape(-1, 4)
            results.append({
                "polygons": quads,
                "contours": r["polygons"],
                "boxes": torch.from_numpy(boxes).to(self.device),
                "scores": torch.from_numpy(r["scores"]).to(self.device),
                "labels": torch.zeros(len(quads), dtype=torch.int64, device=self.device),
            })
        return results
