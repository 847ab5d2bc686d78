"""COCOEvaluator's mask AP ("segm"): against pycocotools COCOeval run directly on the ground-truth json and the
results json the evaluator wrote; perfect masks give 100; faster-coco-eval gives the same numbers; dict-only
datasets keep their segmentations; "segm/AP50" resolves as a best-checkpoint metric."""
import json
import math
import os

import numpy as np
import pytest
import torch
from _coco import pycocotools_stats
from pycocotools import mask as mask_util

from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.data import DatasetCatalog, MetadataCatalog, register_coco_instances
from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset
from resnet_backbone.evaluation import COCOEvaluator
from resnet_backbone.evaluation.coco_evaluation import coco_gt_from_dataset_dicts

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _register(name, fn=None, **meta):
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if fn is not None:
        DatasetCatalog.register(name, fn)
        MetadataCatalog.get(name).set(**meta)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_segm")
    json_file = generate_shapes_dataset(root, "val", 10, image_size=96, seed=5)
    name = "test_coco_segm_shapes"
    _register(name)
    register_coco_instances(name, {}, json_file, str(root / "val"))
    return name, json_file, DatasetCatalog.get(name)


def _gt_mask(a, h, w):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))).astype(bool)


def _outputs(dicts, noisy: bool, seed=0):
    """Ground truth as predictions (boxes and pycocotools-rasterised masks); `noisy`: masks shifted, cut and
    grown, random scores, and false positives (a mid-range mask AP)."""
    g = np.random.default_rng(seed)
    inputs, outputs = [], []
    for d in dicts:
        h, w = d["height"], d["width"]
        anns = [a for a in d["annotations"] if not a["iscrowd"]]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        masks = [_gt_mask(a, h, w) for a in anns]
        labels = [a["category_id"] for a in anns]
        if noisy:
            masks = [np.roll(m, tuple(g.integers(-3, 4, 2)), axis=(0, 1)) for m in masks]
            for m in masks:
                m[:, int(g.integers(0, w)):] &= g.random() < 0.6  # cut some of them
            for _ in range(3):  # false positives: random rectangles
                x0, y0 = int(g.integers(0, w - 20)), int(g.integers(0, h - 20))
                m = np.zeros((h, w), bool)
                m[y0:y0 + 15, x0:x0 + 15] = True
                masks.append(m)
                boxes.append([x0, y0, x0 + 15, y0 + 15])
                labels.append(int(g.integers(0, 3)))
        scores = g.random(len(masks)) if noisy else np.ones(len(masks))
        inputs.append({"image_id": d["image_id"], "height": h, "width": w})
        outputs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor(scores, dtype=torch.float32),
                        "labels": torch.tensor(labels, dtype=torch.int64),
                        "masks": torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), bool))})
    return inputs, outputs


def _evaluate(name, inputs, outputs, **kw):
    ev = COCOEvaluator(name, distributed=False, **kw)
    for i in range(0, len(inputs), 3):
        ev.process(inputs[i:i + 3], outputs[i:i + 3])
    return ev.evaluate()


def test_segm_matches_pycocotools_on_the_written_files(shapes, tmp_path):
    name, json_file, dicts = shapes
    res = _evaluate(name, *_outputs(dicts, noisy=True), output_dir=str(tmp_path))
    assert set(res) == {"bbox", "segm"}
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert all(isinstance(r["segmentation"]["counts"], str) and "bbox" in r for r in written)
    for task in ("bbox", "segm"):
        stats = pycocotools_stats(json_file, written, task)  # pycocotools on the files themselves
        for i, k in enumerate(KEYS):
            ref = stats[i] * 100 if stats[i] >= 0 else float("nan")
            assert (math.isnan(ref) and math.isnan(res[task][k])) or res[task][k] == pytest.approx(ref, abs=1e-9), \
                (task, k)
    assert 5 < res["segm"]["AP"] < 95 and res["segm"]["AP"] != pytest.approx(res["bbox"]["AP"])


