import cv2
import numpy as np
import pytest

from resnet_backbone.evaluation.text_evaluation import polygon_iou
from resnet_backbone.modeling.text.postprocess import db_postprocess, order_quad, unclip
from resnet_backbone.modeling.text.targets import fill_polygons, make_db_targets


def _best_ious(found, truth):
    return [max((polygon_iou(f, t) for f in found), default=0.0) for t in truth]


def test_known_blobs_are_returned_in_original_coordinates():
    blobs = [cv2.boxPoints(((60, 40), (80, 24), 0)), cv2.boxPoints(((150, 90), (100, 30), 30)),
             cv2.boxPoints(((60, 130), (50, 40), -15))]
    prob = np.zeros((180, 240), np.float32)
    fill_polygons(prob, [b.astype(np.float64) for b in blobs], 0.9)
    prob += np.random.default_rng(0).uniform(0, 0.1, prob.shape).astype(np.float32)  # background noise < 0.3
    # the map is at half the original resolution; unclip_ratio 0: return the blobs themselves
    out = db_postprocess(prob, output_size=(360, 480), unclip_ratio=0.0, min_size=3)
    assert len(out["quads"]) == 3 and len(out["polygons"]) == 3
    truth = [b * 2 for b in blobs]
    assert min(_best_ious(out["quads"], truth)) >= 0.9
    assert min(_best_ious(out["polygons"], truth)) >= 0.9
    assert np.all(out["scores"] >= 0.9) and np.all(np.diff(out["scores"]) <= 0)
    for q in out["quads"]:
        assert q.shape == (4, 2) and q[:, 0].max() <= 480 and q[:, 1].max() <= 360


def test_shrunk_targets_unclip_back_to_original_regions():
    # what a perfect model predicts: the shrunk kernels. Unclip (1.5) restores near-square regions.
    polys = [cv2.boxPoints(((70, 60), (60, 50), 10)).astype(np.float64),
             cv2.boxPoints(((180, 110), (70, 60), -20)).astype(np.float64)]
    t = make_db_targets(polys, None, (180, 260))
    out = db_postprocess(t["prob_map"] * 0.95, unclip_ratio=1.5)
    assert len(out["quads"]) == 2
    assert min(_best_ious(out["quads"], polys)) >= 0.9


def test_box_thresh_min_size_and_max_candidates():
    prob = np.zeros((100, 100), np.float32)
    prob[10:30, 10:60] = 0.9   # strong and the largest
    prob[50:70, 10:50] = 0.45  # above binarize (0.3) but below box_thresh (0.6)
    prob[80:82, 60:90] = 0.95  # 2 px thin
    out = db_postprocess(prob, box_thresh=0.6, min_size=3)
    assert len(out["quads"]) == 1 and out["scores"][0] == pytest.approx(0.9, abs=1e-5)
    out = db_postprocess(prob, box_thresh=0.4, min_size=3)
    assert len(out["quads"]) == 2
    out = db_postprocess(prob, box_thresh=0.4, min_size=1)
    assert len(out["quads"]) == 3
    out = db_postprocess(prob, box_thresh=0.4, min_size=1, max_candidates=1)
    assert len(out["quads"]) == 1 and out["scores"][0] == pytest.approx(0.9, abs=1e-5)
    empty = db_postprocess(np.zeros((20, 20), np.float32))
    assert empty["quads"] == [] and empty["scores"].shape == (0,)
    with pytest.raises(ValueError, match="expected an"):
        db_postprocess(np.zeros((1, 20, 20), np.float32))


def test_unclip_and_order_quad():
    sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float64)
    big = unclip(sq, 1.5)  # D = 100 * 1.5 / 40 = 3.75 with round corners
    from resnet_backbone.modeling.text.targets import polygon_area
    assert polygon_area(big) == pytest.approx(100 + 40 * 3.75 + np.pi * 3.75 ** 2, rel=0.01)
    q = order_quad(np.array([[10, 10], [0, 0], [0, 10], [10, 0]]))
    np.testing.assert_array_equal(q, [[0, 0], [10, 0], [10, 10], [0, 10]])
