"""INPUT.RESIZE_METHOD: "pil" against PIL and detectron2 themselves, "torchvision" against torchvision's
GeneralizedRCNNTransform / resize_boxes, "bilinear" against v2 and the sizes the earlier code gave; and a float32
image flowing through DatasetMapper, the test loader and the demo Predictor to a detector's preprocessing."""
import importlib
import json
import os

import numpy as np
import pytest
import torch
from _tools import load_tool
from PIL import Image
from torch import nn
from torchvision import tv_tensors
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from resnet_backbone.config import get_cfg
from resnet_backbone.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, register_coco_instances
from resnet_backbone.data.dataset_mapper import DatasetMapper
from resnet_backbone.data.transforms import (
    PhotometricTransform,
    RandomFlip,
    ResizeScale,
    ResizeShortestEdge,
    ResizeTransform,
    apply_augmentations,
    apply_augmentations_v2,
    build_augmentation,
    to_tv_boxes,
    to_tv_image,
)
from resnet_backbone.modeling.meta_arch.image_input import ImageInputMixin


def _detectron2_transforms():
    """detectron2.data.transforms, or skip (it is not a dependency; a copy beside the project is put on
    PYTHONPATH by whoever runs these against it)."""
    try:
        return importlib.import_module("detectron2.data.transforms")
    except Exception as e:  # ImportError, or a broken install's own error
        pytest.skip(f"detectron2 is not importable ({type(e).__name__}: {e}); put it on PYTHONPATH to compare")


