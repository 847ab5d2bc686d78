"""Synthetic shapes generator: deterministic, valid COCO (pycocotools loads it), boxes inside the images and
tight around the drawn object, sparse category ids, and the command-line tool."""
import contextlib
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from _tools import load_tool
from PIL import Image
from pycocotools.coco import COCO

from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

ROOT = Path(__file__).resolve().parents[2]


def _digest(root: Path, split: str) -> str:
    h = hashlib.sha256((root / f"{split}.json").read_bytes())
    for p in sorted((root / split).glob("*.png")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    a = generate_shapes_dataset(tmp_path / "a", "train", 4, image_size=64, seed=7)
    generate_shapes_dataset(tmp_path / "b", "train", 4, image_size=64, seed=7)
    generate_shapes_dataset(tmp_path / "c", "train", 4, image_size=64, seed=8)
    assert a == str(tmp_path / "a" / "train.json")
    assert _digest(tmp_path / "a", "train") == _digest(tmp_path / "b", "train")
    assert _digest(tmp_path / "a", "train") != _digest(tmp_path / "c", "train")


def test_valid_coco_with_tight_boxes(tmp_path):
    path = generate_shapes_dataset(tmp_path, "val", 16, image_size=96, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(path)
    data = json.loads(Path(path).read_text())
    assert {"info", "licenses", "images", "annotations", "categories"} <= set(data)
    assert sorted(coco.getCatIds()) == [1, 3, 7]  # sparse, not starting at 0
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert min(per_image) >= 1 and max(per_image) <= 6
    sides = []
    used = set()
    for a in data["annotations"]:
        img = coco.imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= img["width"] and y + h <= img["height"]
        assert a["iscrowd"] == 0 and a["area"] > 0 and all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
        assert 0 < a["area"] <= w * h
        sides.append(max(w, h) / min(img["width"], img["height"]))
        used.add(a["category_id"])
    assert used == {1, 3, 7}
    assert 0.04 < min(sides) and max(sides) < 0.5
    # the box is tight around the object's visible pixels: the mask from the polygons fills the box edges
    a = data["annotations"][0]
    img = coco.imgs[a["image_id"]]
    m = np.zeros((img["height"], img["width"]), np.uint8)
    for poly in a["segmentation"]:
        cv2.fillPoly(m, [np.round(np.asarray(poly).reshape(-1, 2) - 0.5).astype(np.int32)], 1)
    ys, xs = np.nonzero(m)
    x, y, w, h = a["bbox"]
    assert abs(xs.min() - x) <= 1 and abs(ys.min() - y) <= 1 and abs(xs.max() + 1 - (x + w)) <= 1
    # images exist, have the recorded size, and vary in aspect ratio
    shapes = set()
    for img in data["images"]:
        with Image.open(tmp_path / "val" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
            shapes.add(im.size)
    assert len(shapes) > 1


def test_command_line_tool(tmp_path):
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "make_synthetic_dataset.py"), "--kind", "shapes",
                        "--output", str(out), "--num-train", "3", "--num-val", "2", "--image-size", "48",
                        "--seed", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(json.loads((out / "train.json").read_text())["images"]) == 3
    assert len(list((out / "val").glob("*.png"))) == 2


def test_command_line_tool_text_kind(tmp_path):
    """The --kind text branch calls the text generator (in-process: the tool's main())."""

    import pytest

    pytest.importorskip("resnet_backbone.data.synthetic.text")
    tool = load_tool("make_synthetic_dataset")
    out = tmp_path / "text"
    assert tool.main(["--kind", "text", "--output", str(out), "--num-train", "2", "--num-val", "0",
                      "--image-size", "64", "--seed", "0"]) == 0
    data = json.loads((out / "train.json").read_text())
    assert len(data["images"]) == 2 and not (out / "val.json").exists()


def test_segmentation_rasterises_to_the_visible_pixels(tmp_path, monkeypatch):
    """pycocotools' rasterisation of each annotation's polygons (what COCOeval and the mask mapper use) is the
    object's visible region: IoU > 0.9 for every instance, small objects and objects with holes included."""
    from pycocotools import mask as mask_util

    from resnet_backbone.data.synthetic import shapes

    visible = []
    real = shapes._visible_annotation
    monkeypatch.setattr(shapes, "_visible_annotation", lambda m: (visible.append(m.copy()), real(m))[1])
    ious = []
    for size, seed in ((48, 0), (96, 2), (192, 3)):
        visible.clear()
        data = json.loads(Path(generate_shapes_dataset(tmp_path / str(size), "val", 12, image_size=size,
                                                       seed=seed)).read_text())
        imgs = {i["id"]: i for i in data["images"]}
        assert len(visible) == len(data["annotations"])
        for a, m in zip(data["annotations"], visible):
            im = imgs[a["image_id"]]
            got = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], im["height"],
                                                                         im["width"]))).astype(bool)
            ious.append((got & m).sum() / (got | m).sum())
            assert a["area"] == m.sum()
    assert min(ious) > 0.9 and np.mean(ious) > 0.98, (min(ious), np.mean(ious))


def test_keyhole_polygon_leaves_holes_out():
    """A region with a hole is one polygon whose even-odd fill (pycocotools) leaves the hole out."""
    from pycocotools import mask as mask_util

    from resnet_backbone.data.synthetic.shapes import _outline_polygons

    m = np.zeros((30, 30), bool)
    m[3:25, 4:27] = True
    m[10:15, 10:18] = False
    (poly,) = _outline_polygons(m)
    got = mask_util.decode(mask_util.merge(mask_util.frPyObjects([poly.reshape(-1).tolist()], 30, 30))).astype(bool)
    np.testing.assert_array_equal(got, m)


def test_segmentation_does_not_change_images_or_boxes(tmp_path, monkeypatch):
    """The outlines draw no random numbers: with them replaced, the images, boxes and areas are the same bytes
    (the README's Faster R-CNN figures were measured on them)."""
    from resnet_backbone.data.synthetic import shapes

    def content(root):
        data = json.loads((root / "train.json").read_text())
        anns = [(a["bbox"], a["area"], a["category_id"], a["image_id"]) for a in data["annotations"]]
        return anns, [np.asarray(Image.open(root / "train" / i["file_name"])).tobytes() for i in data["images"]]

    generate_shapes_dataset(tmp_path / "a", "train", 5, image_size=64, seed=5)
    monkeypatch.setattr(shapes, "_outline_polygons", lambda mask: [])
    generate_shapes_dataset(tmp_path / "b", "train", 5, image_size=64, seed=5)
    assert content(tmp_path / "a") == content(tmp_path / "b")
    assert (tmp_path / "a" / "train.json").read_bytes() != (tmp_path / "b" / "train.json").read_bytes()
