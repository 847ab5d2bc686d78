import json

import numpy as np
import pytest
from PIL import Image

from resnet_backbone.data.catalog import DatasetCatalog, MetadataCatalog
from resnet_backbone.data.errors import DatasetError, bad_sample_policy
from resnet_backbone.data.synthetic.text import generate_text_dataset
from resnet_backbone.data.text import (
    clean_polygon,
    load_icdar2015,
    load_text_json,
    parse_icdar2015_txt,
    register_text_instances,
)


# ---------------------------------------------------------------------------- polygon cleaning
def test_clean_polygon_rejects_fewer_than_three_points():
    with pytest.raises(DatasetError) as e:
        clean_polygon([1, 2, 30, 4], (100, 100), file="gt.json", record="annotation id=7")
    msg = str(e.value)
    assert "gt.json" in msg and "annotation id=7" in msg and "segmentation" in msg and "3" in msg
    # repeated points do not count as distinct
    with pytest.raises(DatasetError, match="distinct"):
        clean_polygon([5, 5, 20, 5, 20, 5, 5, 5], (100, 100), file="f", record="r")
    with pytest.raises(DatasetError, match="odd number"):
        clean_polygon([1, 2, 3, 4, 5, 6, 7], (100, 100), file="f", record="r")
    with pytest.raises(DatasetError, match="non-finite"):
        clean_polygon([1, 2, 3, float("nan"), 5, 6], (100, 100), file="f", record="r")
    with pytest.raises(DatasetError, match="zero area"):
        clean_polygon([0, 0, 10, 10, 20, 20], (100, 100), file="f", record="r")


def test_clean_polygon_self_intersecting_repaired_or_rejected():
    # a bow-tie splits into two triangles: rejected, naming file and record
    with pytest.raises(DatasetError) as e:
        clean_polygon([0, 0, 10, 10, 10, 0, 0, 10], (50, 50), file="img_3.txt", record="line 2", field="points")
    assert "self-intersecting" in str(e.value) and "img_3.txt" in str(e.value) and "line 2" in str(e.value)
    # a spike that doubles back on an edge is repaired into the one square it encloses
    spiky = [0, 0, 10, 0, 10, 10, 0, 10, 0, 5, -0.0, 12]
    fixed = clean_polygon(spiky, (50, 50), file="f", record="r")
    from shapely.geometry import Polygon
    assert Polygon(fixed).is_valid and Polygon(fixed).area == pytest.approx(100.0)


def test_clean_polygon_clips_out_of_image_and_rejects_fully_outside():
    out = clean_polygon([-10, -5, 50, -5, 50, 20, -10, 20], (40, 30), file="f", record="r")
    assert out.min() >= 0 and out[:, 0].max() <= 30 and out[:, 1].max() <= 40
    from shapely.geometry import Polygon
    assert Polygon(out).area == pytest.approx(30 * 20)
    with pytest.raises(DatasetError, match="entirely outside"):
        clean_polygon([100, 100, 120, 100, 120, 120], (40, 30), file="a.json", record="annotation id=1")
    inside = clean_polygon(np.array([[1, 1], [9, 1], [9, 5], [1, 5]]), (40, 30), file="f", record="r")
    assert inside.shape == (4, 2) and inside.dtype == np.float32


