import cv2
import numpy as np
import pytest

from resnet_backbone.modeling.text.targets import (
    make_db_targets,
    offset_polygon,
    polygon_area,
    polygon_perimeter,
    shrink_offset,
)


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def test_shrink_offset_is_vatti_formula():
    poly = rect(20, 30, 120, 70)  # 100 x 40: A = 4000, L = 280
    assert polygon_area(poly) == 4000 and polygon_perimeter(poly) == 280
    d = shrink_offset(poly, 0.4)
    assert d == pytest.approx(4000 * (1 - 0.16) / 280)  # = 12
    shrunk = offset_polygon(poly, -d)
    assert len(shrunk) == 1
    # an inward offset keeps a rectangle's corners sharp: (w - 2D) x (h - 2D)
    assert polygon_area(shrunk[0]) == pytest.approx((100 - 2 * d) * (40 - 2 * d), rel=1e-4)


def test_shrunk_area_on_prob_map_matches_formula_rotated_and_concave():
    polys = [cv2.boxPoints(((80, 60), (90, 30), 30)).astype(np.float64),
             np.array([[150, 20], [230, 20], [230, 100], [190, 100], [190, 60], [150, 60]], dtype=np.float64)]
    t = make_db_targets(polys, [False, False], (140, 260))
    for poly in polys:
        d = shrink_offset(poly, 0.4)
        shrunk = offset_polygon(poly, -d)
        expected = sum(polygon_area(s) for s in shrunk)
        region = np.zeros((140, 260), np.uint8)
        cv2.fillPoly(region, [np.round(poly).astype(np.int32)], 1)
        filled = float((t["prob_map"] * region).sum())
        # OpenCV's inclusive fill adds up to about half a pixel along the shrunk border (more at concave steps)
        tol = 0.6 * sum(polygon_perimeter(s) for s in shrunk) + 4
        assert abs(filled - expected) <= tol, (filled, expected, tol)
        assert filled < 0.75 * polygon_area(poly)  # it really is shrunk


def test_prob_map_pixel_count_of_axis_aligned_rectangle():
    t = make_db_targets([rect(20, 30, 120, 70)], None, (100, 160))
    # shrunk rectangle [32, 108] x [42, 58]: 76 x 16 = 1216; OpenCV's inclusive fill adds one row/column
    assert 1216 <= t["prob_map"].sum() <= 77 * 17
    assert t["prob_map"][50, 70] == 1 and t["prob_map"][35, 70] == 0 and t["prob_map"][50, 25] == 0
    assert t["prob_mask"].min() == 1  # nothing is don't care


def test_threshold_map_peaks_on_border_and_decays_both_ways():
    poly = rect(20, 30, 120, 70)
    t = make_db_targets([poly], [False], (100, 160), thresh_min=0.3, thresh_max=0.7)
    th, mask = t["thresh_map"], t["thresh_mask"]
    row = th[50]  # horizontal line through the middle; the left border is at x = 20
    # pixel 19 and 20 have centres 0.5 px from the border: 1 - 0.5 / 12 of the range
    assert row[19] == pytest.approx(0.3 + 0.4 * (1 - 0.5 / 12), abs=1e-5)
    assert row[20] == pytest.approx(row[19], abs=1e-5)
    inward = row[20:33]
    outward = row[19:7:-1]
    assert np.all(np.diff(inward) < 0) and np.all(np.diff(outward) < 0)
    assert inward[-1] == pytest.approx(0.3) and row[60] == pytest.approx(0.3)  # beyond D inside: THRESH_MIN
    assert th.max() <= 0.7 + 1e-6 and th.min() >= 0.3 - 1e-6
    # before rescaling the map is 1 on the border: check via thresh_min=0, thresh_max=1
    t01 = make_db_targets([poly], [False], (100, 160), thresh_min=0.0, thresh_max=1.0)
    border_cols = t01["thresh_map"][50, [19, 20]]
    assert np.all(border_cols > 0.95)
    # the mask is the dilated polygon (D = 12 outwards): inside yes, far outside no
    assert mask[50, 9] == 1 and mask[50, 70] == 1 and mask[50, 5] == 0 and mask[10, 70] == 0
    d = 12.0
    dilated_area = 100 * 40 + 280 * d + np.pi * d * d
    assert abs(mask.sum() - dilated_area) < 0.5 * (280 + 2 * np.pi * d) + 4


def test_dont_care_zero_in_every_mask():
    care = rect(10, 10, 90, 40)
    dont = rect(100, 60, 180, 90)
    t = make_db_targets([care, dont], [False, True], (120, 200))
    inside = (slice(62, 88), slice(102, 178))
    assert t["prob_mask"][inside].max() == 0
    assert t["thresh_mask"][inside].max() == 0
    assert t["prob_map"][inside].max() == 0
    # the care polygon is untouched
    assert t["prob_map"][25, 50] == 1 and t["prob_mask"][25, 50] == 1 and t["thresh_mask"][25, 50] == 1


def test_tiny_polygon_is_dont_care_and_padding_masked():
    t = make_db_targets([rect(10, 10, 60, 10.5)], [False], (64, 96), min_text_size=2, valid_size=(48, 80))
    assert t["prob_map"].sum() == 0 and t["prob_mask"][10, 30] == 0
    assert t["prob_mask"][50:].max() == 0 and t["prob_mask"][:, 80:].max() == 0
    assert t["prob_mask"][:48, :80].mean() > 0.95


def test_overlapping_polygons_take_max_threshold_and_flags_length_checked():
    a, b = rect(10, 10, 60, 40), rect(50, 10, 100, 40)
    t = make_db_targets([a, b], None, (60, 120))
    ta = make_db_targets([a], None, (60, 120))["thresh_map"]
    tb = make_db_targets([b], None, (60, 120))["thresh_map"]
    np.testing.assert_allclose(t["thresh_map"], np.maximum(ta, tb), atol=1e-6)
    with pytest.raises(ValueError, match="ignore flags"):
        make_db_targets([a, b], [False], (60, 120))
