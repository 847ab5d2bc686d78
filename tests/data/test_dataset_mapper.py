"""DatasetMapper: model input dict, boxes in the resized/flipped image's coordinates, crowd and degenerate boxes
dropped, polygons and ignore flags carried, bad files named."""
import numpy as np
import pytest
import torch
from PIL import Image

from resnet_backbone.config import get_cfg
from resnet_backbone.data import DatasetError, DatasetMapper
from resnet_backbone.data.transforms import RandomFlip, ResizeShortestEdge


def _record(tmp_path, h=40, w=60):
    img = np.zeros((h, w, 3), np.uint8)
    img[5:25, 10:30] = (255, 0, 0)  # red box in RGB
    p = tmp_path / "img.png"
    Image.fromarray(img).save(p)
    return {"file_name": str(p), "image_id": 7, "height": h, "width": w, "annotations": [
        {"id": 1, "bbox": [10, 5, 20, 20], "category_id": 2, "iscrowd": 0,
         "segmentation": [[10, 5, 30, 5, 30, 25, 10, 25]]},
        {"id": 2, "bbox": [40, 10, 10, 10], "category_id": 0, "iscrowd": 1},
        {"id": 3, "bbox": [0, 0, 5, 5], "category_id": 1, "iscrowd": 0, "ignore": True},
    ]}


def test_train_mapping_resize_and_flip(tmp_path):
    rec = _record(tmp_path)
    mapper = DatasetMapper(None, True, augmentations=[ResizeShortestEdge((80,), 1000, "choice"), RandomFlip(prob=1.0)])
    out = mapper(rec)
    assert out["image"].shape == (3, 80, 120) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"], out["image_id"], out["file_name"]) == (40, 60, 7, rec["file_name"])
    inst = out["instances"]
    assert inst.image_size == (80, 120)
    # crowd dropped; box scaled x2 then flipped in a 120-wide image
    assert inst.gt_classes.tolist() == [2, 1]
    torch.testing.assert_close(inst.gt_boxes, torch.tensor([[60.0, 10, 100, 50], [110, 0, 120, 10]]))
    # BGR: the red box is in channel 2, at the flipped location
    assert out["image"][2, 20:40, 70:90].float().mean() > 250 and out["image"][0, 20:40, 70:90].max() == 0
    np.testing.assert_allclose(inst.gt_polygons[0], [[100, 10], [60, 10], [60, 50], [100, 50]])
    assert inst.gt_ignore.tolist() == [False, True]
    assert "annotations" not in out and "annotations" in rec  # the record is not modified


def test_test_mapping_drops_annotations_and_keeps_original_size(tmp_path):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 20
    cfg.INPUT.FORMAT = "RGB"
    out = DatasetMapper(cfg, False)(_record(tmp_path))
    assert out["image"].shape == (3, 20, 30) and "instances" not in out
    assert DatasetMapper.from_config(cfg, is_train=False)(_record(tmp_path))["image"].shape == (3, 20, 30)
    with pytest.raises(TypeError, match="first argument is the config"):
        DatasetMapper(True)
    assert (out["height"], out["width"]) == (40, 60)
    assert out["image"][0].max() > 200  # RGB: red in channel 0


def test_degenerate_boxes_dropped(tmp_path):
    rec = _record(tmp_path)
    rec["annotations"] = [{"id": 1, "bbox": [10, 5, 20, 20], "category_id": 0, "iscrowd": 0},
                          {"id": 2, "bbox": [10, 5, 2e-6, 20], "category_id": 1, "iscrowd": 0}]
    out = DatasetMapper(None, True, augmentations=[ResizeShortestEdge((4,), 0, "choice")])(rec)
    assert out["instances"].gt_classes.tolist() == [0]


def test_bad_files_named(tmp_path):
    rec = _record(tmp_path)
    mapper = DatasetMapper(is_train=True)
    rec["width"] = 61
    with pytest.raises(DatasetError, match="width") as ei:
        mapper(rec)
    assert rec["file_name"] in str(ei.value) and "image_id=7" in str(ei.value)
    rec["file_name"] = str(tmp_path / "gone.png")
    with pytest.raises(DatasetError, match="does not exist") as ei:
        mapper(rec)
    assert "gone.png" in str(ei.value) and "record image_id=7" in str(ei.value) and ei.value.field == "file_name"
    with pytest.raises(DatasetError, match="over the limit"):
        DatasetMapper(is_train=True, max_image_pixels=100)(_record(tmp_path))