# ---------------------------------------------------------------------------- COCO-style json
def _write(tmp_path, data, name="text.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


def _img(i, w=100, h=80):
    return {"id": i, "file_name": f"{i}.png", "width": w, "height": h}


def test_load_text_json_dont_care_flags_and_records(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "segmentation": [[10, 10, 60, 10, 60, 30, 10, 30]],
         "transcription": "hello"},
        {"id": 2, "image_id": 1, "category_id": 5, "segmentation": [[10, 40, 60, 40, 60, 60, 10, 60]], "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 5, "segmentation": [[70, 5, 90, 5, 90, 15, 70, 15]],
         "attributes": {"legible": False}},
        {"id": 4, "image_id": 1, "category_id": 5, "bbox": [70, 40, 20, 10], "illegible": True},
        {"id": 5, "image_id": 2, "category_id": 5, "segmentation": [[1, 1, 20, 1, 20, 9, 1, 9]],
         "transcription": "###"},
        {"id": 6, "image_id": 2, "category_id": 5, "segmentation": [[-5, 1, 20, 1, 20, 9, -5, 9]]},
        {"id": 7, "image_id": 2, "category_id": 5, "segmentation": [[30, 30], [50, 30], [50, 40], [30, 40]]},
    ]
    path = _write(tmp_path, {"images": [_img(1), _img(2)], "annotations": anns,
                             "categories": [{"id": 5, "name": "text"}]})
    recs = load_text_json(path, str(tmp_path), dataset_name="test_text_json_flags")
    try:
        assert [r["image_id"] for r in recs] == [1, 2]
        a = recs[0]["annotations"]
        assert [x["ignore"] for x in a] == [False, True, True, True]
        assert all(x["iscrowd"] == 0 and x["category_id"] == 0 for x in a)  # don't care kept, as iscrowd 0
        assert a[0]["bbox"] == [10.0, 10.0, 50.0, 20.0] and a[0]["transcription"] == "hello"
        assert a[3]["segmentation"] == [[70.0, 40.0, 90.0, 40.0, 90.0, 50.0, 70.0, 50.0]]  # box -> rectangle
        b = recs[1]["annotations"]
        assert b[0]["ignore"] is True
        assert min(b[1]["segmentation"][0][0::2]) == 0.0  # clipped to the image
        assert b[2]["segmentation"] == [[30.0, 30.0, 50.0, 30.0, 50.0, 40.0, 30.0, 40.0]]  # point pairs accepted
        assert recs[0]["file_name"] == str(tmp_path / "1.png") and recs[0]["height"] == 80
        assert MetadataCatalog.get("test_text_json_flags").thing_classes == ["text"]
    finally:
        MetadataCatalog.remove("test_text_json_flags")


def test_load_text_json_bad_polygon_error_names_file_and_record(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[10, 10, 60, 10, 60, 30, 10, 30]]},
            {"id": 42, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 10, 10, 10, 0, 0, 10]]}]
    path = _write(tmp_path, {"images": [_img(1)], "annotations": anns, "categories": [{"id": 1, "name": "text"}]})
    with pytest.raises(DatasetError) as e:
        load_text_json(path, str(tmp_path))
    assert path in str(e.value) and "annotation id=42" in str(e.value) and "self-intersecting" in str(e.value)
    # with the "skip" policy the bad annotation is dropped and the rest loads
    with bad_sample_policy("skip"):
        recs = load_text_json(path, str(tmp_path))
    assert [a["id"] for a in recs[0]["annotations"]] == [1]
    bad_img = _write(tmp_path, {"images": [_img(1)], "annotations": [
        {"id": 3, "image_id": 9, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]}]}, "b.json")
    with pytest.raises(DatasetError, match="image_id 9"):
        load_text_json(bad_img, str(tmp_path))
    rle = _write(tmp_path, {"images": [_img(1)], "annotations": [
        {"id": 3, "image_id": 1, "category_id": 1, "segmentation": {"counts": "x", "size": [80, 100]}}]}, "c.json")
    with pytest.raises(DatasetError, match="RLE"):
        load_text_json(rle, str(tmp_path))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid json"):
        load_text_json(str(tmp_path / "broken.json"), str(tmp_path))


