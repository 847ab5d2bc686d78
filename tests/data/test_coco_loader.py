"""load_coco_json: contiguous ids, crowd / empty images, and every kind of broken json -> DatasetError naming
file, record and field (or, with policy "skip", dropped and counted). Plus hypothesis fuzz tests of both COCO-style
loaders (load_coco_json and the text loader load_text_json): mutated structures, numbers, long strings, encodings."""
import copy
import json
import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_util

from resnet_backbone.data import DatasetCatalog, DatasetError, MetadataCatalog, load_coco_json, register_coco_instances
from resnet_backbone.data.build import get_detection_dataset_dicts
from resnet_backbone.data.errors import bad_sample_counts
from resnet_backbone.data.text import load_text_json


def _crowd_rle():
    """A valid compressed RLE of the crowd box of image 10 (80x100), made by pycocotools."""
    m = np.zeros((80, 100), np.uint8)
    m[20:60, 50:90] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    return {"counts": rle["counts"].decode("ascii"), "size": [80, 100]}


def _valid():
    return {
        "info": {}, "licenses": [],
        "images": [{"id": 10, "file_name": "a.png", "width": 100, "height": 80},
                   {"id": 11, "file_name": "b.png", "width": 50, "height": 50},
                   {"id": 12, "file_name": "empty.png", "width": 40, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 40, 10, 40]]},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [50, 20, 40, 40], "area": 1600, "iscrowd": 1,
             "segmentation": _crowd_rle()},
            {"id": 3, "image_id": 11, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "triangle"}, {"id": 1, "name": "circle"}, {"id": 3, "name": "square"}],
    }


def _write(tmp_path, data, name="ann.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def _load(tmp_path, data, **kw):
    return load_coco_json(_write(tmp_path, data), str(tmp_path / "imgs"), **kw)


def test_valid_file_contiguous_ids_crowd_and_empty(tmp_path):
    name = "test_coco_loader_valid"
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)
    recs = load_coco_json(_write(tmp_path, _valid()), str(tmp_path / "imgs"), name)
    assert [r["image_id"] for r in recs] == [10, 11, 12]
    assert recs[0]["file_name"] == str(tmp_path / "imgs" / "a.png")
    assert (recs[0]["height"], recs[0]["width"]) == (80, 100)
    a1, a2 = recs[0]["annotations"]
    assert a1["category_id"] == 1 and a1["bbox"] == [10, 10, 20, 30]  # dataset id 3 -> contiguous 1
    assert a2["category_id"] == 2 and a2["iscrowd"] == 1  # crowd kept, flagged
    assert recs[1]["annotations"][0]["category_id"] == 0
    assert recs[2]["annotations"] == []  # image without annotations kept
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1, 7: 2}


def test_register_and_filter_empty(tmp_path):
    name = "test_coco_loader_registered"
    for cat in (DatasetCatalog, MetadataCatalog):
        if name in cat:
            cat.remove(name)
    register_coco_instances(name, {"extra": 1}, _write(tmp_path, _valid()), str(tmp_path / "imgs"))
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco" and meta.extra == 1
    with pytest.raises(KeyError, match="already registered"):
        register_coco_instances(name, {}, "x.json", "x")
    assert len(get_detection_dataset_dicts(name, filter_empty=False)) == 3
    assert [r["image_id"] for r in get_detection_dataset_dicts([name], filter_empty=True)] == [10, 11]


def test_box_overshoot_clipped(tmp_path):
    d = _valid()
    d["annotations"][2]["bbox"] = [-1.5, 0, 52, 51]  # 50x50 image, overshoot <= 2 px
    recs = _load(tmp_path, d)
    assert recs[1]["annotations"][0]["bbox"] == [0.0, 0.0, 50.0, 50.0]


