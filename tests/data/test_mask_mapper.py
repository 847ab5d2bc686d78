"""DatasetMapper with MODEL.MASK_ON: gt_masks (N, H, W) uint8 in the augmented image, in gt_boxes' order, for both
INPUT.MASK_FORMATs and every segmentation kind, against pycocotools (rasterisation) and torchvision.transforms.v2
on tv_tensors.Mask (warping); through the real training augmentation lists (multi-scale + flip, crop, rotation,
LSJ) the masks lie on the objects drawn in the image. Bad segmentations are named."""
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from resnet_backbone.config import get_cfg
from resnet_backbone.data import DatasetError, DatasetMapper
from resnet_backbone.data.transforms import Augmentation, CropTransform, RandomFlip, ResizeShortestEdge

H, W = 40, 60
# floats: detectron2 keeps an integer polygon's dtype through its transforms (it would round the moved points)
SQUARE = [[10.0, 5.0, 30.0, 5.0, 30.0, 25.0, 10.0, 25.0]]  # class 0, drawn in channel 0 (RGB)
TRIANGLE = [[35.0, 8.0, 55.0, 30.0, 37.0, 36.0]]           # class 1, channel 1
DISC = np.zeros((H, W), np.uint8)                # class 2, channel 2: an RLE
DISC[np.hypot(*np.mgrid[0:H, 0:W] - np.array([28, 18])[:, None, None]) < 9] = 1


def _pyco(polys, h, w):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, h, w)))