def _image(h, w, c=3, seed=0):
    """A smooth-ish uint8 image (random noise would hide filter differences in rounding)."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, h // 4), max(2, w // 4), c)) * 255
    up = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(h, w),
                                         mode="bicubic", align_corners=False)[0]
    noise = torch.from_numpy(rng.normal(0, 8, (c, h, w)))
    return (up + noise).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy().copy()


# sizes where detectron2's rounding and the earlier "bilinear" rule part (a side lands on .5 up to float error)
HALF_CASES = [(88, 176), (124, 22), (151, 302), (172, 22), (319, 638), (352, 176), (604, 302), (1276, 638)]


# ---------------------------------------------------------------------------- "pil"
@pytest.mark.parametrize("hw,new_hw", [((48, 64), (80, 107)), ((107, 80), (60, 45)), ((37, 101), (19, 53)),
                                       ((60, 60), (61, 59)), ((33, 47), (33, 47))])
@pytest.mark.parametrize("channels", [3, 1])
def test_pil_pixels_are_pils(hw, new_hw, channels):
    img = _image(*hw, channels)
    if channels == 1:
        ref = np.asarray(Image.fromarray(img[:, :, 0]).resize(new_hw[::-1], Image.BILINEAR))[:, :, None]
    else:
        ref = np.asarray(Image.fromarray(img).resize(new_hw[::-1], Image.BILINEAR))
    t = ResizeTransform(*hw, *new_hw, method="pil")
    out = t.apply_image(img)
    assert out.dtype == np.uint8 and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)
    tv = t.apply(to_tv_image(img))  # the tensor path DatasetMapper takes
    assert isinstance(tv, tv_tensors.Image) and tv.dtype == torch.uint8
    np.testing.assert_array_equal(tv.permute(1, 2, 0).numpy(), ref)
    if channels == 1:  # (H, W) in, (H, W) out
        np.testing.assert_array_equal(t.apply_image(img[:, :, 0]), ref[:, :, 0])


def test_pil_other_channel_counts_go_band_by_band():
    img = _image(30, 41, 4)
    out = ResizeTransform(30, 41, 50, 23, method="pil").apply_image(img)
    ref = np.stack([np.asarray(Image.fromarray(img[:, :, c]).resize((23, 50), Image.BILINEAR)) for c in range(4)], 2)
    np.testing.assert_array_equal(out, ref)


def test_pil_float_image_as_detectron2_and_other_dtypes_refused():
    img = _image(40, 52).astype(np.float32) + 0.25
    out = ResizeTransform(40, 52, 71, 30, method="pil").apply_image(img)
    ref = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(71, 30),
                                          mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
    with pytest.raises(TypeError, match="uint8 images .* or floating"):
        ResizeTransform(40, 52, 71, 30, method="pil").apply_image(img.astype(np.uint16))


def test_pil_matches_detectron2_itself():
    T = _detectron2_transforms()
    grid = [(h, w) for h in range(1, 700, 13) for w in range(1, 700, 17)] + HALF_CASES
    for s, m in ((800, 1333), (640, 1000), (160, 10 ** 9), (512, 853), (33, 50)):
        ours = [ResizeShortestEdge.get_output_shape(h, w, s, 0 if m == 10 ** 9 else m, "pil") for h, w in grid]
        # a side detectron2 rounds to 0 (PIL would then refuse the resize) is 1 pixel here
        theirs = [tuple(max(1, v) for v in T.ResizeShortestEdge.get_output_shape(h, w, s, m)) for h, w in grid]
        assert ours == theirs, (s, m)
    # the drawn sizes: both draw from numpy's global RNG in the same way
    for style, lengths in (("range", (40, 90)), ("choice", (32, 48, 64, 70))):
        ours_aug = ResizeShortestEdge(lengths, 120, style, method="pil")
        d2_aug = T.ResizeShortestEdge(lengths, 120, style)
        for seed in range(8):
            img = np.zeros((50 + 7 * seed, 90 - 5 * seed, 3), np.uint8)
            np.random.seed(seed)
            a = ours_aug.get_transform(img)
            np.random.seed(seed)
            b = d2_aug.get_transform(img)
            assert (a.new_h, a.new_w) == (b.new_h, b.new_w)
    # pixels (uint8 through PIL, float through F.interpolate), boxes and polygon points
    boxes = np.array([[0.5, 1.25, 30.75, 40.0], [10.1, 3.3, 51.9, 39.7]])
    for hw, new_hw in (((40, 52), (67, 87)), ((40, 52), (23, 30)), ((41, 3), (80, 6))):
        ours, d2 = ResizeTransform(*hw, *new_hw, method="pil"), T.ResizeTransform(*hw, *new_hw)
        img = _image(*hw)
        np.testing.assert_array_equal(ours.apply_image(img), d2.apply_image(img))
        np.testing.assert_array_equal(ours.apply_image(img[:, :, :1]), d2.apply_image(img[:, :, :1]))
        f = img.astype(np.float32) / 3
        np.testing.assert_allclose(ours.apply_image(f), d2.apply_image(f), rtol=0, atol=1e-4)
        np.testing.assert_array_equal(ours.apply_box(boxes), d2.apply_box(boxes.copy()))
        mapped = ours.apply(to_tv_boxes(boxes, hw)).as_subclass(torch.Tensor).numpy()
        np.testing.assert_array_equal(mapped, d2.apply_box(boxes.copy()))
        pts = boxes.reshape(-1, 2)
        np.testing.assert_array_equal(ours.apply_coords(pts), d2.apply_coords(pts.copy()))


def test_pil_sizes_known_half_cases():
    """Recorded from detectron2 (test_pil_matches_detectron2_itself checks them against it when it is here):
    the .5 cases round down, where the earlier rule (kept for "bilinear") rounds up."""
    pil = [ResizeShortestEdge.get_output_shape(h, w, 800, 1333, "pil") for h, w in HALF_CASES[:3]]
    old = [ResizeShortestEdge.get_output_shape(h, w, 800, 1333, "bilinear") for h, w in HALF_CASES[:3]]
    assert pil == [(666, 1333), (1333, 236), (666, 1333)]
    assert old == [(667, 1333), (1333, 237), (667, 1333)]


# ---------------------------------------------------------------------------- "torchvision"
def _torchvision(min_size, max_size):
    """GeneralizedRCNNTransform with mean 0 / std 1: its output is the raw resized float image."""
    return GeneralizedRCNNTransform(min_size, max_size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0]).eval()


@pytest.mark.parametrize("hw,min_size,max_size", [
    ((48, 64), 80, 133),     # 480x640 -> 800x1066 in small
    ((37, 101), 64, 100),    # max-size branch, odd sides
    ((101, 37), 64, 100),    # the same, portrait
    ((61, 83), 50, 1000),    # downscale, odd
    ((30, 30), 31, 31),      # square, barely up
    ((53, 29), 97, 170),     # upscale, odd
    ((120, 40), 60, 90),     # max-size branch, downscale
])
def test_torchvision_pixels_sizes_and_boxes_are_generalized_rcnn_transforms(hw, min_size, max_size):
    img = _image(*hw)
    boxes = torch.tensor([[0.5, 1.25, 20.75, 27.0], [3.1, 2.3, hw[1] - 0.1, hw[0] - 1.7]], dtype=torch.float32)
    ref_t = _torchvision(min_size, max_size)
    x = torch.from_numpy(img).permute(2, 0, 1).float()
    ref_images, ref_targets = ref_t([x.clone()], [{"boxes": boxes.clone(), "labels": torch.ones(2, dtype=torch.int64)}])
    rh, rw = ref_images.image_sizes[0]
    ref = ref_images.tensors[0, :, :rh, :rw]

    aug = ResizeShortestEdge((min_size,), max_size, "choice", method="torchvision")
    tfm = aug.get_transform(img)
    assert (tfm.new_h, tfm.new_w) == (rh, rw)
    out = tfm.apply(to_tv_image(img))
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.float32
    torch.testing.assert_close(out.as_subclass(torch.Tensor), ref, rtol=0, atol=1e-4)
    got = tfm.apply(to_tv_boxes(boxes.numpy(), hw))
    assert tuple(got.canvas_size) == (rh, rw)
    np.testing.assert_array_equal(got.as_subclass(torch.Tensor).float().numpy(), ref_targets[0]["boxes"].numpy())
    np.testing.assert_array_equal(tfm.apply_box(boxes.numpy()).astype(np.float32), ref_targets[0]["boxes"].numpy())
    # polygon points go by the same float32 ratios
    pts = boxes.numpy().reshape(-1, 2)
    np.testing.assert_array_equal(tfm.apply_coords(pts).astype(np.float32).reshape(-1, 4),
                                  resize_boxes(boxes, list(hw), [rh, rw]).numpy())
    # numpy path (Predictor): float32 (H, W, C)
    np.testing.assert_allclose(tfm.apply_image(img), ref.permute(1, 2, 0).numpy(), rtol=0, atol=1e-4)


def test_torchvision_sizes_on_a_grid():
    """Sizes against what torchvision's own resize produces (tiny 1-channel images keep this fast)."""
    for min_size, max_size in ((20, 33), (32, 1000), (7, 9), (50, 60)):
        for h in range(1, 40, 3):
            for w in range(1, 40, 4):
                ours = ResizeShortestEdge.get_output_shape(h, w, min_size, max_size, "torchvision")
                try:
                    out, _ = _resize_image_and_masks(torch.zeros(1, h, w), min_size, max_size)
                except RuntimeError:  # torchvision's side floors to 0 and interpolate refuses; ours keeps 1 pixel
                    assert 1 in ours, (h, w, min_size, max_size)
                    continue
                assert ours == tuple(out.shape[-2:]), (h, w, min_size, max_size)