def _mutations():
    """(name, mutate(d), expected field, expected record substring)."""
    def ann(i, **kw):
        def f(d):
            d["annotations"][i].update(kw)
        return f

    def pop(section):
        return lambda d: d.pop(section)

    return [
        ("missing images", pop("images"), "images", "<file>"),
        ("missing annotations", pop("annotations"), "annotations", "<file>"),
        ("missing categories", pop("categories"), "categories", "<file>"),
        ("images not a list", lambda d: d.update(images={"id": 1}), "images", "<file>"),
        ("duplicate image id", lambda d: d["images"].append(dict(d["images"][0])), "id", "image id=10"),
        ("duplicate annotation id", ann(1, id=1), "id", "annotation id=1"),
        ("duplicate category id", lambda d: d["categories"].append({"id": 1, "name": "x"}), "id", "category id=1"),
        ("annotation -> missing image", ann(0, image_id=99), "image_id", "annotation id=1"),
        ("unknown category", ann(0, category_id=2), "category_id", "annotation id=1"),
        ("negative width", ann(0, bbox=[10, 10, -5, 30]), "bbox", "annotation id=1"),
        ("zero height", ann(0, bbox=[10, 10, 5, 0]), "bbox", "annotation id=1"),
        ("NaN size", ann(0, bbox=[10, 10, float("nan"), 5]), "bbox", "annotation id=1"),
        ("bbox outside image", ann(0, bbox=[90, 10, 50, 30]), "bbox", "annotation id=1"),
        ("bbox far negative", ann(0, bbox=[-40, 10, 45, 30]), "bbox", "annotation id=1"),
        ("bbox three numbers", ann(0, bbox=[1, 2, 3]), "bbox", "annotation id=1"),
        ("bbox string", ann(0, bbox="10,10,5,5"), "bbox", "annotation id=1"),
        ("segmentation string", ann(0, segmentation="polygon"), "segmentation", "annotation id=1"),
        ("segmentation flat numbers", ann(0, segmentation=[1, 2, 3, 4, 5, 6]), "segmentation", "annotation id=1"),
        ("segmentation odd length", ann(0, segmentation=[[1, 2, 3, 4, 5, 6, 7]]), "segmentation", "annotation id=1"),
        ("segmentation strings", ann(0, segmentation=[["a", "b", "c", "d", "e", "f"]]), "segmentation",
         "annotation id=1"),
        ("RLE without counts", ann(1, segmentation={"size": [80, 100]}), "segmentation", "annotation id=2"),
        ("iscrowd 2", ann(0, iscrowd=2), "iscrowd", "annotation id=1"),
        ("image width 0", lambda d: d["images"][1].update(width=0), "width", "image id=11"),
        ("image without file_name", lambda d: d["images"][1].pop("file_name"), "file_name", "image id=11"),
        ("annotation id missing", lambda d: d["annotations"][0].pop("id"), "id", "annotations[0]"),
        ("bbox 400-digit integer", ann(0, bbox=[10, 10, 10**400, 5]), "bbox", "annotation id=1"),
        ("image width 400 digits", lambda d: d["images"][1].update(width=10**400), "width", "image id=11"),
    ]


