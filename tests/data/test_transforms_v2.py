"""transforms.v2 augmentations: boxes, masks and polygons follow the pixels through flip, resize, crop, LSJ;
photometric changes pixels only; every draw is a function of the RNG seeded per (seed, position)."""
import cv2
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import tv_tensors

from resnet_backbone.config import get_cfg
from resnet_backbone.config.validate import find_cfg_problems
from resnet_backbone.data import DatasetMapper
from resnet_backbone.data.build import ResumableTrainLoader
from resnet_backbone.data.transforms import (
    CropTransform,
    FixedSizeCrop,
    HFlipTransform,
    PadTransform,
    PhotometricTransform,
    RandomCrop,
    RandomFlip,
    RandomPhotometricDistort,
    ResizeScale,
    ResizeShortestEdge,
    ResizeTransform,
    RotationTransform,
    TransformList,
    apply_augmentations_v2,
    build_augmentation,
    from_tv_image,
    to_tv_boxes,
    to_tv_image,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
# (x0, y0, x1, y1), at least 6 px apart so blurred edges never touch
RECTS = [(6, 8, 40, 30), (50, 10, 90, 50), (12, 44, 36, 92), (100, 60, 150, 110)]


def _scene(h=120, w=160):
    img = np.zeros((h, w, 3), np.uint8)
    masks = np.zeros((len(RECTS), h, w), np.uint8)
    for k, ((x0, y0, x1, y1), c) in enumerate(zip(RECTS, COLOURS)):
        img[y0:y1, x0:x1] = c
        masks[k, y0:y1, x0:x1] = 1
    return img, masks, np.array(RECTS, np.float64)


def _region(img, colour):
    """Pixels of `colour` (after blending with black at the edges: each channel on the right side of 128)."""
    c = np.asarray(colour) > 0
    return np.all((img > 127) == c, axis=2) & np.any(img > 127, axis=2)


def _pixel_box(region):
    ys, xs = np.nonzero(region)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def _run(tfm, img, masks, boxes):
    out = from_tv_image(tfm.apply(to_tv_image(img)))
    m = tfm.apply(tv_tensors.Mask(torch.from_numpy(masks))).numpy()
    b = tfm.apply(to_tv_boxes(boxes, img.shape[:2])).as_subclass(torch.Tensor).numpy()
    polys = tfm.apply_polygons([[x0, y0, x1, y0, x1, y1, x0, y1] for x0, y0, x1, y1 in boxes])
    return out, m, b, polys


def _check_follows(out, m, b, polys, exact=False, tol=1.5):
    h, w = out.shape[:2]
    assert m.shape[-2:] == (h, w)
    bc = np.clip(b, 0, [w, h, w, h])
    seen = 0
    for k, colour in enumerate(COLOURS):
        region = _region(out, colour)
        if not region.any():  # cropped away (or below a pixel): its clipped box is (nearly) empty
            assert min(bc[k, 2] - bc[k, 0], bc[k, 3] - bc[k, 1]) < 1.5, (k, bc[k])
            continue
        seen += 1
        np.testing.assert_allclose(_pixel_box(region), bc[k], atol=0 if exact else tol, err_msg=f"box {k}")
        pts = np.clip(polys[k], 0, [w, h])  # the polygon (the rectangle's corners) goes where the box goes
        np.testing.assert_allclose(np.r_[pts.min(0), pts.max(0)], bc[k], atol=1e-4)  # v2 scales in float32
        mask = m[k].astype(bool)
        if exact:
            np.testing.assert_array_equal(mask, region)
        else:  # nearest-resized mask vs blurred pixels: any disagreement is on the region's 1-px border
            ker = np.ones((3, 3), np.uint8)
            r8 = region.astype(np.uint8)  # (a crop edge through the region is border too: erode with 0 outside)
            border = cv2.dilate(r8, ker) != cv2.erode(r8, ker, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            assert not np.any((mask != region) & ~border), f"mask {k} departs from its colour region"
    return seen


def test_flip_crop_pad_exact():
    img, masks, boxes = _scene()
    for tfm in [HFlipTransform(160, 120), CropTransform(20, 15, 100, 80, 120, 160), PadTransform(120, 160, 130, 200),
                TransformList([HFlipTransform(160, 120), CropTransform(5, 40, 140, 80, 120, 160)])]:
        out, m, b, polys = _run(tfm, img, masks, boxes)
        assert _check_follows(out, m, b, polys, exact=True) >= 2
    out = PadTransform(120, 160, 130, 200, pad_value=77).apply_image(img)
    assert out.shape == (130, 200, 3) and (out[120:] == 77).all() and (out[:, 160:] == 77).all()


@pytest.mark.parametrize("new_hw", [(240, 320), (60, 80), (37, 101), (300, 170)])
def test_resize_boxes_masks_follow(new_hw):
    img, masks, boxes = _scene()
    tfm = ResizeTransform(120, 160, *new_hw)
    out, m, b, polys = _run(tfm, img, masks, boxes)
    assert out.shape[:2] == new_hw and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert _check_follows(out, m, b, polys) == 4


@pytest.mark.parametrize("seed", range(6))
def test_lsj_fixed_size_and_follow(seed):
    img, masks, boxes = _scene()
    augs = [RandomFlip(0.5), ResizeScale(0.4, 2.0, 96, 128), FixedSizeCrop((96, 128), pad_value=0)]
    rng = np.random.default_rng(seed)
    out, tfm = apply_augmentations_v2(augs, to_tv_image(img), rng)
    assert tuple(out.shape) == (3, 96, 128)
    _, m, b, polys = _run(tfm, img, masks, boxes)
    assert _check_follows(from_tv_image(out), m, b, polys) >= 1


def test_lsj_small_scale_pads_and_large_scale_crops():
    img, _, _ = _scene()
    small = TransformList([ResizeScale(0.5, 0.5, 96, 128).get_transform(img),
                           FixedSizeCrop((96, 128), pad_value=128).get_transform(np.zeros((48, 64, 3)))])
    out = small.apply_image(img)
    assert out.shape == (96, 128, 3) and (out[48:] == 128).all() and (out[:, 64:] == 128).all()
    crop = FixedSizeCrop((96, 128)).get_transform(np.zeros((192, 256, 3)), np.random.default_rng(0))
    assert crop.output_size(192, 256) == (96, 128) and isinstance(crop.transforms[0], CropTransform)


def test_rotation_moves_masks_and_boxes():
    img, masks, boxes = _scene()
    t = RotationTransform(120, 160, 90.0)
    out, m, b, polys = _run(t, img, masks, boxes)
    assert out.shape[:2] == (160, 120) and m.shape == (4, 160, 120)
    assert _check_follows(out, m, b, polys, tol=1.0) == 4


def test_photometric_changes_pixels_not_geometry():
    img, masks, boxes = _scene()
    img = img // 2 + 40  # mid-range values so every op shows
    t = PhotometricTransform(1.3, 0.7, 1.5, 0.1, bgr=False)
    out, m, b, polys = _run(t, img, masks, boxes)
    assert out.shape == img.shape and np.abs(out.astype(int) - img).max() > 20
    np.testing.assert_array_equal(b, boxes)
    np.testing.assert_array_equal(m, masks)
    np.testing.assert_array_equal(polys[0], [[6, 8], [40, 8], [40, 30], [6, 30]])
    # BGR images are treated as RGB for the colour ops: same result as on the RGB view
    bgr = PhotometricTransform(1.3, 0.7, 1.5, 0.1, bgr=True).apply_image(img[:, :, ::-1])
    np.testing.assert_array_equal(bgr[:, :, ::-1], out)
    gray = PhotometricTransform(1.3, 0.7, 1.5, 0.1).apply_image(img[:, :, :1])
    assert gray.shape == (120, 160, 1) and not np.array_equal(gray, img[:, :, :1])


def test_photometric_draws_and_bad_strengths():
    img = np.full((8, 8, 3), 100, np.uint8)
    aug = RandomPhotometricDistort(0.2, 0.3, 0.4, 0.05)
    t = aug.get_transform(img, np.random.default_rng(1))
    assert 0.8 <= t.brightness <= 1.2 and 0.7 <= t.contrast <= 1.3 and 0.6 <= t.saturation <= 1.4
    assert -0.05 <= t.hue <= 0.05 and t.bgr
    with pytest.raises(ValueError, match="INPUT.PHOTOMETRIC.HUE"):
        RandomPhotometricDistort(hue=0.6)
    with pytest.raises(ValueError, match="INPUT.PHOTOMETRIC.CONTRAST"):
        RandomPhotometricDistort(contrast=float("nan"))


def test_explicit_rng_is_reproducible_and_leaves_global_state():
    img, _, _ = _scene()
    augs = [RandomCrop("relative_range", (0.5, 0.5)), ResizeShortestEdge((50, 90), 200, "range"), RandomFlip(),
            RandomPhotometricDistort(0.2, 0.2, 0.2, 0.02, "RGB")]
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    a, ta = apply_augmentations_v2(augs, to_tv_image(img), np.random.default_rng(3))
    b, tb = apply_augmentations_v2(augs, to_tv_image(img), np.random.default_rng(3))
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert torch.equal(a, b) and ta.output_size(120, 160) == tb.output_size(120, 160)
    outs = {tuple(apply_augmentations_v2(augs, to_tv_image(img), np.random.default_rng(s))[0].shape)
            for s in range(8)}
    assert len(outs) > 1


def _record(tmp_path):
    img, _, boxes = _scene()
    p = tmp_path / "scene.png"
    Image.fromarray(img).save(p)
    annos = [{"id": k, "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": k, "iscrowd": 0,
              "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]} for k, (x0, y0, x1, y1) in enumerate(RECTS)]
    return {"file_name": str(p), "image_id": 1, "height": 120, "width": 160, "annotations": annos}


def _lsj_cfg():
    cfg = get_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.LSJ.ENABLED = True
    cfg.INPUT.LSJ.SIZE = [96, 128]
    cfg.INPUT.LSJ.SCALE_RANGE = [0.5, 2.0]
    cfg.INPUT.LSJ.PAD_VALUE = 0.0
    cfg.INPUT.PHOTOMETRIC.ENABLED = True
    cfg.INPUT.PHOTOMETRIC.HUE = 0.0  # keep the colours identifiable for the box check
    return cfg


def test_mapper_lsj_photometric_boxes_follow(tmp_path):
    cfg = _lsj_cfg()
    mapper = DatasetMapper(cfg, True)
    loader = iter(ResumableTrainLoader([_record(tmp_path)], mapper, batch_size=8, seed=5, shuffle=False))
    seen = 0
    for d in next(loader):
        assert tuple(d["image"].shape) == (3, 96, 128) and d["image"].dtype == torch.uint8
        img = d["image"].permute(1, 2, 0).numpy()
        inst = d["instances"]
        for k, box in zip(inst.gt_classes.tolist(), inst.gt_boxes.numpy()):
            region = _region(img, COLOURS[k])
            if region.sum() > 4:
                seen += 1
                np.testing.assert_allclose(_pixel_box(region), box, atol=2.0)
                poly = np.clip(inst.gt_polygons[inst.gt_classes.tolist().index(k)], 0, [128, 96])  # not clipped
                np.testing.assert_allclose(np.r_[poly.min(0), poly.max(0)], box, atol=1e-4)
    assert seen >= 8


def test_same_position_same_sample_other_position_differs(tmp_path):
    cfg = _lsj_cfg()
    cfg.INPUT.PHOTOMETRIC.HUE = 0.05
    mapper = DatasetMapper(cfg, True)
    rec = [_record(tmp_path)]

    def batch(start_iter):
        return next(iter(ResumableTrainLoader(rec, mapper, 2, seed=11, start_iter=start_iter, shuffle=False)))

    a, b, c = batch(3), batch(3), batch(4)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"])
        assert torch.equal(x["instances"].gt_boxes, y["instances"].gt_boxes)
    assert not torch.equal(a[0]["image"], a[1]["image"])  # positions 6 and 7
    assert not any(torch.equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_build_augmentation_lsj_and_photometric():
    cfg = _lsj_cfg()
    augs = build_augmentation(cfg, True)
    assert [type(a) for a in augs] == [RandomPhotometricDistort, RandomFlip, ResizeScale, FixedSizeCrop]
    assert augs[0].bgr is False and augs[3].crop_size == (96, 128)
    assert [type(a) for a in build_augmentation(cfg, False)] == [ResizeShortestEdge]
    default = build_augmentation(get_cfg(), True)
    assert [type(a) for a in default] == [ResizeShortestEdge, RandomFlip]  # both off by default
    cfg.INPUT.CROP.ENABLED = True
    with pytest.raises(ValueError, match="INPUT.LSJ.ENABLED"):
        build_augmentation(cfg, True)


def test_validate_lsj_photometric_keys():
    cfg = get_cfg()
    assert find_cfg_problems(cfg, 1, model=False) == []  # the input keys only: no detector
    cfg.INPUT.LSJ.ENABLED = True
    cfg.INPUT.LSJ.SCALE_RANGE = [2.0, 0.1]
    cfg.INPUT.LSJ.SIZE = [0, 64]
    cfg.INPUT.LSJ.PAD_VALUE = 300.0
    cfg.INPUT.ROTATION_ANGLE = 5.0
    cfg.INPUT.PHOTOMETRIC.ENABLED = True
    cfg.INPUT.PHOTOMETRIC.SATURATION = 1.5
    cfg.INPUT.PHOTOMETRIC.HUE = -0.1
    probs = "\n".join(find_cfg_problems(cfg, 1))
    for key in ("INPUT.LSJ.SCALE_RANGE", "INPUT.LSJ.SIZE", "INPUT.LSJ.PAD_VALUE", "INPUT.ROTATION_ANGLE",
                "INPUT.PHOTOMETRIC.SATURATION", "INPUT.PHOTOMETRIC.HUE"):
        assert key in probs, key


@settings(max_examples=30, deadline=None)
@given(h=st.integers(90, 240), w=st.integers(90, 240), lo=st.floats(0.5, 1.0), span=st.floats(0.0, 1.5),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_lsj_boxes_follow_pixels(h, w, lo, span, seed):
    img, masks, boxes = _scene()
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST)
    masks = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in masks])
    boxes = boxes * [w / 160, h / 120, w / 160, h / 120]
    augs = [RandomFlip(0.5), ResizeScale(lo, lo + span, 80, 96), FixedSizeCrop((80, 96), pad_value=0)]
    out, tfm = apply_augmentations_v2(augs, to_tv_image(img), np.random.default_rng(seed))
    assert tuple(out.shape) == (3, 80, 96)
    rs = [t for t in tfm.transforms if isinstance(t, ResizeTransform)]
    sx, sy = (rs[0].new_w / 160, rs[0].new_h / 120) if rs else (w / 160, h / 120)
    assume(min(sx, sy) >= 0.4)  # the scene's 10-px gaps stay >= 4 px, so blurred colours never mix
    _, m, b, polys = _run(tfm, img, masks, boxes)
    # the scene's nearest-neighbour resize to (h, w) puts an edge up to 1 px off its scaled box, and the LSJ resize
    # magnifies that by its own scale; the bilinear edge adds ~1 px (h = w = 90 scaled 2.2x: 2.4 px)
    up = max(rs[0].new_w / w, rs[0].new_h / h) if rs else 1.0
    _check_follows(from_tv_image(out), m, b, polys, tol=max(2.0, 1.0 + up))


@pytest.mark.parametrize("new_hw", [(160, 160), (120, 200), (300, 260)])
def test_resize_keeps_the_previous_cv2_bilinear_pixels(new_hw):
    """v2 replaced a cv2.INTER_LINEAR resize: the pixels a trained model sees must stay within rounding (1 level)
    of it, down and up (antialiasing moved them by up to 5 levels on the quickstart's 192 -> 160 downscale)."""
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((192, 192, 3)) * 255).astype(np.uint8), (5, 5), 2)
    ref = cv2.resize(img, (new_hw[1], new_hw[0]), interpolation=cv2.INTER_LINEAR)
    out = ResizeTransform(192, 192, *new_hw).apply_image(img)
    assert out.shape == ref.shape
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