def test_perfect_masks_give_100_and_box_ap_is_unchanged(shapes):
    name, _, dicts = shapes
    inputs, outputs = _outputs(dicts, noisy=False)
    res = _evaluate(name, inputs, outputs)
    for k in ("AP", "AP50", "AP75"):
        assert res["segm"][k] == pytest.approx(100.0), k
    no_masks = [{k: v for k, v in o.items() if k != "masks"} for o in outputs]
    for only_box in (_evaluate(name, inputs, no_masks), _evaluate(name, inputs, outputs, tasks=("bbox",))):
        assert set(only_box) == {"bbox"}  # no masks (or bbox asked for): bbox only, the same numbers
        assert json.dumps(only_box["bbox"]) == json.dumps(res["bbox"])  # NaN == NaN here
    with pytest.raises(ValueError, match="carry no \"masks\""):
        _evaluate(name, inputs, no_masks, tasks=("bbox", "segm"))


def test_faster_coco_eval_segm_same_numbers(shapes):
    pytest.importorskip("faster_coco_eval")
    name, _, dicts = shapes
    inputs, outputs = _outputs(dicts, noisy=True, seed=1)
    a = _evaluate(name, inputs, outputs, backend="pycocotools")["segm"]
    b = _evaluate(name, inputs, outputs, backend="faster_coco_eval")["segm"]
    assert set(a) == set(b)
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-6), k


def test_dicts_without_json_keep_segmentation(shapes):
    """A dataset of dicts only (no json_file): coco_gt_from_dataset_dicts keeps polygons, RLE and area."""
    name, _, dicts = shapes
    rle_dicts = json.loads(json.dumps(dicts))
    for d in rle_dicts[::2]:  # half the images with their masks as RLE, without area (computed from the mask)
        for a in d["annotations"]:
            rle = mask_util.encode(np.asfortranarray(_gt_mask(a, d["height"], d["width"]).astype(np.uint8)))
            a["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            a.pop("area")
    other = "test_coco_segm_plain_fn"
    _register(other, lambda: rle_dicts, thing_classes=["circle", "square", "triangle"],
              thing_dataset_id_to_contiguous_id={1: 0, 3: 1, 7: 2})
    gt = coco_gt_from_dataset_dicts(rle_dicts, ["circle", "square", "triangle"], {0: 1, 1: 3, 2: 7})
    theirs = [a for d in rle_dicts for a in d["annotations"]]
    assert [g["segmentation"] for g in gt["annotations"]] == [a["segmentation"] for a in theirs]
    rles = [g for g in gt["annotations"] if isinstance(g["segmentation"], dict)]
    assert rles
    for g in rles:  # no area given: the mask's pixel count, as COCO's areas
        rle = {"size": g["segmentation"]["size"], "counts": g["segmentation"]["counts"].encode()}
        assert g["area"] == mask_util.decode(rle).sum() and g["area"] < g["bbox"][2] * g["bbox"][3]
    inputs, outputs = _outputs(dicts, noisy=True, seed=2)
    a, b = _evaluate(other, inputs, outputs)["segm"], _evaluate(name, inputs, outputs)["segm"]
    for k in KEYS:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-9), k


def test_ground_truth_without_segmentation_gives_bbox_only(shapes, caplog):
    name, _, dicts = shapes
    bare = json.loads(json.dumps(dicts))
    for d in bare:
        for a in d["annotations"]:
            a.pop("segmentation")
    other = "test_coco_segm_no_gt_masks"
    _register(other, lambda: bare, thing_classes=["circle", "square", "triangle"],
              thing_dataset_id_to_contiguous_id={1: 0, 3: 1, 7: 2})
    inputs, outputs = _outputs(dicts, noisy=False)
    assert set(_evaluate(other, inputs, outputs)) == {"bbox"}
    assert "no segmentation for annotation id=" in caplog.text
    with pytest.raises(ValueError, match="no segmentation"):
        _evaluate(other, inputs, outputs, tasks=("bbox", "segm"))


def test_segm_ap50_resolves_as_best_checkpoint_metric(shapes, tmp_path):
    name, _, dicts = shapes
    res = _evaluate(name, *_outputs(dicts, noisy=True))
    ck = Checkpointer(torch.nn.Linear(2, 2), str(tmp_path))
    assert ck.maybe_save_best(res, 10, "segm/AP50")
    assert ck.best_metric == pytest.approx(res["segm"]["AP50"])
    assert os.path.exists(tmp_path / "model_best.pth")
