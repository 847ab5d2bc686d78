"""tools/visualize_data.py: the ground truth of DATASETS.TRAIN drawn on its images (raw records and training
samples), on tiny synthetic datasets."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _tools import load_tool
from PIL import Image

from resnet_backbone.utils.cli import ToolError
from resnet_backbone.utils.visualizer import IGNORED_COLOR, class_color

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

visualize_data = load_tool("visualize_data")


@pytest.fixture
def shapes(tmp_path, monkeypatch):
    """4 synthetic-shapes training images (64 px) under a datasets root of their own; the config file."""
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    root = tmp_path / "datasets"
    generate_shapes_dataset(root / "synthetic_shapes", "train", 4, image_size=64, seed=3)
    monkeypatch.setenv("RB_DATASETS", str(root))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text('DATASETS:\n  TRAIN: ("synthetic_shapes_train",)\n  TEST: ()\nDATALOADER:\n  NUM_WORKERS: 0\n'
                   "SOLVER:\n  IMS_PER_BATCH: 3\n")
    return cfg


def _records(name="synthetic_shapes_train"):
    from resnet_backbone.data import DatasetCatalog

    return {os.path.splitext(os.path.basename(r["file_name"]))[0]: r for r in DatasetCatalog.get(name)}


def _near(img, x, y, color, r=1):
    """Whether `color` is among the pixels within r of (x, y)."""
    h, w = img.shape[:2]
    x, y = int(round(x)), int(round(y))
    patch = img[max(y - r, 0):min(y + r + 1, h), max(x - r, 0):min(x + r + 1, w)].reshape(-1, 3)
    return bool((patch == np.asarray(color, np.uint8)).all(axis=1).any())


def _edge_hits(img, boxes_labels, scale=1.0):
    """How many boxes are drawn in their class colour along most of their left or right edge (other boxes and
    the labels may cover parts of an edge)."""
    h, w = img.shape[:2]
    hits = 0
    for (x, y, bw, bh), label in boxes_labels:
        x0, x1 = min(x * scale, w - 1), min((x + bw) * scale, w - 1)
        rows = range(int(np.ceil(y * scale)), int(min((y + bh) * scale, h - 1)))
        c = class_color(label)
        left = np.mean([_near(img, x0, r, c) for r in rows])
        right = np.mean([_near(img, x1, r, c) for r in rows])
        hits += max(left, right) >= 0.6
    return hits


def test_dataset_source_draws_every_record_box(shapes, tmp_path):
    out = tmp_path / "vis"
    written = visualize_data.main(["--config-file", str(shapes), "--source", "dataset", "--output", str(out)])
    assert sorted(os.listdir(out)) == [f"{i:06d}.png" for i in range(4)] == sorted(map(os.path.basename, written))
    records = _records()
    total = hits = 0
    for name in os.listdir(out):
        rec = records[name[:-4]]
        a = np.asarray(Image.open(rec["file_name"]).convert("RGB"))
        b = np.asarray(Image.open(out / name))
        assert a.shape == b.shape  # the raw image, not resized
        changed = (a != b).any(axis=2)
        assert changed.any()
        anns = [(r["bbox"], r["category_id"]) for r in rec["annotations"]]
        total += len(anns)
        hits += _edge_hits(b, anns)
        # in the rows away from every box (and its label, on the top edge, shifted to stay inside the image)
        # nothing is drawn
        far = np.ones(changed.shape, bool)
        for (_x, y, _w, h), _ in anns:
            far[max(int(y) - 20, 0):int(y + h) + 3, :] = False
        assert not changed[far].any()
    assert total > 0 and hits >= 0.75 * total  # (a box may lie under the labels of others)


def test_dataset_source_num_and_overwrite(shapes, tmp_path):
    out = tmp_path / "vis"
    args = ["--config-file", str(shapes), "--source", "dataset", "--output", str(out), "--num", "2"]
    assert len(visualize_data.main(args)) == 2
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png"]
    before = (out / "000000.png").read_bytes()
    (out / "000000.png").write_bytes(b"old")
    with pytest.raises(ToolError, match=r"000000\.png.*already exists.*--overwrite"):
        visualize_data.main(args)
    assert (out / "000000.png").read_bytes() == b"old"  # refused before anything was written
    visualize_data.main(args + ["--overwrite"])
    assert (out / "000000.png").read_bytes() == before


def test_dataset_given_by_path_and_shared_file_names(shapes, tmp_path):
    """DATASETS.TRAIN as 'json:images' (no registration), listed with the registered name of the same files: the
    8 records' pictures get their index as prefix (the file names repeat), none is lost."""
    ds = tmp_path / "datasets" / "synthetic_shapes"
    out = tmp_path / "vis"
    visualize_data.main(["--config-file", str(shapes), "--source", "dataset", "--output", str(out),
                         "DATASETS.TRAIN", f"('synthetic_shapes_train', '{ds / 'train.json'}:{ds / 'train'}')"])
    assert sorted(os.listdir(out)) == [f"{i:06d}_{i % 4:06d}.png" for i in range(8)]
    a, b = (np.asarray(Image.open(out / f"{i:06d}_000001.png")) for i in (1, 5))
    assert (a == b).all()  # the same record drawn the same way from both entries


