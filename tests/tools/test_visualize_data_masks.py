"""tools/visualize_data.py with MODEL.MASK_ON: the ground-truth masks (a polygon and an RLE) are filled in the
class colour on the dataset's images and on the training samples (after the resize), and nothing else is."""
import json

import numpy as np
import pytest
from _tools import load_tool
from PIL import Image
from pycocotools import mask as mask_util

from resnet_backbone.utils.visualizer import MASK_ALPHA, class_color

visualize_data = load_tool("visualize_data")


@pytest.fixture()
def cfg_file(tmp_path):
    from resnet_backbone.data import register_coco_instances

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.fromarray(np.full((60, 90, 3), 100, np.uint8)).save(img_dir / "m.png")
    disc = np.zeros((60, 90), np.uint8)
    yy, xx = np.mgrid[0:60, 0:90]
    disc[(yy - 30) ** 2 + (xx - 65) ** 2 <= 12 ** 2] = 1
    rle = mask_util.encode(np.asfortranarray(disc))
    data = {"images": [{"id": 1, "file_name": "m.png", "height": 60, "width": 90}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 15, 30, 30], "iscrowd": 0,
                             "segmentation": [[5, 15, 35, 15, 35, 45, 5, 45]]},
                            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [53, 18, 25, 25], "iscrowd": 0,
                             "segmentation": {"size": [60, 90], "counts": rle["counts"].decode()}}]}
    (tmp_path / "m.json").write_text(json.dumps(data))
    name = f"_vis_masks_{abs(hash(str(tmp_path)))}"
    register_coco_instances(name, {}, str(tmp_path / "m.json"), str(img_dir))
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f'DATASETS:\n  TRAIN: ("{name}",)\n  TEST: ()\nDATALOADER:\n  NUM_WORKERS: 0\n'
                   "SOLVER:\n  IMS_PER_BATCH: 1\n")
    return str(cfg)


def _blend(label):
    return np.round(100 * (1 - MASK_ALPHA) + np.asarray(class_color(label), float) * MASK_ALPHA).astype(np.uint8)


@pytest.mark.parametrize("source,scale", [("dataset", 1), ("dataloader", 2)])
def test_masks_drawn(cfg_file, tmp_path, source, scale):
    args = ["--config-file", cfg_file, "--source", source, "--output", str(tmp_path / source), "--num", "1",
            "MODEL.MASK_ON", "True", "INPUT.MIN_SIZE_TRAIN", "(120,)", "INPUT.RANDOM_FLIP", "none"]
    (written,) = visualize_data.main(args)
    out = np.asarray(Image.open(written))
    assert out.shape[:2] == (60 * scale, 90 * scale)
    s = scale
    assert (out[25 * s:35 * s, 12 * s:28 * s] == _blend(0)).all()  # the polygon's square, class 0
    assert (out[27 * s:33 * s, 60 * s:70 * s] == _blend(1)).all()  # the RLE disc, class 1
    assert (out[50 * s:, :] == 100).all()  # below both: nothing
    # without MODEL.MASK_ON only the outlines of the boxes are drawn
    (plain,) = visualize_data.main(args[:8] + ["--overwrite"] + args[10:])
    assert (np.asarray(Image.open(plain))[25 * s:35 * s, 12 * s:28 * s] == 100).all()
