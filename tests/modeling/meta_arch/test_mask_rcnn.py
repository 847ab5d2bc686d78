"""Mask R-CNN (FasterRCNN with MODEL.MASK_ON) end to end on the synthetic shapes: the mapper's gt_masks train the
mask head, and a small model overfits four images to mask AP50 >= 0.9 (segm COCOeval by pycocotools itself)."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from test_faster_rcnn import overfit, small_cfg

from resnet_backbone.modeling.meta_arch import build_model


def _data(tmp_path, count=4, size=128):
    from resnet_backbone.data.coco import load_coco_json
    from resnet_backbone.data.dataset_mapper import DatasetMapper
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    json_file = generate_shapes_dataset(tmp_path, "train", count, image_size=size, seed=0)
    records = load_coco_json(json_file, tmp_path / "train")
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR", mask_on=True)
    inputs = [mapper(r) for r in records]
    with open(json_file) as f:
        dataset_ids = sorted(c["id"] for c in json.load(f)["categories"])
    return json_file, inputs, dataset_ids


def _segm_ap50(json_file, inputs, outputs, dataset_ids) -> float:
    """Mask AP50 of our bool masks against the json's polygons, straight through pycocotools."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for inp, out in zip(inputs, outputs):
        for m, score, label in zip(out["masks"], out["scores"].tolist(), out["labels"].tolist()):
            rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append({"image_id": inp["image_id"], "category_id": dataset_ids[int(label)], "score": score,
                            "segmentation": rle})
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_file))
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def _mask_cfg(**overrides):
    return small_cfg(**{"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.CONV_DIM": 64, **overrides})


def test_the_mappers_gt_masks_train_the_mask_head(tmp_path):
    """Two images through the mapper (MASK_ON: gt_masks from the shapes' polygons): the mask loss falls over a few
    steps of the mask branch alone, and eval gives one bool mask per detection in the original image."""
    _, inputs, _ = _data(tmp_path, count=2, size=64)
    assert all(x["instances"].gt_masks.shape[1:] == x["image"].shape[1:] for x in inputs)
    torch.manual_seed(0)
    model = build_model(_mask_cfg())
    params = [p for n, p in model.named_parameters() if "mask" in n]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    history = []
    for _ in range(6):
        model.train()
        loss = model(inputs)["loss_mask"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert history[-1] < history[0], history
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in x.items() if k != "instances"} for x in inputs])
    for o, x in zip(out, inputs):
        assert o["masks"].dtype == torch.bool and o["masks"].shape == (len(o["boxes"]), x["height"], x["width"])


@pytest.mark.slow
def test_overfit_four_synthetic_images_mask_ap50(tmp_path):
    """R18-FPN Mask R-CNN learns 4 synthetic shapes images (128 px) to mask AP50 >= 0.9 on those images: the
    Faster R-CNN overfit test's settings (BN, AdamW 1e-3, 20-step warmup) plus the mask head (4 convs of 64)."""
    json_file, inputs, dataset_ids = _data(tmp_path)
    assert sum(len(x["instances"]) for x in inputs) >= 8
    cfg = _mask_cfg(**{"MODEL.RESNETS.NORM": "BN", "MODEL.FPN.OUT_CHANNELS": 64, "MODEL.ROI_BOX_HEAD.FC_DIM": 256,
                       "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 500, "MODEL.RPN.PRE_NMS_TOPK_TEST": 300,
                       "MODEL.RPN.POST_NMS_TOPK_TRAIN": 100, "MODEL.RPN.POST_NMS_TOPK_TEST": 50,
                       "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 128, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64})
    torch.manual_seed(0)
    model = build_model(cfg)
    history = overfit(model, inputs, lambda outputs: _segm_ap50(json_file, inputs, outputs, dataset_ids), 200)
    print("mask AP50 by iteration:", history)
    assert history[-1][1] >= 0.9, f"mask AP50 by iteration: {history}"