def test_torchvision_train_draws_among_min_sizes_and_keeps_float_through_flip():
    img = _image(40, 60)
    aug = ResizeShortestEdge((32, 48, 64), 200, "choice", method="torchvision")
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        out, tfm = apply_augmentations_v2([aug, RandomFlip(1.0)], to_tv_image(img), rng)
        assert out.dtype == torch.float32
        h, w = out.shape[-2:]
        seen.add(h)
        ref_images, _ = _torchvision(h, 200)([torch.from_numpy(img).permute(2, 0, 1).float()])
        ref = ref_images.tensors[0, :, :h, :w]
        torch.testing.assert_close(out.as_subclass(torch.Tensor), ref.flip(-1), rtol=0, atol=1e-4)
    assert seen == {32, 48, 64}


# ---------------------------------------------------------------------------- "bilinear"
@pytest.mark.parametrize("hw,new_hw", [((48, 64), (80, 107)), ((107, 80), (60, 45)), ((37, 101), (19, 53))])
def test_bilinear_is_v2_unchanged(hw, new_hw):
    img = _image(*hw)
    boxes = np.array([[0.5, 1.25, 30.75, 17.0]])
    t = ResizeTransform(*hw, *new_hw, method="bilinear")
    ref = F.resize(to_tv_image(img), list(new_hw), interpolation=InterpolationMode.BILINEAR, antialias=False)
    out = t.apply(to_tv_image(img))
    assert out.dtype == torch.uint8
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    ref_boxes = F.resize(to_tv_boxes(boxes, hw), list(new_hw), antialias=False)
    np.testing.assert_array_equal(t.apply(to_tv_boxes(boxes, hw)).as_subclass(torch.Tensor).numpy(),
                                  ref_boxes.as_subclass(torch.Tensor).numpy())
    # ResizeTransform's own default is still "bilinear"
    torch.testing.assert_close(ResizeTransform(*hw, *new_hw).apply(to_tv_image(img)), ref, rtol=0, atol=0)


