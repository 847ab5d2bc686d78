"""Boxes and polygons move with the image: resize, flips, rotation checked on known boxes and on the pixels."""
import numpy as np
import pytest

from resnet_backbone.config import get_cfg
from resnet_backbone.data.transforms import (
    CropTransform,
    HFlipTransform,
    RandomCrop,
    RandomFlip,
    RandomRotation,
    ResizeShortestEdge,
    ResizeTransform,
    RotationTransform,
    TransformList,
    VFlipTransform,
    apply_augmentations,
    build_augmentation,
)


def _box_image(h, w, box):
    """An image that is 255 exactly inside the integer box (x0, y0, x1, y1), 0 elsewhere."""
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    return img


def _pixel_box(img, thresh=127):
    ys, xs = np.nonzero(img[..., 0] > thresh)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def test_resize_scales_boxes_and_pixels():
    img = _box_image(40, 60, (10, 5, 30, 25))
    t = ResizeTransform(40, 60, 80, 120)
    out = t.apply_image(img)
    assert out.shape == (80, 120, 3)
    box = t.apply_box(np.array([[10, 5, 30, 25]]))[0]
    np.testing.assert_allclose(box, [20, 10, 60, 50])
    np.testing.assert_allclose(_pixel_box(out), box, atol=1)


def test_hflip_vflip():
    img = _box_image(40, 60, (10, 5, 30, 25))
    h = HFlipTransform(60)
    np.testing.assert_allclose(h.apply_box([[10, 5, 30, 25]])[0], [30, 5, 50, 25])
    np.testing.assert_allclose(_pixel_box(h.apply_image(img)), [30, 5, 50, 25])
    v = VFlipTransform(40)
    np.testing.assert_allclose(v.apply_box([[10, 5, 30, 25]])[0], [10, 15, 30, 35])
    np.testing.assert_allclose(_pixel_box(v.apply_image(img)), [10, 15, 30, 35])
    poly = [np.array([10, 5, 30, 5, 30, 25], np.float64)]
    np.testing.assert_allclose(h.apply_polygons(poly)[0], [[50, 5], [30, 5], [30, 25]])


def test_rotation_90_exact():
    """90 degrees counter-clockwise: a W x H image becomes H x W, (x, y) -> (y, W - x)."""
    img = _box_image(40, 60, (10, 5, 30, 25))
    t = RotationTransform(40, 60, 90.0, expand=True)
    out = t.apply_image(img)
    assert out.shape == (60, 40, 3)
    box = t.apply_box([[10, 5, 30, 25]])[0]
    np.testing.assert_allclose(box, [5, 30, 25, 50], atol=1e-9)
    np.testing.assert_allclose(_pixel_box(out), box, atol=1)
    np.testing.assert_allclose(t.apply_coords([[10, 5]]), [[5, 50]], atol=1e-9)
    # polygons rotate exactly (no box enlargement)
    poly = t.apply_polygons([[10, 5, 30, 5, 30, 25, 10, 25]])[0]
    np.testing.assert_allclose(poly, [[5, 50], [5, 30], [25, 30], [25, 50]], atol=1e-9)


def test_rotation_45_box_encloses_rotated_box():
    img = _box_image(64, 64, (22, 22, 42, 42))
    t = RotationTransform(64, 64, 45.0, expand=False)
    box = t.apply_box([[22, 22, 42, 42]])[0]
    c, half = 32.0, 10 * np.sqrt(2)
    np.testing.assert_allclose(box, [c - half, c - half, c + half, c + half], atol=1e-9)
    np.testing.assert_allclose(_pixel_box(t.apply_image(img)), box, atol=1.5)


