"""One command on the user's own COCO folder: DATASETS.TRAIN / TEST given as 'instances.json:images', no code.

The folder the test writes has what real exports have: category ids that are neither contiguous nor small,
images in nested folders, a grayscale PNG and a JPEG, an image without annotations and a crowd box. A tiny
R18-FPN Faster R-CNN trains a few iterations and is evaluated; the results json must carry the json's ids."""
import json
import os

import numpy as np
import pytest
from _tools import TINY_FRCNN_MODEL, load_tool
from PIL import Image

from resnet_backbone.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
train_net = load_tool("train_net")

CATS = {3: "cat", 1000007: "dog", 17: "bird"}

TINY = [
    *TINY_FRCNN_MODEL,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",  # an untrained model still reports boxes of every class
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "100",
    "SEED", "3", "LOG_PERIOD", "1",
]


def _image(path, mode, boxes, size=(64, 48)):
    arr = np.full((size[1], size[0], 3), 40, np.uint8)
    for x, y, w, h in boxes:
        arr[y:y + h, x:x + w] = (220, 120, 30)
    img = Image.fromarray(arr)
    if mode == "L":
        img = img.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)


def write_coco_folder(root):
    """root/annotations/{train,val}.json and root/images/<nested>/..., the kinds of records real exports have."""
    spec = [  # (image id, file name, mode, [(category id, box, iscrowd)])
        (101, "2024/day1/a.png", "RGB", [(3, [4, 4, 20, 16], 0), (1000007, [34, 20, 22, 20], 0)]),
        (102, "2024/day1/gray.png", "L", [(17, [10, 10, 24, 24], 0)]),
        (103, "2024/day2/photo.jpg", "RGB", [(1000007, [6, 8, 30, 24], 0), (3, [40, 4, 20, 40], 1)]),  # crowd
        (104, "empty.png", "RGB", []),  # no annotations
        (105, "2024/day2/b.jpg", "RGB", [(17, [30, 6, 26, 18], 0), (3, [2, 26, 18, 18], 0)]),
    ]
    ann_id = 1
    splits = {"train": spec, "val": [spec[0], spec[1], spec[2], spec[3]]}
    for split, items in splits.items():
        images, anns = [], []
        for iid, fname, mode, objs in items:
            _image(root / "images" / fname, mode, [b for _, b, _ in objs])
            images.append({"id": iid, "file_name": fname, "width": 64, "height": 48})
            for cid, box, crowd in objs:
                anns.append({"id": ann_id, "image_id": iid, "category_id": cid, "bbox": box, "iscrowd": crowd,
                             "area": box[2] * box[3]})
                ann_id += 1
        (root / "annotations").mkdir(exist_ok=True)
        cats = [{"id": c, "name": n} for c, n in CATS.items()]
        (root / "annotations" / f"{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": cats}))
    return root / "annotations" / "train.json", root / "annotations" / "val.json", root / "images"


def _main(argv):
    return train_net.main(train_net.default_argument_parser().parse_args(argv))


def test_train_and_evaluate_a_coco_folder_given_by_path(tmp_path, monkeypatch):
    data = tmp_path / "mydata"
    train_json, val_json, images = write_coco_folder(data)
    monkeypatch.chdir(tmp_path)  # relative paths, as typed on a command line
    train = f"{train_json.relative_to(tmp_path)}:{images.relative_to(tmp_path)}"
    val = f"{val_json.relative_to(tmp_path)}:{images.relative_to(tmp_path)}"
    out = tmp_path / "out"
    results = _main(["--config-file", os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"), *TINY,
                     "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)",
                     "MODEL.ROI_HEADS.NUM_CLASSES", "3", "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out)])
    bbox = results["bbox"]
    assert {"AP", "AP50", "AP-cat", "AP-dog", "AP-bird"} <= set(bbox)
    found = [os.path.join(d, f) for d, _, fs in os.walk(out / "inference") for f in fs
             if f == "coco_instances_results.json"]
    assert len(found) == 1
    dets = json.loads(open(found[0]).read())
    assert dets, "the model made no detection: the id check below would check nothing"
    assert {d["category_id"] for d in dets} == set(CATS)  # the json's ids, not 0..2
    assert {d["image_id"] for d in dets} == {101, 102, 103, 104}  # the image without annotations is evaluated
    assert os.path.exists(out / "model_final.pth")


def test_missing_json_fails_before_output_dir(tmp_path):
    _, _, images = write_coco_folder(tmp_path / "d")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"DATASETS\.TEST: the annotation json of dataset entry .*"
                                          r"does not exist.*'.*/d/annotations/typo\.json'"):
        _main(["--config-file", os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"), *TINY,
               "DATASETS.TRAIN", f"('{tmp_path}/d/annotations/train.json:{images}',)",
               "DATASETS.TEST", f"('{tmp_path}/d/annotations/typo.json:{images}',)",
               "MODEL.ROI_HEADS.NUM_CLASSES", "3", "OUTPUT_DIR", str(out)])
    assert not out.exists()


def write_text_folders(root):
    """A COCO-style text json (train) and an ICDAR gt_*.txt folder (test) over the same images."""
    images, gts = root / "images", root / "gts"
    images.mkdir(parents=True)
    gts.mkdir()
    words = [[(6, 6, 30, 12), (8, 28, 40, 10)], [(20, 10, 36, 14)], [(4, 30, 24, 10), (34, 4, 24, 12)]]
    recs, anns = [], []
    for k, boxes in enumerate(words, start=1):
        _image(images / f"img_{k}.jpg", "RGB", boxes)
        recs.append({"id": k, "file_name": f"img_{k}.jpg", "width": 64, "height": 48})
        lines = []
        for j, (x, y, w, h) in enumerate(boxes):
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            text = "###" if j == 1 else f"w{k}{j}"
            anns.append({"id": len(anns) + 1, "image_id": k, "segmentation": [poly], "transcription": text})
            lines.append(",".join(str(v) for v in poly) + f",{text}")
        (gts / f"gt_img_{k}.txt").write_text("\n".join(lines) + "\n")
    (root / "train.json").write_text(json.dumps({"images": recs, "annotations": anns,
                                                 "categories": [{"id": 1, "name": "text"}]}))
    return root / "train.json", gts, images


def test_dbnet_on_a_text_json_and_an_icdar_folder_given_by_path(tmp_path):
    js, gts, images = write_text_folders(tmp_path / "text")
    out = tmp_path / "out"
    results = _main(["--config-file", os.path.join(ROOT, "configs", "quickstart", "dbnet_R_50_FPN_synthetic.yaml"),
                     "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                     "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.DBNET.INNER_CHANNELS", "4",
                     "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
                     "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
                     "SOLVER.WARMUP_ITERS", "1", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100",
                     "TEST.EVAL_PERIOD", "0", "DATASETS.TRAIN", f"('{js}:{images}',)",
                     "DATASETS.TEST", f"('{gts}:{images}',)", "OUTPUT_DIR", str(out)])
    # the text evaluator ran on the ICDAR folder (the COCO evaluator would give "bbox" results)
    assert {"precision", "recall", "hmean"} <= set(results["text"])
    assert os.path.exists(out / "model_final.pth")