def test_bilinear_sizes_are_the_earlier_ones():
    """Recorded from the code before INPUT.RESIZE_METHOD (it computed h * scale and w * scale)."""
    got = [ResizeShortestEdge.get_output_shape(h, w, 800, 1333, "bilinear")
           for h, w in [(88, 176), (124, 22), (172, 22), (352, 176), (480, 640), (37, 101)]]
    assert got == [(667, 1333), (1333, 237), (1333, 171), (1333, 667), (800, 1067), (488, 1333)]


# ---------------------------------------------------------------------------- config
def test_build_augmentation_uses_the_method_and_refuses_unknown():
    cfg = get_cfg()
    assert cfg.INPUT.RESIZE_METHOD == "pil"
    for is_train in (True, False):
        assert [a.method for a in build_augmentation(cfg, is_train) if isinstance(a, ResizeShortestEdge)] == ["pil"]
    cfg.INPUT.RESIZE_METHOD = "torchvision"
    assert build_augmentation(cfg, False)[0].method == "torchvision"
    cfg.INPUT.RESIZE_METHOD = "cv2"
    with pytest.raises(ValueError, match="INPUT.RESIZE_METHOD"):
        build_augmentation(cfg, True)
    with pytest.raises(ValueError, match="INPUT.RESIZE_METHOD"):
        ResizeShortestEdge(800, 1333, method="PIL")


@pytest.mark.parametrize("method,dtype", [("pil", torch.uint8), ("bilinear", torch.uint8),
                                          ("torchvision", torch.float32)])
def test_lsj_resize_follows_the_resize_method(method, dtype):
    """INPUT.RESIZE_METHOD reaches the large-scale jitter's resize too (detectron2's ResizeScale resizes with PIL):
    the key is not ignored when INPUT.LSJ.ENABLED."""
    cfg = get_cfg()
    cfg.INPUT.RESIZE_METHOD = method
    cfg.INPUT.LSJ.ENABLED = True
    cfg.INPUT.LSJ.SIZE = [64, 64]
    augs = build_augmentation(cfg, True)
    scale = [a for a in augs if isinstance(a, ResizeScale)][0]
    tfm = scale.get_transform(np.zeros((50, 70, 3), np.uint8), np.random.default_rng(0))
    assert tfm.method == method
    out, _ = apply_augmentations_v2(augs, to_tv_image(_image(50, 70)), np.random.default_rng(1))
    assert out.dtype == dtype and tuple(out.shape[-2:]) == (64, 64)
    if method == "pil":  # the resized pixels are PIL's
        img = _image(50, 70)
        ref = np.asarray(Image.fromarray(img).resize((tfm.new_w, tfm.new_h), Image.BILINEAR))
        assert np.array_equal(np.asarray(tfm.apply_image(img)), ref)


