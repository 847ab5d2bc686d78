"""The text evaluator against the ICDAR 2015 Challenge 4 localization protocol (see the module docstring of
resnet_backbone/evaluation/text_evaluation.py). Every expected number below is computed by hand in the comment
next to it."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_backbone.evaluation.text_evaluation import evaluate_text_polygons, match_text_image


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def prh(r):
    return r["precision"], r["recall"], r["hmean"]


def test_exact_matches_in_any_detection_order():
    gts = [rect(0, 0, 10, 10), rect(20, 0, 30, 10)]
    r = match_text_image(gts, None, [rect(20, 0, 30, 10), rect(0, 0, 10, 10)])
    assert r["pairs"] == [(0, 1, 1.0), (1, 0, 1.0)]
    assert prh(r) == (1.0, 1.0, 1.0)
    assert prh(evaluate_text_polygons([gts], None, [gts])) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("det, hit", [
    (rect(0, 0, 10, 5), False),         # IoU 50/100 = 0.5 exactly: must be > 0.5
    (rect(0, 0, 10, 5.01), True),       # 50.1/100 = 0.501
    (rect(0, 0, 10, 20), False),        # 100/200 = 0.5
    (rect(0, 0, 10, 19.9), True),       # 100/199 = 0.5025
    (rect(3.3, 0, 13.3, 10), True),     # 67/133 = 0.5038
    (rect(3.4, 0, 13.4, 10), False),    # 66/134 = 0.4925
])
def test_iou_just_above_and_below_half(det, hit):
    r = evaluate_text_polygons([[rect(0, 0, 10, 10)]], None, [[det]])
    assert prh(r) == ((1.0, 1.0, 1.0) if hit else (0.0, 0.0, 0.0))


def test_one_detection_on_two_ground_truths_matches_only_the_first():
    gts = [rect(0, 0, 10, 10), rect(1, 0, 11, 10)]   # overlapping ground truths
    det = rect(0.5, 0, 10.5, 10)                      # IoU 9.5/10.5 = 0.905 with each
    r = match_text_image(gts, None, [det])
    assert [(i, j) for i, j, _ in r["pairs"]] == [(0, 0)]
    assert r["pairs"][0][2] == pytest.approx(9.5 / 10.5)
    # 1 match, 2 care gts, 1 care det: P 1, R 1/2, H 2/3
    assert prh(r) == pytest.approx((1.0, 0.5, 2 / 3))


def test_two_detections_on_one_ground_truth_first_in_order_wins():
    gt = rect(0, 0, 10, 10)
    dets = [rect(0, 0, 10, 8), rect(0, 0, 10, 10)]   # IoU 0.8, then IoU 1.0
    r = match_text_image([gt], None, dets)
    # official order: the first detection above 0.5 is taken, not the best one
    assert r["pairs"] == [(0, 0, pytest.approx(0.8))]
    assert prh(r) == pytest.approx((0.5, 1.0, 2 / 3))   # 1 match / 2 dets, 1 / 1 gt


def test_match_count_follows_official_order_not_best_iou():
    # IoU matrix (rows gt, columns det): g0: d0 8.5/11.5 = 0.739, d1 8/12 = 0.667; g1: d0 9.5/10.5 = 0.905,
    # d1 6/14 = 0.429. Official: g0 takes d0 (first above 0.5), g1 has only d1 left (0.429): 1 match.
    # (A best-IoU-first greedy or the Hungarian assignment pairs g1-d0 and g0-d1: 2 matches.)
    gts = [rect(0, 0, 10, 10), rect(2, 0, 12, 10)]
    dets = [rect(1.5, 0, 11.5, 10), rect(-2, 0, 8, 10)]
    r = match_text_image(gts, None, dets)
    assert [(i, j) for i, j, _ in r["pairs"]] == [(0, 0)]
    assert prh(evaluate_text_polygons([gts], None, [dets])) == pytest.approx((0.5, 0.5, 0.5))


def test_official_order_can_match_more_than_max_total_iou():
    # g0 = [3, 30], g1 = [8, 29], d0 = [8, 21], d1 = [10, 25] (all 10 high): g0-d0 13/27 = 0.481, g0-d1 15/27 =
    # 0.556, g1-d0 13/21 = 0.619, g1-d1 15/21 = 0.714. Official: g0 skips d0, takes d1; g1 takes d0: 2 matches.
    # (Maximising the total IoU pairs g0-d0 + g1-d1 = 1.195 > 1.175 and then drops g0-d0 below 0.5: 1 match.)
    gts = [rect(3, 0, 30, 10), rect(8, 0, 29, 10)]
    dets = [rect(8, 0, 21, 10), rect(10, 0, 25, 10)]
    r = match_text_image(gts, None, dets)
    assert [(i, j) for i, j, _ in r["pairs"]] == [(0, 1), (1, 0)]
    assert prh(r) == (1.0, 1.0, 1.0)


def test_detection_inside_dont_care_is_discarded():
    gts = [rect(0, 0, 10, 10), rect(50, 0, 70, 10)]
    dets = [rect(0, 0, 10, 10), rect(52, 1, 68, 9)]
    r = match_text_image(gts, [False, True], dets)
    assert r["dont_care_dets"] == [1] and (r["num_gt"], r["num_det"], r["matches"]) == (1, 1, 1)
    assert prh(r) == (1.0, 1.0, 1.0)
    # the same image with the region as a care gt: both dets hit
    assert prh(match_text_image(gts, [False, False], dets)) == (1.0, 1.0, 1.0)
    # a don't-care region is never matched, even by a perfect detection, and never counted as a miss
    r = match_text_image([rect(50, 0, 70, 10)], [True], [rect(50, 0, 70, 10)])
    assert (r["matches"], r["num_gt"], r["num_det"]) == (0, 0, 0)


@pytest.mark.parametrize("x0, discarded", [
    (4.0, True),    # area precision 60/100 = 0.6
    (4.9, True),    # 51/100
    (5.0, False),   # 50/100 = 0.5: must be > 0.5, so a false positive
    (5.1, False),   # 49/100
])
def test_detection_partly_over_dont_care(x0, discarded):
    gts = [rect(100, 0, 110, 10), rect(0, 0, 10, 10)]
    dets = [rect(100, 0, 110, 10), rect(x0, 0, x0 + 10, 10)]
    r = match_text_image(gts, [False, True], dets)
    assert r["dont_care_dets"] == ([1] if discarded else [])
    # discarded: 1/1 dets, 1/1 gts; kept: 1 match / 2 dets -> P 1/2, R 1, H 2/3
    assert prh(r) == pytest.approx((1.0, 1.0, 1.0) if discarded else (0.5, 1.0, 2 / 3))


def test_dont_care_regions_are_tested_one_by_one_not_as_a_union():
    dcs = [rect(0, 0, 10, 10), rect(10, 0, 20, 10)]
    det = rect(6, 0, 14, 12)   # area 96; 40 in each region (0.417 each), 80 in their union (0.833)
    r = match_text_image([rect(100, 0, 110, 10)] + dcs, [False, True, True], [rect(100, 0, 110, 10), det])
    assert r["dont_care_dets"] == [] and r["num_det"] == 2
    assert prh(r) == pytest.approx((0.5, 1.0, 2 / 3))


def test_empty_ground_truth_image():
    # per image (official per-sample rule): no care gt -> recall 1, precision 0 with detections, 1 without
    assert prh(match_text_image([], None, [rect(0, 0, 5, 5)])) == (0.0, 1.0, 0.0)
    assert prh(match_text_image([], None, [])) == (1.0, 1.0, 1.0)
    only_dc = match_text_image([rect(0, 0, 10, 10)], [True], [rect(1, 1, 9, 9)])
    assert prh(only_dc) == (1.0, 1.0, 1.0) and only_dc["dont_care_dets"] == [0]
    # data set: counts summed; image A 1 hit, image B 0 gts + 1 det -> 1 match / 2 dets, 1 / 1 gt
    a = ([rect(0, 0, 10, 10)], [rect(0, 0, 10, 10)])
    r = evaluate_text_polygons([a[0], []], None, [a[1], [rect(50, 50, 60, 60)]])
    assert prh(r) == pytest.approx((0.5, 1.0, 2 / 3))
    # nothing to find and nothing found anywhere: every denominator is 0, so all three are 0
    assert prh(evaluate_text_polygons([[], []], None, [[], []])) == (0.0, 0.0, 0.0)
    assert prh(evaluate_text_polygons([[rect(0, 0, 10, 10)]], [[True]], [[]])) == (0.0, 0.0, 0.0)


def test_empty_detection_image():
    assert prh(match_text_image([rect(0, 0, 10, 10), rect(20, 0, 30, 10)], None, [])) == (0.0, 0.0, 0.0)
    # image A 1 hit, image B 1 gt and no det -> 1 / 1 dets, 1 / 2 gts
    r = evaluate_text_polygons([[rect(0, 0, 10, 10)], [rect(0, 0, 10, 10)]], None, [[rect(0, 0, 10, 10)], []])
    assert prh(r) == pytest.approx((1.0, 0.5, 2 / 3))
    assert prh(evaluate_text_polygons([[rect(0, 0, 10, 10)]], None, [[]])) == (0.0, 0.0, 0.0)


L_SHAPE = np.array([[0, 0], [20, 0], [20, 10], [10, 10], [10, 20], [0, 20]], dtype=np.float64)   # area 300
HEXAGON = np.array([[0, 0], [10, 0], [15, 5], [10, 10], [0, 10], [-5, 5]], dtype=np.float64)     # area 150


@pytest.mark.parametrize("gt, det, iou", [
    (L_SHAPE, rect(0, 0, 20, 10), 200 / 300),
    (L_SHAPE, rect(0, 0, 20, 20), 300 / 400),
    (L_SHAPE, L_SHAPE[:4], 150 / 300),            # its first four points: a trapezoid of area 150, IoU 0.5: miss
    (HEXAGON, rect(0, 0, 10, 10), 100 / 150),
    (HEXAGON, rect(-5, 0, 15, 10), 150 / 200),
    (rect(0, 0, 10, 10), HEXAGON, 100 / 150),     # a 6-point detection on a 4-point gt
])
def test_non_quadrilateral_polygons(gt, det, iou):
    r = match_text_image([gt], None, [det])
    if iou > 0.5:
        assert len(r["pairs"]) == 1 and r["pairs"][0][2] == pytest.approx(iou)
    else:
        assert r["pairs"] == [] and (r["num_gt"], r["num_det"]) == (1, 1)


def test_degenerate_polygons_are_counted_like_the_official_script():
    gt = rect(0, 0, 10, 10)
    # a zero-area detection is a care detection that cannot match: a false positive
    for bad in ([[0, 0], [5, 5], [10, 10]], [[0, 0], [10, 10]], [[0, 0], [np.nan, 1], [3, 3]]):
        r = match_text_image([gt], None, [gt, bad])
        assert (r["matches"], r["num_det"]) == (1, 2), bad
    # ... even when it lies on a don't-care region (its area precision is 0, not > 0.5)
    r = match_text_image([rect(50, 0, 60, 10)], [True], [[[51, 1], [55, 5], [59, 9]]])
    assert r["dont_care_dets"] == [] and r["num_det"] == 1
    # a zero-area care gt is counted and cannot be found: a miss
    flat = [[20, 0], [30, 0], [30, 0], [20, 0]]
    r = evaluate_text_polygons([[gt, flat]], None, [[gt]])
    assert (r["matches"], r["num_gt"]) == (1, 2) and r["recall"] == 0.5


# ---------------------------------------------------------------------------- property test
# An independent reference on axis-aligned integer rectangles: areas by exact integer arithmetic (no shapely) and
# the rules written out directly from the protocol.
_box = st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(1, 8), st.integers(1, 8))


def _inter(a, b):
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def _reference(gts, ign, dets):
    area = [d[2] * d[3] for d in dets]
    dc = [g for g, i in zip(gts, ign) if i]
    kept = [j for j, d in enumerate(dets) if not any(2 * _inter(d, g) > area[j] for g in dc)]
    used, pairs = set(), []
    for i, g in enumerate(gts):
        if ign[i]:
            continue
        for j in kept:
            inter = _inter(g, dets[j])
            if j not in used and 2 * inter > g[2] * g[3] + area[j] - inter:   # IoU > 1/2, exactly
                used.add(j)
                pairs.append((i, j))
                break
    return pairs, len(gts) - sum(ign), len(kept)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_box, st.booleans()), max_size=6), st.lists(_box, max_size=6))
def test_fuzz_matches_an_exact_rectangle_reference(gt_flags, dets):
    gts = [g for g, _ in gt_flags]
    ign = [f for _, f in gt_flags]
    as_poly = [rect(x, y, x + w, y + h) for x, y, w, h in gts]
    r = match_text_image(as_poly, ign, [rect(x, y, x + w, y + h) for x, y, w, h in dets])
    pairs, num_gt, num_det = _reference(gts, ign, dets)
    assert [(i, j) for i, j, _ in r["pairs"]] == pairs
    assert (r["num_gt"], r["num_det"], r["matches"]) == (num_gt, num_det, len(pairs))