def _record(tmp_path, rle="compressed"):
    """Each object in its own RGB channel at 255 (channels are independent, so overlaps do not matter)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :, 0] = 255 * _pyco(SQUARE, H, W)
    img[:, :, 1] = 255 * _pyco(TRIANGLE, H, W)
    img[:, :, 2] = 255 * DISC
    p = tmp_path / "img.png"
    Image.fromarray(img).save(p)
    if rle == "compressed":
        disc = {"size": [H, W], "counts": mask_util.encode(np.asfortranarray(DISC))["counts"].decode("ascii")}
    else:  # uncompressed: column-major runs
        flat = DISC.reshape(-1, order="F")
        edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])) != 0)
        disc = {"size": [H, W], "counts": np.diff(np.concatenate([[0], edges])).tolist()}
    return {"file_name": str(p), "image_id": 3, "height": H, "width": W, "annotations": [
        {"id": 1, "bbox": [10, 5, 20, 20], "category_id": 0, "iscrowd": 0, "segmentation": SQUARE},
        {"id": 2, "bbox": [0, 0, 60, 40], "category_id": 0, "iscrowd": 1, "segmentation": disc},  # crowd: out
        {"id": 3, "bbox": [35, 8, 20, 28], "category_id": 1, "iscrowd": 0, "segmentation": TRIANGLE},
        {"id": 4, "bbox": [9, 19, 19, 19], "category_id": 2, "iscrowd": 0, "segmentation": disc},
    ]}


def _resize_flip():
    return [ResizeShortestEdge((80,), 1000, "choice"), RandomFlip(prob=1.0)]


@pytest.mark.parametrize("rle", ["compressed", "uncompressed"])
def test_polygon_format_rasterises_transformed_polygons(tmp_path, rle):
    out = DatasetMapper(None, True, augmentations=_resize_flip(), mask_on=True, mask_format="polygon")(
        _record(tmp_path, rle))
    inst = out["instances"]
    m = inst.gt_masks
    assert m.dtype == torch.uint8 and tuple(m.shape) == (3, 80, 120) and set(m.unique().tolist()) == {0, 1}
    assert inst.gt_classes.tolist() == [0, 1, 2]  # crowd left out, order of gt_boxes
    for i, poly in enumerate((SQUARE, TRIANGLE)):  # x -> 120 - 2x, y -> 2y, then pycocotools
        p = np.asarray(poly[0], np.float64).reshape(-1, 2) * 2
        p[:, 0] = 120 - p[:, 0]
        np.testing.assert_array_equal(m[i].numpy(), _pyco([p.reshape(-1).tolist()], 80, 120))
    # the RLE is a bitmask: warped by v2 (nearest resize, flip) under "polygon" too
    ref = F.horizontal_flip(F.resize(tv_tensors.Mask(torch.from_numpy(DISC)[None]), [80, 120]))[0]
    torch.testing.assert_close(m[2], ref.as_subclass(torch.Tensor))
    # gt_boxes and gt_masks describe the same objects: the square's mask spans its box
    ys, xs = np.nonzero(m[0].numpy())
    x0, y0, x1, y1 = inst.gt_boxes[0].tolist()
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)


def test_bitmask_format_warps_with_v2(tmp_path):
    out = DatasetMapper(None, True, augmentations=_resize_flip(), mask_on=True, mask_format="bitmask")(
        _record(tmp_path))
    m = out["instances"].gt_masks
    assert m.dtype == torch.uint8 and tuple(m.shape) == (3, 80, 120)
    for i, full in enumerate((_pyco(SQUARE, H, W), _pyco(TRIANGLE, H, W), DISC)):
        ref = F.horizontal_flip(F.resize(tv_tensors.Mask(torch.from_numpy(full)[None]), [80, 120]))[0]
        torch.testing.assert_close(m[i], ref.as_subclass(torch.Tensor))


class _FixedCrop(Augmentation):
    def __init__(self, x0, y0, w, h):
        self.args = (x0, y0, w, h)

    def get_transform(self, image, rng=None):
        return CropTransform(*self.args, *image.shape[-2:])


@pytest.mark.parametrize("fmt", ["polygon", "bitmask"])
def test_masks_follow_boxes_through_filter_empty_instances(tmp_path, fmt):
    """A crop that leaves the triangle out: its box is dropped, and its mask with it (the masks stay aligned)."""
    out = DatasetMapper(None, True, augmentations=[_FixedCrop(0, 0, 33, 40)], mask_on=True, mask_format=fmt)(
        _record(tmp_path))
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 2] and tuple(inst.gt_masks.shape) == (2, 40, 33)
    ref = F.crop(tv_tensors.Mask(torch.from_numpy(np.stack([_pyco(SQUARE, H, W), DISC]))), 0, 0, 40, 33)
    torch.testing.assert_close(inst.gt_masks, ref.as_subclass(torch.Tensor))


def test_mask_off_keeps_the_inputs_as_they_were(tmp_path):
    rec = _record(tmp_path)
    a = DatasetMapper(None, True, augmentations=_resize_flip())(rec)["instances"]
    b = DatasetMapper(None, True, augmentations=_resize_flip(), mask_on=True)(rec)["instances"]
    assert set(a.get_fields()) == {"gt_boxes", "gt_classes", "gt_polygons"}
    assert set(b.get_fields()) == set(a.get_fields()) | {"gt_masks"}
    torch.testing.assert_close(a.gt_boxes, b.gt_boxes)
    cfg = get_cfg()
    assert DatasetMapper(cfg, True).mask_on is False
    cfg.MODEL.MASK_ON, cfg.INPUT.MASK_FORMAT = True, "bitmask"
    assert (DatasetMapper(cfg, True).mask_on, DatasetMapper(cfg, True).mask_format) == (True, "bitmask")
    cfg.INPUT.MASK_FORMAT = "rle"
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT"):
        DatasetMapper(cfg, True)
    from resnet_backbone.config.validate import find_cfg_problems

    assert any(p.startswith("INPUT.MASK_FORMAT: must be one of") for p in find_cfg_problems(cfg))


def _aug_cfg(kind):
    cfg = get_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (56, 72, 96)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    if kind == "crop":
        cfg.INPUT.CROP.ENABLED = True
        cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = "relative_range", [0.6, 0.6]
    elif kind == "rotation":
        cfg.INPUT.ROTATION_ANGLE = 25.0
    elif kind == "lsj":
        cfg.INPUT.LSJ.ENABLED = True
        cfg.INPUT.LSJ.SIZE, cfg.INPUT.LSJ.SCALE_RANGE, cfg.INPUT.LSJ.PAD_VALUE = [96, 96], [0.8, 2.0], 0.0
    elif kind == "torchvision":
        cfg.INPUT.RESIZE_METHOD = "torchvision"
    return cfg


@pytest.mark.parametrize("kind", ["multiscale_flip", "crop", "rotation", "lsj", "torchvision"])
@pytest.mark.parametrize("fmt", ["polygon", "bitmask"])
def test_masks_lie_on_the_objects_through_the_training_augmentations(tmp_path, kind, fmt):
    """build_augmentation(cfg, True) as training uses it: each gt mask covers its object's channel in the
    augmented image (IoU > 0.85; the edges are where bilinear image resampling and mask rasterisation differ)."""
    cfg = _aug_cfg(kind)
    cfg.MODEL.MASK_ON, cfg.INPUT.MASK_FORMAT = True, fmt
    mapper = DatasetMapper(cfg, True)
    rec = _record(tmp_path)
    seen = 0
    for seed in range(6):
        np.random.seed(seed)
        out = mapper(rec)
        img, inst = out["image"].float(), out["instances"]
        assert tuple(inst.gt_masks.shape) == (len(inst), *img.shape[-2:]) and inst.gt_masks.dtype == torch.uint8
        for m, c in zip(inst.gt_masks.bool(), inst.gt_classes.tolist()):
            obj = img[c] > 127.5
            if obj.sum() < 20:  # cropped to a sliver
                continue
            iou = (m & obj).sum().item() / (m | obj).sum().item()
            assert iou > 0.85, (kind, fmt, seed, c, iou)
            seen += 1
    assert seen >= 6


@pytest.mark.parametrize("seg,match", [
    (None, "MODEL.MASK_ON is set but the annotation has no segmentation"),
    ([[10, 5, 30, 5, 30]], "odd number"),
    ([[10, 5, 30, 5]], "3 points"),
    ([[10, 5, 30, 5, 30, float("inf")]], "finite"),
    ({"size": [H, W], "counts": "0P"}, "does not decode"),
    ({"size": [W, H], "counts": [H * W]}, "image is 40x60"),
])
def test_bad_segmentation_named(tmp_path, seg, match):
    rec = _record(tmp_path)
    rec["annotations"][2] = {k: v for k, v in rec["annotations"][2].items() if k != "segmentation"}
    if seg is not None:
        rec["annotations"][2]["segmentation"] = seg
    mapper = DatasetMapper(None, True, mask_on=True)
    with pytest.raises(DatasetError, match=match) as ei:
        mapper(rec)
    e = ei.value
    assert (e.file, e.record, e.field) == (rec["file_name"], "annotation id=3", "segmentation")
    if seg is None:  # without MASK_ON an annotation without segmentation is fine
        assert len(DatasetMapper(None, True)(rec)["instances"]) == 3


@pytest.mark.parametrize("short", [80, 56])
def test_polygon_format_matches_detectron2(tmp_path, short):
    """detectron2's mapper steps (transform_instance_annotations: polygons moved by the transforms, RLE decoded and
    apply_segmentation; annotations_to_instances(mask_format="bitmask"): polygons rasterised by pycocotools at the
    new size) give our "polygon" masks, on a resize and a flip. The polygons' masks are equal; the RLE's too at 2x,
    while at 1.4x detectron2's PIL nearest (pixel centres) and v2's nearest (torch's legacy "nearest", which our
    bitmasks use, as torchvision's Mask R-CNN resizes its masks) pick some edge pixels differently."""
    du = pytest.importorskip("detectron2.data.detection_utils", reason="detectron2 is not importable (see /tmp/d2)")
    T = pytest.importorskip("detectron2.data.transforms")
    rec = _record(tmp_path)
    long = short * 3 // 2
    augs = [ResizeShortestEdge((short,), 1000, "choice"), RandomFlip(prob=1.0)]
    ours = DatasetMapper(None, True, augmentations=augs, mask_on=True, mask_format="polygon")(rec)
    assert tuple(ours["image"].shape[-2:]) == (short, long)
    tfms = T.TransformList([T.ResizeTransform(H, W, short, long), T.HFlipTransform(long)])
    annos = [du.transform_instance_annotations(dict(a, bbox_mode=1), tfms, (short, long))
             for a in rec["annotations"] if not a["iscrowd"]]
    theirs = du.annotations_to_instances(annos, (short, long), mask_format="bitmask").gt_masks.tensor
    torch.testing.assert_close(ours["instances"].gt_masks[:2].bool(), theirs[:2])
    a, b = ours["instances"].gt_masks[2].bool(), theirs[2]
    if short == 80:
        torch.testing.assert_close(a, b)
    assert (a & b).sum() / (a | b).sum() > 0.9