def test_photometric_refuses_float_images():
    with pytest.raises(TypeError, match="uint8"):
        PhotometricTransform(brightness=1.1).apply(tv_tensors.Image(torch.full((3, 4, 4), 100.0)))


# ---------------------------------------------------------------------------- float32 to the model
class _Backbone(nn.Module):
    size_divisibility = 0
    padding_constraints: dict = {}


class _Detector(nn.Module, ImageInputMixin):
    """The detectors' shared preprocessing (PIXEL_MEAN/STD on 0-255), recording what reaches the backbone."""

    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.register_pixel_stats([103.53, 116.28, 123.675], [57.375, 57.12, 58.395])
        self.seen = []

    def forward(self, batched_inputs):
        self.seen.append((batched_inputs, self.preprocess_image(batched_inputs)))
        return [{} for _ in batched_inputs]


def _dataset(root, h=45, w=61):
    img = _image(h, w)
    Image.fromarray(img).save(os.path.join(root, "a.png"))
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3.5, 4.25, 20.0, 17.5], "area": 350.0,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}]}
    with open(os.path.join(root, "a.json"), "w") as f:
        json.dump(coco, f)
    return img, os.path.join(root, "a.json")


def _cfg():
    cfg = get_cfg()
    cfg.INPUT.RESIZE_METHOD = "torchvision"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 80, 100
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def test_float_image_through_mapper_loader_and_predictor(tmp_path):
    img_rgb, json_file = _dataset(str(tmp_path))
    bgr = np.ascontiguousarray(img_rgb[:, :, ::-1])
    ref_images, ref_targets = _torchvision(80, 100)(
        [torch.from_numpy(bgr).permute(2, 0, 1).float()],
        [{"boxes": torch.tensor([[3.5, 4.25, 23.5, 21.75]]), "labels": torch.ones(1, dtype=torch.int64)}])
    rh, rw = ref_images.image_sizes[0]
    ref = ref_images.tensors[0, :, :rh, :rw]
    cfg = _cfg()

    # DatasetMapper (test mode, annotations kept): float32 image and torchvision's boxes
    rec = {"file_name": str(tmp_path / "a.png"), "image_id": 1, "height": 45, "width": 61,
           "annotations": [{"bbox": [3.5, 4.25, 20.0, 17.5], "category_id": 0, "iscrowd": 0}]}
    d = DatasetMapper(cfg, False, keep_annotations_in_test=True)(rec)
    assert d["image"].dtype == torch.float32 and (d["height"], d["width"]) == (45, 61)
    torch.testing.assert_close(d["image"], ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(d["instances"].gt_boxes, ref_targets[0]["boxes"], rtol=0, atol=0)

    # the test loader, then a detector's preprocessing: (image - PIXEL_MEAN) / PIXEL_STD on the unrounded floats
    name = "test_resize_methods_float"
    for cat in (DatasetCatalog, MetadataCatalog):
        if name in cat:
            cat.remove(name)
    register_coco_instances(name, {}, json_file, str(tmp_path))
    try:
        batch = next(iter(build_detection_test_loader(cfg, name)))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert batch[0]["image"].dtype == torch.float32
    torch.testing.assert_close(batch[0]["image"], ref, rtol=0, atol=1e-4)
    model = _Detector()
    model(batch)
    normed = model.seen[0][1].tensor[0]
    torch.testing.assert_close(normed, (ref - model.pixel_mean) / model.pixel_std, rtol=0, atol=1e-5)

    # tools/demo.py's Predictor: HWC uint8 in cfg.INPUT.FORMAT -> float32 tensor to the model
    demo = load_tool("demo")
    pred = object.__new__(demo.Predictor)
    pred.cfg, pred.model, pred._apply = cfg, _Detector(), apply_augmentations
    pred.augs = build_augmentation(cfg, is_train=False)
    pred(bgr)
    (inputs, _), = pred.model.seen
    assert inputs[0]["image"].dtype == torch.float32 and (inputs[0]["height"], inputs[0]["width"]) == (45, 61)
    torch.testing.assert_close(inputs[0]["image"], ref, rtol=0, atol=1e-4)