def test_dataset_source_refuses_the_image_folder(shapes, tmp_path):
    images = tmp_path / "datasets" / "synthetic_shapes" / "train"
    before = {f: (images / f).read_bytes() for f in os.listdir(images)}
    with pytest.raises(ToolError, match="input folder"):
        visualize_data.main(["--config-file", str(shapes), "--source", "dataset", "--output", str(images),
                             "--overwrite"])
    assert {f: (images / f).read_bytes() for f in os.listdir(images)} == before


def test_dataloader_source_draws_the_augmented_boxes(shapes, tmp_path):
    out = tmp_path / "vis"
    # every image's short side 64 or 48 -> 96: boxes scale by 1.5 or 2, no flip, so the drawn positions are known
    written = visualize_data.main(["--config-file", str(shapes), "--source", "dataloader", "--output", str(out),
                                   "--num", "5", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "1000",
                                   "INPUT.RANDOM_FLIP", "none", "SEED", "7"])
    names = sorted(os.listdir(out))
    assert len(names) == len(written) == 5  # more than one epoch of 4 images: positions keep them apart
    assert [n[:7] for n in names] == [f"{i:06d}_" for i in range(5)]
    records = _records()
    total = hits = 0
    for name in names:
        rec = records[name[7:-4]]
        b = np.asarray(Image.open(out / name))
        scale = 96 / min(rec["height"], rec["width"])
        assert b.shape[:2] == (round(rec["height"] * scale), round(rec["width"] * scale))
        anns = [(r["bbox"], r["category_id"]) for r in rec["annotations"]]
        total += len(anns)
        hits += _edge_hits(b, anns, scale)
    assert total > 0 and hits >= 0.75 * total
    # a second run without --overwrite is refused; the same seed draws the same pictures
    first = {n: (out / n).read_bytes() for n in names}
    args = ["--config-file", str(shapes), "--source", "dataloader", "--output", str(out), "--num", "5",
            "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "1000", "INPUT.RANDOM_FLIP", "none", "SEED", "7"]
    with pytest.raises(ToolError, match="previous run.*--overwrite"):
        visualize_data.main(args)
    visualize_data.main(args[:6] + ["--overwrite"] + args[6:])
    assert {n: (out / n).read_bytes() for n in sorted(os.listdir(out))} == first


def test_dataloader_default_is_one_epoch(shapes, tmp_path):
    out = tmp_path / "vis"
    visualize_data.main(["--config-file", str(shapes), "--source", "dataloader", "--output", str(out)])
    assert len(os.listdir(out)) == 4


def _text_dataset(tmp_path):
    """One 80x80 image with a text quad and a don't-care quad, as a COCO-style text json."""
    from resnet_backbone.data.text import register_text_instances

    img_dir = tmp_path / "text_images"
    img_dir.mkdir()
    Image.fromarray(np.full((80, 80, 3), 255, np.uint8)).save(img_dir / "t.png")
    quad = [10, 10, 50, 14, 48, 30, 8, 26]
    dont_care = [20, 50, 70, 50, 70, 70, 20, 70]
    data = {"images": [{"id": 1, "file_name": "t.png", "height": 80, "width": 80}],
            "categories": [{"id": 1, "name": "text"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [quad], "transcription": "ab"},
                            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [dont_care],
                             "transcription": "###"}]}
    (tmp_path / "text.json").write_text(json.dumps(data))
    name = f"_vis_text_{abs(hash(str(tmp_path)))}"
    register_text_instances(name, str(tmp_path / "text.json"), str(img_dir))
    cfg = tmp_path / "text.yaml"
    cfg.write_text(f'DATASETS:\n  TRAIN: ("{name}",)\n  TEST: ()\nDATALOADER:\n  NUM_WORKERS: 0\n'
                   "SOLVER:\n  IMS_PER_BATCH: 1\nINPUT:\n  MIN_SIZE_TRAIN: (80,)\n  MAX_SIZE_TRAIN: 80\n"
                   '  RANDOM_FLIP: "none"\n')
    return cfg, quad, dont_care