def test_resize_shortest_edge_sizes():
    img = np.zeros((100, 200, 3), np.uint8)
    t = ResizeShortestEdge((50,), max_size=1000, sample_style="choice").get_transform(img)
    assert t.output_size(100, 200) == (50, 100)
    t = ResizeShortestEdge((80,), max_size=120, sample_style="choice").get_transform(img)
    assert t.output_size(100, 200) == (60, 120)  # long side capped at max_size
    np.random.seed(0)
    sizes = {ResizeShortestEdge((40, 44), 0, "range").get_transform(img).output_size(100, 200)[0] for _ in range(60)}
    assert sizes == {40, 41, 42, 43, 44}
    sizes = {ResizeShortestEdge((40, 60), 0, "choice").get_transform(img).output_size(100, 200)[0] for _ in range(30)}
    assert sizes == {40, 60}


def test_random_flip_probability_and_list_composition():
    img = np.zeros((10, 20, 3), np.uint8)
    np.random.seed(0)
    flips = [isinstance(RandomFlip(0.5).get_transform(img), HFlipTransform) for _ in range(200)]
    assert 60 < sum(flips) < 140
    tl = TransformList([ResizeTransform(10, 20, 20, 40), HFlipTransform(40)])
    np.testing.assert_allclose(tl.apply_box([[0, 0, 5, 5]])[0], [30, 0, 40, 10])
    assert tl.output_size(10, 20) == (20, 40)


def test_build_augmentation_from_config():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (32, 48)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.RANDOM_FLIP = "vertical"
    cfg.INPUT.ROTATION_ANGLE = 10.0
    augs = build_augmentation(cfg, True)
    assert [type(a) for a in augs] == [ResizeShortestEdge, RandomFlip, RandomRotation]
    assert augs[0].sample_style == "choice" and augs[1].horizontal is False
    img = np.zeros((50, 100, 3), np.uint8)
    out, tfm = apply_augmentations(augs, img)
    assert out.shape[:2] == tfm.output_size(50, 100)
    assert [type(a) for a in build_augmentation(cfg, False)] == [ResizeShortestEdge]
    cfg.INPUT.RANDOM_FLIP = "diagonal"
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        build_augmentation(cfg, True)


def test_grayscale_channel_kept():
    img = np.zeros((10, 20, 1), np.uint8)
    assert ResizeTransform(10, 20, 20, 40).apply_image(img).shape == (20, 40, 1)
    assert RotationTransform(10, 20, 30).apply_image(img).ndim == 3


def test_crop_moves_boxes_and_pixels():
    img = _box_image(40, 60, (10, 5, 30, 25))
    t = CropTransform(8, 4, 30, 20)
    out = t.apply_image(img)
    assert out.shape == (20, 30, 3) and t.output_size(40, 60) == (20, 30)
    np.testing.assert_allclose(t.apply_box([[10, 5, 30, 25]])[0], [2, 1, 22, 21])
    np.testing.assert_allclose(_pixel_box(out), [2, 1, 22, 20])  # bottom cut by the window


@pytest.mark.parametrize("crop_type,size,check", [
    ("relative", (0.5, 0.25), lambda h, w: (h, w) == (50, 50)),
    ("relative_range", (0.5, 0.5), lambda h, w: 50 <= h <= 100 and 100 <= w <= 200),
    ("absolute", (30, 500), lambda h, w: (h, w) == (30, 200)),
    ("absolute_range", (20, 40), lambda h, w: 20 <= h <= 40 and 20 <= w <= 40),
])
def test_random_crop_sizes(crop_type, size, check):
    img = np.zeros((100, 200, 3), np.uint8)
    np.random.seed(1)
    for _ in range(20):
        t = RandomCrop(crop_type, size).get_transform(img)
        h, w = t.apply_image(img).shape[:2]
        assert check(h, w), (h, w)
        if isinstance(t, CropTransform):
            assert 0 <= t.x0 <= 200 - w and 0 <= t.y0 <= 100 - h


def test_crop_from_config_and_bad_values():
    cfg = get_cfg()
    cfg.INPUT.CROP.ENABLED = True
    augs = build_augmentation(cfg, True)
    assert isinstance(augs[0], RandomCrop) and augs[0].crop_type == "relative_range"
    with pytest.raises(ValueError, match="CROP.TYPE"):
        RandomCrop("square", (1, 1))
    with pytest.raises(ValueError, match="fractions"):
        RandomCrop("relative", (2, 0.5))