# ---------------------------------------------------------------------------- ICDAR 2015 txt
def _icdar_dir(tmp_path, lines_by_stem, bom=True, size=(120, 90)):
    img_dir, gt_dir = tmp_path / "images", tmp_path / "gts"
    img_dir.mkdir()
    gt_dir.mkdir()
    for stem, lines in lines_by_stem.items():
        Image.new("RGB", size, (200, 200, 200)).save(img_dir / f"{stem}.jpg")
        text = "\n".join(lines) + "\n"
        (gt_dir / f"gt_{stem}.txt").write_bytes(("\ufeff" if bom else "").encode("utf-8") + text.encode("utf-8"))
    return str(gt_dir), str(img_dir)


def test_parse_icdar_txt_with_bom_dont_care_and_commas(tmp_path):
    p = tmp_path / "gt_img_1.txt"
    p.write_bytes("\ufeff377,117,463,117,465,130,378,130,Genaxis Theatre\n"
                  "493,115,519,115,519,131,493,131,[06]\n"
                  "374,155,409,155,409,170,374,170,###\n"
                  "\n"
                  "10,10,50,10,50,30,10,30,hello, world\n".encode("utf-8"))
    entries = parse_icdar2015_txt(p)
    assert len(entries) == 4
    assert entries[0]["points"].tolist() == [[377, 117], [463, 117], [465, 130], [378, 130]]
    assert entries[0]["transcription"] == "Genaxis Theatre" and not entries[0]["ignore"]
    assert entries[2]["ignore"] and entries[2]["transcription"] == "###"
    assert entries[3]["transcription"] == "hello, world" and entries[3]["line"] == 5


def test_parse_icdar_txt_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "gt_img_2.txt"
    p.write_text("1,2,3,4,5,6,7,8,ok\n1,2,3,4,x,6,7,8,bad\n")
    with pytest.raises(DatasetError) as e:
        parse_icdar2015_txt(p)
    assert "gt_img_2.txt" in str(e.value) and "line 2" in str(e.value)
    p.write_text("1,2,3,4\n")
    with pytest.raises(DatasetError, match="line 1"):
        parse_icdar2015_txt(p)


def test_load_icdar2015_directory_and_register(tmp_path):
    gt_dir, img_dir = _icdar_dir(tmp_path, {
        "img_1": ["10,10,50,10,50,30,10,30,word", "60,40,100,40,100,60,60,60,###"],
        "img_2": ["5,5,40,5,40,25,5,25,other", "100,80,130,80,130,100,100,100,edge"],
    })
    recs = load_icdar2015(gt_dir, img_dir)
    assert [r["image_id"] for r in recs] == [1, 2]
    assert recs[0]["height"] == 90 and recs[0]["width"] == 120 and recs[0]["file_name"].endswith("img_1.jpg")
    assert [a["ignore"] for a in recs[0]["annotations"]] == [False, True]
    edge = recs[1]["annotations"][1]["segmentation"][0]
    assert max(edge[0::2]) == 120 and max(edge[1::2]) == 90  # clipped to the 120 x 90 image

    name = "test_icdar_registered"
    register_text_instances(name, gt_dir, img_dir)
    try:
        assert len(DatasetCatalog.get(name)) == 2
        assert MetadataCatalog.get(name).evaluator_type == "text"
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_load_icdar2015_bad_polygon_and_missing_image(tmp_path):
    gt_dir, img_dir = _icdar_dir(tmp_path, {"img_7": ["10,10,50,10,50,30,10,30,ok",
                                                      "0,0,10,10,10,0,0,10,bowtie"]})
    with pytest.raises(DatasetError) as e:
        load_icdar2015(gt_dir, img_dir)
    assert "gt_img_7.txt" in str(e.value) and "line 2" in str(e.value)
    (tmp_path / "gts" / "gt_img_8.txt").write_text("1,1,5,1,5,5,1,5,x\n")
    with bad_sample_policy("skip"):  # the bad line and the image-less gt file are dropped
        recs = load_icdar2015(gt_dir, img_dir)
    assert len(recs) == 1 and len(recs[0]["annotations"]) == 1
    (tmp_path / "gts" / "gt_img_7.txt").write_text("10,10,50,10,50,30,10,30,ok\n")
    with pytest.raises(DatasetError, match="no image 'img_8"):
        load_icdar2015(gt_dir, img_dir)