@pytest.mark.parametrize("name,mutate,field,record", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_json_names_file_record_field(tmp_path, name, mutate, field, record):
    d = _valid()
    mutate(d)
    path = _write(tmp_path, d)
    with pytest.raises(DatasetError) as ei:
        load_coco_json(path, str(tmp_path))
    e = ei.value
    assert e.file == path and e.field == field and record in str(e.record), str(e)
    msg = str(e)
    assert path in msg and f"field '{field}'" in msg and record in msg


@pytest.mark.parametrize("text", ["{", '{"images": [}', "", "[1, 2, 3]", '"just a string"', "\xff\xfe garbage"])
def test_malformed_json(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(DatasetError) as ei:
        load_coco_json(path, str(tmp_path))
    assert ei.value.file == path and ei.value.field == "json" and path in str(ei.value)


def test_malformed_json_names_line(tmp_path):
    path = _write(tmp_path, '{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(DatasetError, match="line 3"):
        load_coco_json(path, str(tmp_path))


def test_missing_json_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as ei:
        load_coco_json(str(tmp_path / "nope.json"), str(tmp_path))
    assert ei.value.field == "json_file"


def test_skip_mode_drops_and_counts(tmp_path, caplog):
    d = _valid()
    d["annotations"][0]["bbox"] = [10, 10, -5, 30]  # bad annotation
    d["annotations"].append({"id": 4, "image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]})  # missing image
    d["annotations"].append({"id": 5, "image_id": 11, "category_id": 1, "bbox": [1, 1, 5, 5]})  # good
    d["images"].append({"id": 13, "file_name": "bad.png", "width": -3, "height": 40})  # bad image
    before = bad_sample_counts().get("json", 0)
    with caplog.at_level(logging.WARNING):
        recs = _load(tmp_path, d, on_bad_sample="skip")
    assert [r["image_id"] for r in recs] == [10, 11, 12]
    assert [a["id"] for a in recs[0]["annotations"]] == [2]
    assert [a["id"] for a in recs[1]["annotations"]] == [3, 5]
    assert bad_sample_counts()["json"] - before == 3
    assert "skipped 3 bad records" in caplog.text
    # the same file raises in "error" mode (the default)
    with pytest.raises(DatasetError):
        _load(tmp_path, d)


def test_skip_mode_still_rejects_broken_structure(tmp_path):
    d = _valid()
    del d["categories"]
    with pytest.raises(DatasetError, match="categories"):
        _load(tmp_path, d, on_bad_sample="skip")


# ---------------------------------------------------------------- property tests
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                  st.text(max_size=5))
_value = st.recursive(_leaf, lambda c: st.one_of(st.lists(c, max_size=6), st.dictionaries(st.text(max_size=8), c,
                                                                                         max_size=4)), max_leaves=12)
_number = st.one_of(st.integers(-10**9, 10**9), st.integers(), st.integers(10**300, 10**400),
                    st.integers(-10**400, -10**300), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["12", "-3.5", "1e400", "NaN", "inf", "0x10", ""]))  # numbers as strings
_sections = ["images", "annotations", "categories"]


def _valid_text():
    """A valid text-detection file for `load_text_json` (polygons, transcriptions, don't-care flags)."""
    d = _valid()
    d["annotations"][1]["segmentation"] = [[50, 20, 90, 20, 95, 40, 90, 60, 50, 60, 45, 40]]  # 6 points
    d["annotations"][1]["transcription"] = "###"
    d["annotations"][0]["transcription"] = "hello, world"
    d["annotations"][2]["attributes"] = {"legible": False}
    return d


@st.composite
def _mutated(draw, base=_valid):
    """`base()` with 1-4 random edits: fields / records / sections replaced by random json values, dropped or
    duplicated; numbers (huge, negative, NaN, inf, as strings); very long strings; or the whole document
    replaced by a random json structure."""
    d = base()
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace_field", "drop_field", "replace_record", "replace_section",
                                     "drop_section", "dup_record", "number", "long_string", "replace_top"]))
        if kind == "replace_top":
            return draw(_value)
        sec = draw(st.sampled_from(_sections))
        recs = d.get(sec)
        if kind == "drop_section":
            d.pop(sec, None)
        elif kind == "replace_section":
            d[sec] = draw(_value)
        elif not isinstance(recs, list) or not recs:
            continue
        else:
            i = draw(st.integers(0, len(recs) - 1))
            if kind == "replace_record":
                recs[i] = draw(_value)
            elif kind == "dup_record":
                recs.append(copy.deepcopy(recs[i]))
            elif isinstance(recs[i], dict) and recs[i]:
                key = draw(st.sampled_from(sorted(recs[i])))
                if kind == "drop_field":
                    recs[i].pop(key)
                elif kind == "number":
                    recs[i][key] = draw(_number)
                elif kind == "long_string":  # e.g. a 20 MB file_name: the error message must stay short
                    recs[i][key] = draw(st.sampled_from("xé/")) * draw(st.integers(300, 300_000))
                else:
                    recs[i][key] = draw(_value)
    return d


@st.composite
def _file_bytes(draw, data):
    """`data` as the bytes of a json file: UTF-8 (with or without a BOM), UTF-16, latin-1 (not UTF-8 once a
    non-ASCII character is in it), or UTF-8 with random byte damage (overwrite, insert, cut)."""
    text = json.dumps(data, ensure_ascii=draw(st.booleans()))  # NaN/Infinity: json's extension, read back
    enc = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "damaged"]))
    if enc == "latin-1":
        return text.encode("latin-1", errors="replace")
    if enc != "damaged":
        return text.encode(enc)
    raw = text.encode("utf-8")
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "insert", "cut"]))
        i = draw(st.integers(0, len(raw)))
        b = bytes([draw(st.integers(0, 255))])
        raw = {"set": raw[:i] + b + raw[i + 1:], "insert": raw[:i] + b + raw[i:], "cut": raw[:i]}[op]
    return raw


