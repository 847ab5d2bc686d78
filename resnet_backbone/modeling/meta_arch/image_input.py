"""What every detector does to its inputs before the backbone: check, normalize, pad (and, for the box detectors,
check the training targets and run the backbone: `box_targets`, `features_of`).

Faster R-CNN, DETR and DBNet share it through `ImageInputMixin`, so the Model I/O contract (an "image" tensor
(C, H, W) on the 0-255 scale in INPUT.FORMAT order, normalized with PIXEL_MEAN/STD, padded to the backbone's
size divisibility) is written once.
"""
from __future__ import annotations

import torch

from ...structures import ImageList
from ..fast_paths import to_channels_last


def box_targets(batched_inputs: list[dict], device, num_classes: int, num_classes_key: str) -> list[tuple]:
    """Each training input's (gt_boxes (M, 4) xyxy float32, gt_classes (M,) int64, instances), on `device` and
    checked: a box without area or a class outside 0..num_classes-1 is a ValueError naming the input, the field and
    the index (and `num_classes_key`, the config key of the class count)."""
    out = []
    for i, x in enumerate(batched_inputs):
        inst = x.get("instances") if isinstance(x, dict) else None
        if inst is None or not (inst.has("gt_boxes") and inst.has("gt_classes")):
            raise ValueError(f"{describe_input(x, i)}: training needs field 'instances' with gt_boxes and gt_classes")
        boxes = getattr(inst.gt_boxes, "tensor", inst.gt_boxes)  # detectron2's Boxes
        boxes = boxes.to(device, torch.float32).reshape(-1, 4)
        classes = inst.gt_classes.to(device, torch.int64).reshape(-1)
        bad = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).nonzero().flatten()
        if bad.numel():
            j = int(bad[0])
            raise ValueError(f"{describe_input(x, i)}: field 'instances.gt_boxes'[{j}] = {boxes[j].tolist()} has "
                             "non-positive width or height (xyxy expected)")
        bad = ((classes < 0) | (classes >= num_classes)).nonzero().flatten()
        if bad.numel():
            j = int(bad[0])
            raise ValueError(f"{describe_input(x, i)}: field 'instances.gt_classes'[{j}] = {int(classes[j])} is "
                             f"outside 0..{num_classes - 1} ({num_classes_key})")
        out.append((boxes, classes, inst))
    return out


def describe_input(x, i: int) -> str:
    """'input 3 (file_name='a.jpg', image_id=7)': how errors name the sample a detector was given."""
    if isinstance(x, dict):
        parts = [f"{k}={x[k]!r}" for k in ("file_name", "image_id") if k in x]
        if parts:
            return f"input {i} ({', '.join(parts)})"
    return f"input {i}"


class ImageInputMixin:
    """For detectors (nn.Module with a `.backbone`): pixel statistics, `device`, and `preprocess_image`."""

    input_format: str = "BGR"
    channels_last: bool = False

    def set_channels_last(self, on: bool) -> None:
        """MODEL.CHANNELS_LAST, in training as in eval: the module's 4-D weights now, and the padded batch in each
        forward (`backbone_input`), in channels-last order. Call it last in `__init__`, after every submodule."""
        self.channels_last = bool(on)
        if self.channels_last:
            to_channels_last(self)

    def backbone_input(self, images: ImageList) -> torch.Tensor:
        """The padded batch as the backbone takes it (channels-last when set)."""
        return to_channels_last(images.tensor) if self.channels_last else images.tensor

    def register_pixel_stats(self, pixel_mean, pixel_std) -> None:
        """Keep PIXEL_MEAN/STD as non-persistent (C, 1, 1) buffers: they follow .to(device), not checkpoints."""
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"MODEL.PIXEL_MEAN has {len(pixel_mean)} values, MODEL.PIXEL_STD {len(pixel_std)}")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalize each input's "image" and pad the batch to the backbone's size divisibility."""
        channels = self.pixel_mean.shape[0]
        images = []
        for i, x in enumerate(batched_inputs):
            img = x.get("image") if isinstance(x, dict) else None
            if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != channels:
                got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise ValueError(f"{type(self).__name__}: {describe_input(x, i)}: field 'image' must be a "
                                 f"({channels}, H, W) tensor in {self.input_format} order, got {got}")
            images.append((img.to(self.device, torch.float32, non_blocking=True) - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.backbone.size_divisibility,
                                      padding_constraints=self.backbone.padding_constraints)

    def features_of(self, batched_inputs: list[dict]):
        """The start of a box detector's forward: check the batch, normalize + pad, the training targets
        (`self._targets`), channels-last when set, the backbone: (images, x, features, targets), targets None in
        eval."""
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError(f"{type(self).__name__} takes a non-empty list of dicts with an 'image' tensor each")
        images = self.preprocess_image(batched_inputs)
        targets = self._targets(batched_inputs) if self.training else None
        x = self.backbone_input(images)
        return images, x, self.backbone(x), targets