# ---------------------------------------------------------------------------- synthetic generator
def test_synthetic_text_dataset_is_deterministic_and_loadable(tmp_path):
    j1 = generate_text_dataset(tmp_path / "a", "train", 3, image_size=96, seed=3)
    j2 = generate_text_dataset(tmp_path / "b", "train", 3, image_size=96, seed=3)
    d1, d2 = json.loads(open(j1).read()), json.loads(open(j2).read())
    assert d1["annotations"] == d2["annotations"] and len(d1["images"]) == 3
    px1 = np.asarray(Image.open(tmp_path / "a" / "train" / "000000.png"))
    px2 = np.asarray(Image.open(tmp_path / "b" / "train" / "000000.png"))
    assert px1.shape == (96, 96, 3) and np.array_equal(px1, px2)
    d3 = json.loads(open(generate_text_dataset(tmp_path / "c", "train", 3, image_size=96, seed=4)).read())
    assert d3["annotations"] != d1["annotations"]
    recs = load_text_json(j1, tmp_path / "a" / "train")
    assert sum(len(r["annotations"]) for r in recs) == len(d1["annotations"]) > 0
    for a in d1["annotations"]:
        assert len(a["segmentation"][0]) == 8 and a["ignore"] == (a["transcription"] == "###")


def test_synthetic_text_has_dont_care_documents_and_rotated_words(tmp_path):
    j = generate_text_dataset(tmp_path, "val", 12, image_size=128, seed=0)
    d = json.loads(open(j).read())
    anns = d["annotations"]
    assert any(a["ignore"] for a in anns) and sum(not a["ignore"] for a in anns) > 12
    quads = [np.asarray(a["segmentation"][0]).reshape(4, 2) for a in anns]
    angles = [abs(np.degrees(np.arctan2(q[1, 1] - q[0, 1], q[1, 0] - q[0, 0]))) for q in quads]
    assert max(angles) > 15  # some words are clearly rotated
    # the words' pixels differ from the background: ink inside the quads
    img = np.asarray(Image.open(tmp_path / "val" / "000000.png")).astype(np.float64)
    assert img.std() > 5


def test_builtin_synthetic_text_datasets_resolve_under_rb_datasets(tmp_path, monkeypatch):
    import resnet_backbone.data  # noqa: F401  (registers the builtin names)

    monkeypatch.setenv("RB_DATASETS", str(tmp_path))
    generate_text_dataset(tmp_path / "synthetic_text", "val", 2, image_size=64, seed=0)
    recs = DatasetCatalog.get("synthetic_text_val")
    assert len(recs) == 2 and recs[0]["file_name"].startswith(str(tmp_path / "synthetic_text" / "val"))
    meta = MetadataCatalog.get("synthetic_text_val")
    assert meta.evaluator_type == "text" and meta.json_file == str(tmp_path / "synthetic_text" / "val.json")
    assert "synthetic_text_train" in DatasetCatalog.list()


def test_builtin_icdar2015_names_read_gt_directories(tmp_path, monkeypatch):
    import resnet_backbone.data  # noqa: F401

    root = tmp_path / "icdar2015"
    root.mkdir()
    _icdar_dir(root, {"img_5": ["10,10,50,10,50,30,10,30,word"]})
    (root / "gts").rename(root / "test_gts")
    (root / "images").rename(root / "test_images")
    monkeypatch.setenv("RB_DATASETS", str(tmp_path))
    recs = DatasetCatalog.get("icdar2015_test")
    assert [r["image_id"] for r in recs] == [5] and recs[0]["annotations"][0]["transcription"] == "word"
    assert MetadataCatalog.get("icdar2015_test").evaluator_type == "text"