def _load_or_dataset_error(loader, path, tmp_path, skip):
    """The loader's records, or None when it raised a DatasetError naming the file (in .file and the message)
    with a bounded message. Any other exception fails the test."""
    try:
        return loader(str(path), str(tmp_path), on_bad_sample="skip" if skip else "error")
    except DatasetError as e:
        assert e.file == str(path) and e.field and str(path) in str(e)
        assert len(str(e)) < 2500, len(str(e))  # long values are shortened, not printed whole
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data(), skip=st.booleans())
def test_fuzz_loads_or_raises_dataset_error(tmp_path, data, skip):
    doc = data.draw(_mutated())
    path = tmp_path / "fuzz.json"
    path.write_bytes(data.draw(_file_bytes(doc)))
    recs = _load_or_dataset_error(load_coco_json, path, tmp_path, skip)
    for r in recs or []:
        assert isinstance(r["image_id"], int) and r["width"] > 0 and r["height"] > 0
        for a in r["annotations"]:
            x, y, w, h = a["bbox"]
            assert all(math.isfinite(v) for v in (x, y, w, h)) and w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= r["width"] + 1e-6 and y + h <= r["height"] + 1e-6
            assert 0 <= a["category_id"] < len(doc["categories"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data(), skip=st.booleans())
def test_fuzz_text_json_loads_or_raises_dataset_error(tmp_path, data, skip):
    """The same mutations and encodings through the text loader (`load_text_json`, COCO-style text files)."""
    doc = data.draw(_mutated(_valid_text))
    path = tmp_path / "fuzz_text.json"
    path.write_bytes(data.draw(_file_bytes(doc)))
    recs = _load_or_dataset_error(load_text_json, path, tmp_path, skip)
    for r in recs or []:
        assert r["width"] > 0 and r["height"] > 0 and isinstance(r["file_name"], str)
        for a in r["annotations"]:
            assert a["iscrowd"] == 0 and isinstance(a["ignore"], bool) and a["category_id"] >= 0
            for poly in a["segmentation"]:
                pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                assert len(pts) >= 3 and np.isfinite(pts).all()
                assert pts.min() >= 0 and (pts[:, 0] <= r["width"]).all() and (pts[:, 1] <= r["height"]).all()
            assert all(math.isfinite(v) for v in a["bbox"])


def test_zero_size_boxes_dropped_when_asked(tmp_path, caplog):
    """COCO train2017 has two zero-height boxes (ids 918, 2206849): the built-in names drop them, others raise."""
    d = _valid()
    d["annotations"].append({"id": 918, "image_id": 11, "category_id": 1, "bbox": [20.5, 30.0, 1.03, 0.0],
                             "area": 0.0, "iscrowd": 0, "segmentation": [[20.5, 30, 21.5, 30, 21.5, 30, 20.5, 30]]})
    with pytest.raises(DatasetError, match="zero-size") as ei:
        _load(tmp_path, d)
    assert ei.value.record == "annotation id=918"
    with caplog.at_level(logging.WARNING):
        recs = _load(tmp_path, d, drop_zero_size_boxes=True)
    assert [a["id"] for a in recs[1]["annotations"]] == [3] and "annotation id=918" in caplog.text
    d["annotations"][-1]["bbox"] = [20.5, 30.0, 1.03, -1.0]  # negative stays an error
    with pytest.raises(DatasetError):
        _load(tmp_path, d, drop_zero_size_boxes=True)


def test_builtin_coco_names_drop_zero_size_boxes(tmp_path, monkeypatch):
    monkeypatch.setenv("RB_DATASETS", str(tmp_path))
    # loading sets thing_classes on the shared metadata: work on a copy, restored after the test
    monkeypatch.setitem(MetadataCatalog, "coco_2017_val", copy.deepcopy(MetadataCatalog.get("coco_2017_val")))
    ann_dir = tmp_path / "coco" / "annotations"
    ann_dir.mkdir(parents=True)
    d = _valid()
    d["annotations"].append({"id": 2206849, "image_id": 10, "category_id": 1, "bbox": [9.98, 18.56, 5.54, 0.0]})
    (ann_dir / "instances_val2017.json").write_text(json.dumps(d))
    recs = DatasetCatalog.get("coco_2017_val")
    assert len(recs) == 3 and recs[0]["file_name"] == str(tmp_path / "coco" / "val2017" / "a.png")
    assert 2206849 not in {a["id"] for r in recs for a in r["annotations"]}