@pytest.mark.parametrize("source", ["dataset", "dataloader"])
def test_text_polygons_and_dont_care(tmp_path, source):
    cfg, quad, dont_care = _text_dataset(tmp_path)
    out = tmp_path / "vis"
    (written,) = visualize_data.main(["--config-file", str(cfg), "--source", source, "--output", str(out)])
    b = np.asarray(Image.open(written))
    # the text quad: its slanted edges in the class colour (a box would not pass through these points)
    q = np.asarray(quad, float).reshape(-1, 2)
    for p0, p1 in zip(q, np.roll(q, -1, axis=0)):
        mid = (p0 + p1) / 2
        if mid[1] > 16:  # the top edge lies under the label
            assert _near(b, mid[0], mid[1], class_color(0)), (p0, p1)
    # the don't-care quad: dashed grey, never in the class colour
    d = np.asarray(dont_care, float).reshape(-1, 2)
    grey = [(x, 70) for x in range(24, 68, 2)] + [(70, y) for y in range(54, 68, 2)]
    assert sum(_near(b, x, y, IGNORED_COLOR, r=0) for x, y in grey) >= len(grey) // 3
    assert not any(_near(b, x, y, class_color(0), r=0) for x, y in grey)
    assert d.min() >= 0


def test_crowd_box_is_marked(tmp_path):
    from resnet_backbone.data import register_coco_instances

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(img_dir / "c.png")
    data = {"images": [{"id": 1, "file_name": "c.png", "height": 64, "width": 64}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 30, 20, 20], "area": 400,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [36, 30, 20, 20], "area": 400,
                             "iscrowd": 1}]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    name = f"_vis_crowd_{abs(hash(str(tmp_path)))}"
    register_coco_instances(name, {}, str(tmp_path / "c.json"), str(img_dir))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'DATASETS:\n  TRAIN: ("{name}",)\n  TEST: ()\n')
    (written,) = visualize_data.main(["--config-file", str(cfg), "--source", "dataset", "--output",
                                      str(tmp_path / "vis")])
    b = np.asarray(Image.open(written))
    assert _near(b, 4, 40, class_color(0)) and _near(b, 24, 40, class_color(0))
    left = [_near(b, 36, y, IGNORED_COLOR, r=1) for y in range(34, 50)]
    assert any(left) and not all(_near(b, 36, y, IGNORED_COLOR, r=0) for y in range(34, 50))  # dashed
    assert not _near(b, 36, 40, class_color(0), r=2)


def _tool(*args, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    env.pop("RB_TRACEBACK", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "visualize_data.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_empty_train_set_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("DATASETS:\n  TRAIN: ()\n")
    r = _tool("--config-file", cfg, "--source", "dataset", "--output", tmp_path / "vis")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("visualize_data.py: error: "), r.stderr
    assert "DATASETS.TRAIN" in lines[0] and "c.yaml" in lines[0]
    assert not (tmp_path / "vis").exists()


def test_unregistered_train_set_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('DATASETS:\n  TRAIN: ("no_such_set",)\n')
    r = _tool("--config-file", cfg, "--source", "dataloader", "--output", tmp_path / "vis")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_set" in lines[0] and "DATASETS.TRAIN" in lines[0], r.stderr
