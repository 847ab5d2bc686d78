import json

import numpy as np
import pytest

from resnet_backbone.evaluation.text_evaluation import (
    TextEvaluator,
    evaluate_text_polygons,
    match_text_image,
    polygon_iou,
)


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def test_polygon_iou_exact_values():
    assert polygon_iou(rect(0, 0, 10, 10), rect(0, 0, 10, 10)) == pytest.approx(1.0)
    assert polygon_iou(rect(0, 0, 10, 10), rect(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert polygon_iou(rect(0, 0, 10, 10), rect(20, 20, 30, 30)) == 0.0
    assert polygon_iou(rect(0, 0, 10, 10), [[0, 0], [1, 1]]) == 0.0  # degenerate
    # a self-intersecting (bow-tie) detection is repaired into its two triangles (area 50)
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=np.float64)
    assert polygon_iou(bowtie, rect(0, 0, 10, 10)) == pytest.approx(0.5)


def test_exact_hmean_with_matches_misses_false_positives_and_dont_care():
    # image 1: 3 care gts + 1 don't care; 2 hits, 1 miss, 1 false positive, 1 detection inside the don't care
    gts1 = [rect(0, 0, 40, 10), rect(0, 20, 40, 30), rect(0, 40, 40, 50), rect(60, 0, 100, 20)]
    ign1 = [False, False, False, True]
    dets1 = [rect(1, 0, 41, 10),          # IoU 39/41 with gt0: hit
             rect(0, 21, 40, 31),         # IoU 0.8 with gt1: hit
             rect(200, 200, 220, 220),    # false positive
             rect(62, 2, 98, 18)]         # inside don't care: not counted
    # image 2: 1 gt; a detection at IoU exactly 1/3 (a miss) -> 0 hits, 1 FP, 1 miss
    gts2 = [rect(0, 0, 10, 10)]
    dets2 = [rect(5, 0, 15, 10)]
    r = evaluate_text_polygons([gts1, gts2], [ign1, [False]], [dets1, dets2])
    assert (r["matches"], r["num_gt"], r["num_det"]) == (2, 4, 4)
    assert r["precision"] == pytest.approx(2 / 4)
    assert r["recall"] == pytest.approx(2 / 4)
    assert r["hmean"] == pytest.approx(0.5)
    one = match_text_image(gts1, ign1, dets1)
    assert one["dont_care_dets"] == [3] and one["matches"] == 2 and one["num_det"] == 3 and one["num_gt"] == 3
    p, rec = 2 / 3, 2 / 3
    assert evaluate_text_polygons([gts1], [ign1], [dets1])["hmean"] == pytest.approx(2 * p * rec / (p + rec))


def test_one_to_one_matching_and_threshold():
    gts = [rect(0, 0, 10, 10)]
    dets = [rect(0, 0, 10, 10), rect(0, 0, 10, 9)]  # both overlap well: only one may match
    r = evaluate_text_polygons([gts], None, [dets])
    assert (r["matches"], r["num_det"]) == (1, 2)
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(1.0)
    assert r["hmean"] == pytest.approx(2 / 3)
    # the best-IoU pair wins: det0 (IoU 1) matches, not det1
    assert match_text_image(gts, None, dets)["pairs"] == [(0, 0, 1.0)]
    # IoU must be > 0.5: exactly 0.5 is a miss
    half = rect(0, 0, 10, 5)
    assert evaluate_text_polygons([gts], None, [[half]])["matches"] == 0


def test_dont_care_overlap_rule_and_empty_cases():
    dc = rect(0, 0, 10, 10)
    mostly_in = rect(2, 0, 14, 10)     # 8/12 of it inside the don't care: dropped
    mostly_out = rect(6, 0, 18, 10)    # 4/12 inside: a false positive
    r = match_text_image([dc], [True], [mostly_in, mostly_out])
    assert r["dont_care_dets"] == [0] and r["num_det"] == 1 and r["num_gt"] == 0
    # official data-set rule: an empty denominator gives 0, even with nothing to find and nothing found
    assert evaluate_text_polygons([[]], None, [[]]) == {"precision": 0.0, "recall": 0.0, "hmean": 0.0,
                                                        "matches": 0, "num_gt": 0, "num_det": 0}
    assert evaluate_text_polygons([[rect(0, 0, 5, 5)]], None, [[]])["hmean"] == 0.0
    assert evaluate_text_polygons([[]], None, [[rect(0, 0, 5, 5)]])["precision"] == 0.0
    with pytest.raises(ValueError):
        evaluate_text_polygons([[]], None, [[], []])


def test_text_evaluator_reads_catalog_and_writes_predictions(tmp_path):
    from resnet_backbone.data.catalog import DatasetCatalog, MetadataCatalog

    name = "test_text_eval_tiny"
    records = [
        {"file_name": "a.png", "image_id": 1, "height": 50, "width": 100, "annotations": [
            {"id": 1, "bbox": [0, 0, 40, 10], "category_id": 0, "iscrowd": 0,
             "segmentation": [rect(0, 0, 40, 10).reshape(-1).tolist()], "ignore": False},
            {"id": 2, "bbox": [60, 0, 40, 20], "category_id": 0, "iscrowd": 0,
             "segmentation": [rect(60, 0, 100, 20).reshape(-1).tolist()], "ignore": True}]},
        {"file_name": "b.png", "image_id": 2, "height": 50, "width": 100, "annotations": [
            {"id": 3, "bbox": [0, 0, 10, 10], "category_id": 0, "iscrowd": 0,
             "segmentation": [rect(0, 0, 10, 10).reshape(-1).tolist()]}]},
    ]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(evaluator_type="text")
    try:
        ev = TextEvaluator(name, output_dir=str(tmp_path))
        ev.reset()
        ev.process([{"image_id": 1}, {"image_id": 2}],
                   [{"polygons": [rect(0, 0, 40, 10), rect(61, 1, 99, 19)], "scores": np.array([0.9, 0.8])},
                    {"polygons": [rect(30, 30, 40, 40)], "scores": [0.7]}])
        res = ev.evaluate()
        # 1 hit / 2 care gts; 1 hit / 2 care dets (the don't-care detection is dropped)
        assert res == {"text": {"precision": pytest.approx(0.5), "recall": pytest.approx(0.5),
                                "hmean": pytest.approx(0.5)}}
        dumped = json.loads((tmp_path / "text_predictions.json").read_text())
        assert [d["image_id"] for d in dumped] == [1, 2] and len(dumped[0]["polygons"]) == 2
        ev.reset()
        ev.process([{"image_id": 99}], [{"polygons": []}])
        with pytest.raises(KeyError, match="99"):
            ev.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
