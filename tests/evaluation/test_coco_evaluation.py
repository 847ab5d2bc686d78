"""COCOEvaluator against pycocotools run directly; perfect / shuffled-label / empty predictions; backends agree."""
import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from _coco import detections_to_coco, pycocotools_bbox_stats
from pycocotools.coco import COCO

from resnet_backbone.data import DatasetCatalog, MetadataCatalog, register_coco_instances
from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset
from resnet_backbone.evaluation import COCOEvaluator


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_eval")
    json_file = generate_shapes_dataset(root, "val", 12, image_size=96, seed=3)
    name = "test_coco_eval_shapes"
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, str(root / "val"))
    dicts = DatasetCatalog.get(name)
    return name, json_file, dicts


def _perfect_outputs(dicts):
    """Ground truth as predictions (contiguous labels, XYXY), score 1."""
    inputs, outputs = [], []
    for d in dicts:
        anns = [a for a in d["annotations"] if not a["iscrowd"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        inputs.append({"image_id": d["image_id"], "height": d["height"], "width": d["width"]})
        outputs.append({"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels})
    return inputs, outputs


def _noisy_outputs(dicts, seed=0):
    """Jittered GT boxes plus random false positives, random scores: a mid-range AP."""
    g = torch.Generator().manual_seed(seed)
    inputs, outputs = _perfect_outputs(dicts)
    for out in outputs:
        n = len(out["boxes"])
        jitter = (torch.rand((n, 4), generator=g) - 0.5) * 6
        fp = torch.rand((3, 2), generator=g) * 60
        fp = torch.cat([fp, fp + 10 + torch.rand((3, 2), generator=g) * 20], 1)
        out["boxes"] = torch.cat([out["boxes"] + jitter, fp])
        out["scores"] = torch.rand(n + 3, generator=g)
        out["labels"] = torch.cat([out["labels"], torch.randint(0, 3, (3,), generator=g)])
    return inputs, outputs


def _direct_pycocotools(json_file, inputs, outputs, id_map):
    c2d = {c: d for d, c in id_map.items()}
    return pycocotools_bbox_stats(json_file, detections_to_coco(inputs, outputs, c2d))


def _evaluate(name, inputs, outputs, **kw):
    ev = COCOEvaluator(name, distributed=False, **kw)
    ev.reset()
    for i in range(0, len(inputs), 2):
        ev.process(inputs[i:i + 2], outputs[i:i + 2])
    return ev.evaluate()["bbox"]


def test_matches_pycocotools_directly(shapes, tmp_path):
    name, json_file, dicts = shapes
    inputs, outputs = _noisy_outputs(dicts)
    res = _evaluate(name, inputs, outputs, output_dir=str(tmp_path))
    stats = _direct_pycocotools(json_file, inputs, outputs, MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id)
    for i, k in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
        ref = stats[i] * 100 if stats[i] >= 0 else float("nan")
        assert (math.isnan(ref) and math.isnan(res[k])) or res[k] == pytest.approx(ref, abs=1e-9), k
    assert 5 < res["AP"] < 95  # a mid-range number: the comparison is not trivially 0 == 0 or 100 == 100
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(written) == sum(len(o["boxes"]) for o in outputs)
    assert {r["category_id"] for r in written} <= {1, 3, 7}
    assert {"AP-circle", "AP-square", "AP-triangle"} <= set(res)


def test_perfect_predictions_give_100(shapes):
    name, _, dicts = shapes
    res = _evaluate(name, *_perfect_outputs(dicts))
    assert res["AP"] == pytest.approx(100.0)
    assert res["AP50"] == pytest.approx(100.0)
    for cls in ("circle", "square", "triangle"):
        assert res[f"AP-{cls}"] == pytest.approx(100.0)


def test_wrong_id_mapping_gives_about_zero(shapes):
    """Labels shifted by one class (an off-by-one in the id mapping) must score ~0."""
    name, _, dicts = shapes
    inputs, outputs = _perfect_outputs(dicts)
    for o in outputs:
        o["labels"] = (o["labels"] + 1) % 3
    res = _evaluate(name, inputs, outputs)
    assert res["AP"] < 1.0


def test_raw_dataset_ids_as_labels_rejected(shapes):
    """Passing dataset category ids (1, 3, 7) instead of contiguous ids is caught, not silently scored."""
    name, _, dicts = shapes
    inputs, outputs = _perfect_outputs(dicts)
    lut = torch.tensor([1, 3, 7])
    for o in outputs:
        o["labels"] = lut[o["labels"]]
    with pytest.raises(ValueError, match="not a contiguous class id"):
        _evaluate(name, inputs, outputs)


def test_faster_coco_eval_same_numbers(shapes):
    name, _, dicts = shapes
    inputs, outputs = _noisy_outputs(dicts, seed=1)
    a = _evaluate(name, inputs, outputs, backend="pycocotools")
    b = _evaluate(name, inputs, outputs, backend="faster_coco_eval")
    assert set(a) == set(b)
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-6), k


def test_duplicate_image_predictions_counted_once(shapes):
    """The same image processed twice (e.g. by two ranks) counts once."""
    name, _, dicts = shapes
    inputs, outputs = _noisy_outputs(dicts, seed=2)
    once = _evaluate(name, inputs, outputs)
    twice = _evaluate(name, inputs + inputs[:3], outputs + outputs[:3])
    assert once["AP"] == pytest.approx(twice["AP"])


def test_no_detections_is_zero_and_subset_evaluation(shapes):
    name, _, dicts = shapes
    inputs, outputs = _perfect_outputs(dicts[:4])
    empty = [{"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
             for _ in outputs]
    res = _evaluate(name, inputs, empty)
    assert res["AP"] == 0.0
    # only the processed images are evaluated: perfect predictions on 4 of 12 images still give 100
    assert _evaluate(name, inputs, outputs)["AP"] == pytest.approx(100.0)


def test_dataset_without_json_file(shapes):
    """A dataset registered as a plain function (no json_file) is converted to COCO ground truth."""
    name, _, dicts = shapes
    other = "test_coco_eval_plain_fn"
    if other in DatasetCatalog:
        DatasetCatalog.remove(other)
        MetadataCatalog.remove(other)
    DatasetCatalog.register(other, lambda: dicts)
    MetadataCatalog.get(other).set(thing_classes=["circle", "square", "triangle"],
                                   thing_dataset_id_to_contiguous_id={1: 0, 3: 1, 7: 2})
    inputs, outputs = _noisy_outputs(dicts, seed=4)
    assert _evaluate(other, inputs, outputs)["AP"] == pytest.approx(_evaluate(name, inputs, outputs)["AP"], abs=1e-9)


def test_bad_backend_named():
    with pytest.raises(ValueError, match="EVALUATOR_BACKEND"):
        COCOEvaluator("coco_2017_val", backend="nope")


def test_synthetic_boxes_are_valid_coco(shapes):
    _, json_file, _ = shapes
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
    assert sorted(gt.getCatIds()) == [1, 3, 7]
    for a in gt.dataset["annotations"]:
        img = gt.imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
    assert np.isfinite([a["area"] for a in gt.dataset["annotations"]]).all()


def test_random_predictions_score_near_zero(shapes):
    """The synthetic data is not trivially solvable: 20 random boxes per image score far from 100."""
    name, _, dicts = shapes
    g = torch.Generator().manual_seed(0)
    inputs, outputs = [], []
    for d in dicts:
        xy = torch.rand((20, 2), generator=g) * torch.tensor([d["width"], d["height"]]) * 0.7
        wh = (0.06 + torch.rand((20, 2), generator=g) * 0.34) * min(d["width"], d["height"])
        inputs.append({"image_id": d["image_id"]})
        outputs.append({"boxes": torch.cat([xy, xy + wh], 1), "scores": torch.rand(20, generator=g),
                        "labels": torch.randint(0, 3, (20,), generator=g)})
    res = _evaluate(name, inputs, outputs)
    assert res["AP"] < 5 and res["AP50"] < 20
